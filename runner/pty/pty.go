// Package pty allocates pseudo-terminals from a given devpts instance, so
// that a container's terminal comes from the container's own /dev/pts:
// `tty` inside prints /dev/pts/0, and the host's pts numbers stay hidden.
package pty

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Size is a terminal's size in characters.
type Size struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Open allocates a pseudo-terminal from the devpts instance whose ptmx is
// at ptmx (a container's /dev/ptmx, a symlink to pts/ptmx), sized size
// when it is not zero. The slave is opened through the master
// (TIOCGPTPEER), so it is the slave of that very instance whatever the
// path names; neither end becomes anyone's controlling terminal yet.
func Open(ptmx string, size Size) (master, slave *os.File, err error) {
	// O_NONBLOCK: a container could have put a FIFO there.
	fd, err := unix.Open(ptmx, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("allocating a pseudo-terminal: opening %s: %w", ptmx, err)
	}
	master = os.NewFile(uintptr(fd), ptmx)
	defer func() {
		if err != nil {
			master.Close()
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, nil, fmt.Errorf("allocating a pseudo-terminal: %w", err)
	}
	// ptmx is character device 5:2 (the devpts instance's own ptmx has
	// the same numbers).
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 5 || unix.Minor(st.Rdev) != 2 {
		return nil, nil, fmt.Errorf("allocating a pseudo-terminal: %s is not a ptmx device", ptmx)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, fmt.Errorf("unlocking pseudo-terminal: %w", err)
	}
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		return nil, nil, fmt.Errorf("opening pseudo-terminal slave: %w", errno)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(int(sfd))
		return nil, nil, fmt.Errorf("naming pseudo-terminal: %w", err)
	}
	slave = os.NewFile(sfd, fmt.Sprintf("pts/%d", n))
	if size != (Size{}) {
		if err := SetSize(master, size); err != nil {
			slave.Close()
			return nil, nil, err
		}
	}
	return master, slave, nil
}

// SetSize sets the terminal's size; the foreground process group gets
// SIGWINCH when it changed.
func SetSize(f *os.File, size Size) error {
	ws := &unix.Winsize{Row: size.Rows, Col: size.Cols}
	if err := unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, ws); err != nil {
		return fmt.Errorf("setting terminal size: %w", err)
	}
	return nil
}

// GetSize returns the size of the terminal f, or an error when f is not
// a terminal.
func GetSize(f *os.File) (Size, error) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return Size{}, err
	}
	return Size{Rows: ws.Row, Cols: ws.Col}, nil
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// ErrNotTerminal is returned by MakeRaw for a file that is no terminal.
var ErrNotTerminal = errors.New("not a terminal")

// MakeRaw puts the terminal f in raw mode (cfmakeraw), so that keys reach
// the container's terminal unprocessed (^C as a byte, for the container's
// line discipline to turn into SIGINT), and returns how to restore it.
func MakeRaw(f *os.File) (restore func(), err error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, ErrNotTerminal
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, fmt.Errorf("setting terminal raw: %w", err)
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

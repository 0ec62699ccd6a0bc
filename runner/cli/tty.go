package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/runner"
)

// attachment connects the runner's stdio to a container command's, either
// directly or through a pseudo-terminal (-t).
type attachment struct {
	stdio   runner.Stdio
	master  *os.File
	restore func()
	outDone chan struct{}
}

func newAttachment(interactive, tty bool) (*attachment, error) {
	a := &attachment{restore: func() {}}
	if !tty {
		a.stdio = runner.Stdio{Stdout: os.Stdout, Stderr: os.Stderr}
		if interactive {
			a.stdio.Stdin = os.Stdin
		}
		return a, nil
	}
	master, slave, err := openPTY()
	if err != nil {
		return nil, err
	}
	a.master = master
	a.stdio = runner.Stdio{Stdin: slave, Stdout: slave, Stderr: slave, TTY: true}
	stdin := int(os.Stdin.Fd())
	if isTerminal(stdin) {
		copyWinsize(stdin, master)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		go func() {
			for range winch {
				copyWinsize(stdin, master)
			}
		}()
		if interactive {
			a.restore, err = makeRaw(stdin)
			if err != nil {
				return nil, err
			}
		}
	}
	a.outDone = make(chan struct{})
	go func() {
		io.Copy(os.Stdout, master) // ends with EIO once every slave is closed
		close(a.outDone)
	}()
	if interactive {
		go io.Copy(master, os.Stdin)
	}
	return a, nil
}

// forwarded are the signals the runner passes on to the container. With a
// terminal, ^C and friends reach it through the terminal instead.
func (a *attachment) forwarded() []os.Signal {
	if a.master != nil {
		return []os.Signal{syscall.SIGTERM, syscall.SIGHUP}
	}
	return []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}
}

// drain waits (briefly) until the command's last terminal output is
// copied, once the command ended.
func (a *attachment) drain() {
	if a.master == nil {
		return
	}
	a.stdio.Stdin.Close() // our slave; the master reads EIO when no other holder remains
	select {
	case <-a.outDone:
	case <-time.After(2 * time.Second): // a background process still holds the terminal
	}
}

func (a *attachment) close() {
	a.restore()
	if a.master != nil {
		a.master.Close()
	}
}

func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("allocating a pseudo-terminal: %w", err)
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlocking pseudo-terminal: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("naming pseudo-terminal: %w", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("opening pseudo-terminal: %w", err)
	}
	return master, slave, nil
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

func copyWinsize(from int, to *os.File) {
	if ws, err := unix.IoctlGetWinsize(from, unix.TIOCGWINSZ); err == nil {
		unix.IoctlSetWinsize(int(to.Fd()), unix.TIOCSWINSZ, ws)
	}
}

// makeRaw puts the terminal in raw mode (cfmakeraw), so that keys reach
// the container's terminal unprocessed, and returns how to restore it.
func makeRaw(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
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

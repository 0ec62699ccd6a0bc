// Package sandbox is the container's first process before it becomes the
// user's command: it runs inside the fresh pid, mount, uts and ipc
// namespaces the runner cloned it into (and the network namespace and
// cgroups it was born in), builds the root filesystem, and execs the
// command as pid 1.
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/runner/pty"
)

// Spec is everything the first process needs; the runner passes it in
// the environment variable EnvSpec.
type Spec struct {
	// Lower is the read-only root filesystem; Upper and Work are the
	// container's own overlay layers; the overlay is mounted on Merged.
	Lower  string `json:"lower"`
	Upper  string `json:"upper"`
	Work   string `json:"work"`
	Merged string `json:"merged"`

	Hostname   string `json:"hostname"`
	Hosts      string `json:"hosts"`      // contents of /etc/hosts
	ResolvConf string `json:"resolvConf"` // contents of /etc/resolv.conf

	Args []string `json:"args"`
	Env  []string `json:"env"`
	Cwd  string   `json:"cwd,omitempty"`

	// TTY gives the command a pseudo-terminal from the container's own
	// devpts instance as stdin, stdout, stderr and controlling terminal;
	// its master goes to the runner with the ready message (see SyncFD).
	TTY  bool     `json:"tty,omitempty"`
	Size pty.Size `json:"size,omitzero"` // the terminal's size to start with
}

// EnvSpec carries the JSON Spec from the runner to the first process.
const EnvSpec = "_BERTH_SANDBOX_SPEC"

// ErrorFD is the descriptor on which the first process reports why it
// could not exec the command. It is close-on-exec: the runner reading EOF
// with no message knows the command is running.
const ErrorFD = 3

// SyncFD is the descriptor of a unix socket (SOCK_SEQPACKET) on which the
// first process, once everything is set up, tells the runner it is ready
// (passing the terminal's master with TTY) and then waits for the go-ahead
// to exec the command. Between the two the runner applies what must hold
// from the command's first instruction but would stop the first process
// itself: a pids limit below the threads of the Go runtime. The socket is
// close-on-exec.
const SyncFD = 4

// Handshake messages on SyncFD.
const (
	msgReady = 'r'
	msgGo    = 'g'
)

// CommandError is a command that could not be executed.
type CommandError struct {
	Name     string
	Reason   string
	NotFound bool
}

func (e *CommandError) Error() string { return fmt.Sprintf("exec %q: %s", e.Name, e.Reason) }

// Code is the exit status a shell (and Docker) gives for this failure:
// 127 not found, 126 not executable.
func (e *CommandError) Code() int {
	if e.NotFound {
		return 127
	}
	return 126
}

// Failure is why the first process could not start the command, as it
// reports it on ErrorFD.
type Failure struct {
	Msg  string `json:"msg"`
	Code int    `json:"code"` // exit status: 126, 127, or 125 for runner failures
}

func (f *Failure) Error() string { return f.Msg }

// ExitCode is the status `runner run` exits with.
func (f *Failure) ExitCode() int { return f.Code }

// Main is the first process: it runs the Spec from the environment and,
// when that fails, reports on ErrorFD and exits.
func Main() {
	err := func() error {
		s, err := SpecFromEnv()
		if err != nil {
			return err
		}
		return Run(s)
	}()
	f := Failure{Msg: err.Error(), Code: 125}
	var ce *CommandError
	if errors.As(err, &ce) {
		f.Code = ce.Code()
	}
	data, _ := json.Marshal(f)
	os.NewFile(ErrorFD, "error").Write(data)
	os.Exit(f.Code)
}

// ReadFailure decodes what the first process wrote on ErrorFD; nil when
// it wrote nothing because the exec succeeded.
func ReadFailure(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	var f Failure
	if err := json.Unmarshal(data, &f); err != nil {
		return &Failure{Msg: "container init failed: " + string(data), Code: 125}
	}
	return &f
}

// SpecFromEnv decodes the Spec the runner put in the environment.
func SpecFromEnv() (*Spec, error) {
	var s Spec
	if err := json.Unmarshal([]byte(os.Getenv(EnvSpec)), &s); err != nil {
		return nil, fmt.Errorf("decoding sandbox spec from %s: %w", EnvSpec, err)
	}
	return &s, nil
}

// Run sets the container up and execs its command; it returns only on
// failure.
func Run(s *Spec) error {
	// unshare(CLONE_NEWCGROUP) changes only this thread, and exec keeps
	// only the calling thread: both must happen on the same one.
	runtime.LockOSThread()
	unix.CloseOnExec(ErrorFD)
	unix.CloseOnExec(SyncFD)

	// Rooting the cgroup namespace here (the runner placed this process
	// in the container's cgroup before it ran) makes /proc/self/cgroup
	// read "/" inside. Old kernels without cgroup namespaces: EINVAL.
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil && err != unix.EINVAL {
		return fmt.Errorf("creating cgroup namespace: %w", err)
	}
	// Nothing mounted from here on may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if err := mountRootfs(s); err != nil {
		return err
	}
	if err := writeEtc(s); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("setting hostname %q: %w", s.Hostname, err)
	}
	if err := pivotRoot(s.Merged); err != nil {
		return err
	}
	if s.Cwd != "" {
		if err := os.Chdir(s.Cwd); err != nil {
			return fmt.Errorf("changing to working directory: %w", err)
		}
	}
	path, err := LookPath(s.Args[0], Getenv(s.Env, "PATH"))
	if err != nil {
		return err
	}
	var master *os.File
	if s.TTY {
		if master, err = attachTerminal(s.Size); err != nil {
			return err
		}
	}
	if err := readyAndWait(master); err != nil {
		return err
	}
	unix.Umask(0o022)
	err = unix.Exec(path, s.Args, s.Env)
	return &CommandError{Name: s.Args[0], Reason: err.Error(), NotFound: err == unix.ENOENT}
}

// attachTerminal allocates a pseudo-terminal from the container's devpts
// (mounted by mountRootfs; /dev/ptmx links to pts/ptmx) and makes its
// slave this process's stdin, stdout, stderr and controlling terminal.
// The runner started this process as a session leader (setsid) without
// one. It returns the master for the runner.
func attachTerminal(size pty.Size) (*os.File, error) {
	master, slave, err := pty.Open("/dev/ptmx", size)
	if err != nil {
		return nil, err
	}
	defer slave.Close()
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup2(int(slave.Fd()), fd); err != nil {
			master.Close()
			return nil, fmt.Errorf("attaching the terminal: %w", err)
		}
	}
	if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 0); err != nil {
		master.Close()
		return nil, fmt.Errorf("making the terminal the controlling terminal: %w", err)
	}
	return master, nil
}

// readyAndWait tells the runner on SyncFD that the command is about to be
// exec'd, handing over the terminal's master if there is one, and waits
// for the go-ahead.
func readyAndWait(master *os.File) error {
	var rights []byte
	if master != nil {
		rights = unix.UnixRights(int(master.Fd()))
		defer master.Close()
	}
	if err := unix.Sendmsg(SyncFD, []byte{msgReady}, rights, nil, 0); err != nil {
		return fmt.Errorf("telling the runner the container is ready: %w", err)
	}
	// A raw read: the Go runtime must not start a thread meanwhile, as the
	// runner may now set a pids limit below the threads it has.
	var buf [1]byte
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, SyncFD, uintptr(unsafe.Pointer(&buf[0])), 1)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || n != 1 || buf[0] != msgGo {
			return errors.New("the runner went away before the command started")
		}
		return nil
	}
}

// AwaitReady is the runner's side of the handshake on SyncFD (conn is the
// runner's end of the socket): it waits until the first process is ready
// to exec the command and returns the terminal's master if it sent one.
// ok is false when the first process ended (or failed) first; its
// ErrorFD then says why.
func AwaitReady(conn int) (terminal *os.File, ok bool, err error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(conn, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("waiting for the container to be ready: %w", err)
		}
		if n == 0 {
			return nil, false, nil
		}
		if buf[0] != msgReady {
			return nil, false, fmt.Errorf("waiting for the container to be ready: unexpected message %q", buf[:n])
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil || len(msgs) != 1 {
				return nil, false, fmt.Errorf("receiving the container's terminal: %v", err)
			}
			fds, err := unix.ParseUnixRights(&msgs[0])
			if err != nil || len(fds) != 1 {
				return nil, false, fmt.Errorf("receiving the container's terminal: %v", err)
			}
			terminal = os.NewFile(uintptr(fds[0]), "terminal")
		}
		return terminal, true, nil
	}
}

// Proceed lets the first process exec the command.
func Proceed(conn int) error {
	if _, err := unix.Write(conn, []byte{msgGo}); err != nil {
		return fmt.Errorf("starting the command: %w", err)
	}
	return nil
}

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

func mountRootfs(s *Spec) error {
	overlay := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.Lower, s.Upper, s.Work)
	if err := unix.Mount("overlay", s.Merged, "overlay", 0, overlay); err != nil {
		return fmt.Errorf("mounting overlay rootfs (%s): %w", overlay, err)
	}
	const common = unix.MS_NOSUID | unix.MS_NODEV
	mounts := []mount{
		{"proc", "/proc", "proc", common | unix.MS_NOEXEC, ""},
		// sysfs shows the devices of the mounting process's network
		// namespace: the container's own.
		{"sysfs", "/sys", "sysfs", common | unix.MS_NOEXEC | unix.MS_RDONLY, ""},
		{"tmpfs", "/dev", "tmpfs", unix.MS_NOSUID | unix.MS_STRICTATIME, "mode=755,size=65536k"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"shm", "/dev/shm", "tmpfs", common | unix.MS_NOEXEC, "mode=1777,size=65536k"},
		{"tmpfs", "/tmp", "tmpfs", common, "mode=1777"},
	}
	for _, m := range mounts {
		target := filepath.Join(s.Merged, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("creating mount point %s: %w", m.target, err)
		}
		if err := unix.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return makeDev(filepath.Join(s.Merged, "dev"))
}

// makeDev fills the fresh /dev tmpfs with the nodes every program expects
// and nothing else: no host disks, no /dev/mem.
func makeDev(dev string) error {
	old := unix.Umask(0)
	defer unix.Umask(old)
	nodes := []struct {
		name         string
		major, minor uint32
	}{
		{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
		{"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
	}
	for _, n := range nodes {
		if err := unix.Mknod(filepath.Join(dev, n.name), unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("creating /dev/%s: %w", n.name, err)
		}
	}
	links := map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("creating /dev/%s: %w", name, err)
		}
	}
	return nil
}

// writeEtc gives the container its own name and address files; writing
// through the overlay puts them in the container's upper layer.
func writeEtc(s *Spec) error {
	etc := filepath.Join(s.Merged, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return fmt.Errorf("creating /etc: %w", err)
	}
	files := map[string]string{
		"hostname":    s.Hostname + "\n",
		"hosts":       s.Hosts,
		"resolv.conf": s.ResolvConf,
	}
	for name, content := range files {
		path := filepath.Join(etc, name)
		// A symlink here (say resolv.conf -> /run/...) would resolve
		// against the host's root before pivot_root: replace it.
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("replacing /etc/%s: %w", name, err)
			}
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return fmt.Errorf("writing /etc/%s: %w", name, err)
		}
	}
	return nil
}

// pivotRoot makes root the filesystem root and detaches the host's.
// pivot_root(".", ".") stacks the old root on top of the new one, so no
// directory for it is needed in the (read-only lower) rootfs; unmounting
// "." then removes exactly the old root.
func pivotRoot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("entering rootfs: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root to %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host root: %w", err)
	}
	return unix.Chdir("/")
}

// LookPath finds name the way a shell would with the given PATH, in the
// calling thread's root (so inside a container once it has entered one).
func LookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", commandError(name, err)
		}
		return name, nil
	}
	if path == "" {
		path = DefaultPath
	}
	var lastErr error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		err := executable(p)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			lastErr = err
		}
	}
	if lastErr != nil {
		return "", commandError(name, lastErr)
	}
	return "", &CommandError{Name: name, Reason: "executable file not found in $PATH", NotFound: true}
}

func commandError(name string, err error) *CommandError {
	if errors.Is(err, fs.ErrNotExist) {
		return &CommandError{Name: name, Reason: "no such file", NotFound: true}
	}
	return &CommandError{Name: name, Reason: "permission denied (not an executable file)"}
}

// DefaultPath is the PATH a container gets unless told otherwise.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fs.ErrPermission
	}
	return nil
}

// Getenv returns the value of key in env, the last one if repeated.
func Getenv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

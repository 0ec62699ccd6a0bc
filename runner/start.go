package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/runner/pty"
	"github.com/berthnet/berth/runner/sandbox"
)

// Stdio is what the container's command reads and writes. A nil Stdin
// reads /dev/null. With TTY the command gets a pseudo-terminal from the
// container's own devpts instance instead (as stdin, stdout, stderr and
// controlling terminal, so `tty` says /dev/pts/0 and job control works);
// Stdin, Stdout and Stderr are then unused and Process.Terminal is the
// master.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
	TTY                   bool
	// Size is the terminal's size to start with (TTY only).
	Size pty.Size
}

// Process is a command running in a container (pid 1, or one started by
// exec), owned by the runner process that started it.
type Process struct {
	cmd *exec.Cmd
	// Terminal is the master of the command's pseudo-terminal (Stdio.TTY),
	// for the caller to copy from and to and to resize; nil without one.
	// The caller closes it.
	Terminal *os.File
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Pid is the process's pid on the host.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Run creates a container and starts it; the caller then owns the
// Process and must Wait for it. On error nothing is left behind.
func (r *Runtime) Run(ctx context.Context, spec Spec, stdio Stdio) (*Container, *Process, error) {
	c, err := r.Create(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	p, err := r.Start(ctx, c, stdio)
	if err != nil {
		r.discard(c)
		return nil, nil, err
	}
	return c, p, nil
}

// Start sets up a created container and execs its command: network
// namespace, CNI ADD, cgroups, then the first process, born inside all of
// them. On error Start undoes its steps; the record stays for the caller
// to discard.
func (r *Runtime) Start(ctx context.Context, c *Container, stdio Stdio) (p *Process, err error) {
	unlock, err := r.store.lockContainer(c.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer func() {
		if err != nil {
			if _, terr := r.teardown(context.WithoutCancel(ctx), c); terr != nil {
				r.log.Warn("undoing a failed start", "container", c.Name, "err", terr)
			}
		}
	}()
	st := &c.State
	st.Supervisor = os.Getpid()
	if st.SupervisorStart, _, err = procStart(st.Supervisor); err != nil {
		return nil, err
	}
	if err := r.setupNetwork(ctx, c); err != nil {
		return nil, err
	}
	if err := r.setupCgroup(c); err != nil {
		return nil, err
	}
	p, err = r.startInit(c, stdio)
	if err != nil {
		return nil, err
	}
	st.Pid = p.Pid()
	st.PidStart, _, _ = procStart(st.Pid)
	st.Status = StatusRunning
	st.StartedAt = time.Now().UTC()
	if err := r.store.save(c); err != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if p.Terminal != nil {
			p.Terminal.Close()
		}
		return nil, err
	}
	r.log.Debug("container started", "container", c.Name, "pid", st.Pid, "ips", c.IPs())
	return p, nil
}

// setupNetwork pins a new network namespace (unless --net host) and
// attaches it to the CNI network (unless --net none).
func (r *Runtime) setupNetwork(ctx context.Context, c *Container) error {
	st := &c.State
	if c.Spec.Network == NetHost {
		return nil
	}
	if err := r.step(c, func() { st.NetNS = r.store.netnsPath(c.ID) }); err != nil {
		return err
	}
	if err := newNetNS(st.NetNS); err != nil {
		return err
	}
	if st.Network == nil {
		return nil
	}
	if err := r.step(c, func() { st.Attached = true }); err != nil {
		return err
	}
	return r.attach(ctx, c)
}

// setupCgroup creates the container's cgroup with its limits.
func (r *Runtime) setupCgroup(c *Container) error {
	h, err := r.hierarchy()
	if err != nil {
		return err
	}
	path := filepath.Join(r.cfg.CgroupParent, c.ID)
	if err := r.step(c, func() { c.State.Cgroup = h.Cgroup(path) }); err != nil {
		return err
	}
	res := c.Spec.Resources
	if res.PidsLimit > 0 {
		res.PidsLimit = max(res.PidsLimit, startupPids)
	}
	_, err = h.Create(path, res)
	return err
}

// tightenPidsLimit applies a --pids-limit below startupPids. It runs
// while the first process waits to exec the command (see startInit), so
// the limit holds from the command's first instruction.
func (r *Runtime) tightenPidsLimit(c *Container) error {
	if limit := c.Spec.Resources.PidsLimit; limit > 0 && limit < startupPids {
		return c.State.Cgroup.SetPidsLimit(limit)
	}
	return nil
}

// startupPids is the least pids limit while the container's first process
// is still the runner itself, setting the container up: the Go runtime
// starts several threads, each counted as a pid. A tighter --pids-limit
// is applied when that process is about to exec the command, which ends
// its threads.
const startupPids = 64

// step records a resource in c's state before it is created.
func (r *Runtime) step(c *Container, record func()) error {
	record()
	return r.store.save(c)
}

// startInit starts the container's first process (sandbox.Main, which
// sets the container up) and lets it exec the command once it is ready
// and the last limits are applied. It returns once the command runs, or
// with the reason it could not start.
func (r *Runtime) startInit(c *Container, stdio Stdio) (*Process, error) {
	dir := r.store.containerDir(c.ID)
	spec := sandbox.Spec{
		Lower:      c.Rootfs,
		Upper:      filepath.Join(dir, "upper"),
		Work:       filepath.Join(dir, "work"),
		Merged:     filepath.Join(dir, "merged"),
		Hostname:   c.Spec.Hostname,
		Hosts:      hostsFile(c),
		ResolvConf: resolvConf(c.State.Network),
		Args:       c.Spec.Args,
		Env:        containerEnv(c),
		TTY:        stdio.TTY,
		Size:       stdio.Size,
	}
	for _, d := range []string{spec.Upper, spec.Work, spec.Merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating rootfs layer: %w", err)
		}
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer errR.Close()
	handshake, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		errW.Close()
		return nil, fmt.Errorf("creating the start handshake socket: %w", err)
	}
	defer unix.Close(handshake[0])
	childSync := os.NewFile(uintptr(handshake[1]), "handshake")
	cmd, err := startIn(birth{netns: c.State.NetNS, cgroup: c.State.Cgroup}, func() (*exec.Cmd, error) {
		cmd := exec.Command("/proc/self/exe", InitCommand)
		cmd.Env = []string{sandbox.EnvSpec + "=" + string(specJSON)}
		if !stdio.TTY {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
		}
		cmd.ExtraFiles = []*os.File{errW, childSync} // sandbox.ErrorFD, sandbox.SyncFD
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
			// A session without a terminal: with TTY the first process
			// makes the container's own its controlling terminal.
			Setsid: true,
		}
		return cmd, nil
	})
	errW.Close()
	childSync.Close()
	if err != nil {
		return nil, fmt.Errorf("starting container process: %w", err)
	}
	fail := func(err error) (*Process, error) {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	terminal, ready, err := sandbox.AwaitReady(handshake[0])
	if err != nil {
		return fail(err)
	}
	if ready {
		err := r.tightenPidsLimit(c)
		if err == nil {
			err = sandbox.Proceed(handshake[0])
		}
		if err != nil {
			if terminal != nil {
				terminal.Close()
			}
			return fail(err)
		}
	}
	// EOF without a message: the command was exec'd (the pipe is
	// close-on-exec in the child).
	msg, _ := io.ReadAll(errR)
	if ferr := sandbox.ReadFailure(msg); ferr != nil || !ready {
		if terminal != nil {
			terminal.Close()
		}
		cmd.Wait()
		if ferr == nil {
			ferr = fmt.Errorf("container process ended before it was ready (%s)", cmd.ProcessState)
		}
		return nil, ferr
	}
	return &Process{cmd: cmd, Terminal: terminal}, nil
}

func containerEnv(c *Container) []string {
	env := []string{"PATH=" + sandbox.DefaultPath, "HOSTNAME=" + c.Spec.Hostname, "HOME=/root"}
	if c.Spec.TTY {
		env = append(env, "TERM=xterm")
	}
	for _, e := range c.Spec.Env {
		if !strings.Contains(e, "=") {
			// -e KEY alone passes the runner's own value, as in docker.
			v, ok := os.LookupEnv(e)
			if !ok {
				continue
			}
			e += "=" + v
		}
		env = append(env, e)
	}
	return env
}

func hostsFile(c *Container) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	names := c.Spec.Hostname
	if c.Name != c.Spec.Hostname && hostnameRE.MatchString(c.Name) {
		names += " " + c.Name
	}
	ips := []string{"127.0.1.1"}
	if c.State.Network != nil && len(c.State.Network.IPs) > 0 {
		ips = c.State.Network.IPs
	}
	for _, ip := range ips {
		fmt.Fprintf(&b, "%s\t%s\n", ip, names)
	}
	return b.String()
}

// Wait waits for the container's command to end, records how it ended
// (exit status, OOM kill), releases everything the container holds and,
// for --rm, removes it. It returns the exit status.
func (r *Runtime) Wait(ctx context.Context, c *Container, p *Process) (int, error) {
	p.cmd.Wait()
	code := exitStatus(p.cmd.ProcessState)
	unlock, err := r.store.lockContainer(c.ID)
	if err != nil {
		return code, err // removed meanwhile by rm -f, which cleaned up
	}
	defer unlock()
	if c, err = r.store.load(c.ID); err != nil {
		return code, err
	}
	st := &c.State
	if st.Cgroup != nil {
		if oom, err := st.Cgroup.OOMKilled(); err == nil {
			st.OOMKilled = oom
		}
	}
	st.Status, st.ExitCode, st.FinishedAt = StatusExited, code, time.Now().UTC()
	_, err = r.teardown(context.WithoutCancel(ctx), c)
	if err == nil && c.Spec.AutoRemove {
		r.discard(c)
	}
	return code, err
}

func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// Hidden commands: the runner re-executes itself as a container's first
// process and as the supervisor of a detached container.
const (
	InitCommand       = "__init"
	SupervisorCommand = "__supervise"
)

// StartError is a container that could not start; Code is the exit
// status for `runner run` (125 runner failure, 126/127 bad command).
type StartError struct {
	Msg  string `json:"msg"`
	Code int    `json:"code"`
}

func (e *StartError) Error() string { return e.Msg }

// ExitCode is the status `runner run` exits with.
func (e *StartError) ExitCode() int { return e.Code }

// RunDetached creates a container and hands it to a new supervisor
// process, which starts it, outlives this one, records how the container
// ends and releases its resources. RunDetached returns once the command
// runs, or with the reason it could not start (and nothing left behind).
func (r *Runtime) RunDetached(ctx context.Context, spec Spec) (*Container, error) {
	c, err := r.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		r.discard(c)
		return nil, err
	}
	defer readyR.Close()
	logf, err := os.OpenFile(filepath.Join(r.store.containerDir(c.ID), "supervisor.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		readyW.Close()
		r.discard(c)
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("/proc/self/exe", SupervisorCommand, c.ID)
	cmd.Env = append(os.Environ(), r.encodeConfig())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.Dir = "/"
	// Its own session: the terminal's ^C and hangup do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		r.discard(c)
		return nil, fmt.Errorf("starting supervisor: %w", err)
	}
	msg, _ := io.ReadAll(readyR)
	if string(msg) == readyOK {
		cmd.Process.Release()
		return r.store.load(c.ID)
	}
	cmd.Wait()
	var serr StartError
	if json.Unmarshal(msg, &serr) != nil || serr.Msg == "" {
		// The supervisor died before reporting: clean up for it.
		serr = StartError{Msg: fmt.Sprintf("supervisor of %s failed (%s); see its log above", c.Name, cmd.ProcessState), Code: 125}
		if rerr := r.Remove(context.WithoutCancel(ctx), c.ID, true); rerr != nil && !errors.Is(rerr, ErrNotFound) {
			serr.Msg += "; cleanup: " + rerr.Error()
		}
	}
	return nil, &serr
}

const readyOK = "ok"

// readyFD is the descriptor on which a supervisor reports the start.
const readyFD = 3

// SupervisorMain is the detached container's supervisor process: it
// starts the container, reports on readyFD, waits for it and cleans up.
func SupervisorMain(id string) int {
	ready := os.NewFile(readyFD, "ready")
	report := func(err error) {
		se := &StartError{Msg: err.Error(), Code: 125}
		var coder interface{ ExitCode() int }
		if errors.As(err, &coder) {
			se.Code = coder.ExitCode()
		}
		data, _ := json.Marshal(se)
		ready.Write(data)
		ready.Close()
	}
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &cfg); err != nil {
		report(fmt.Errorf("supervisor: decoding %s: %w", configEnv, err))
		return 125
	}
	log := NewLogger(os.Stderr, cfg.Debug) // stderr is supervisor.log
	r, err := New(cfg, log)
	if err != nil {
		report(err)
		return 125
	}
	ctx := context.Background()
	c, err := r.store.load(id)
	if err != nil {
		report(err)
		return 125
	}
	logf, err := os.OpenFile(r.store.logPath(id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		report(err)
		r.discard(c)
		return 125
	}
	p, err := r.Start(ctx, c, Stdio{Stdout: logf, Stderr: logf})
	logf.Close()
	if err != nil {
		r.discard(c)
		report(err)
		return 125
	}
	ready.Write([]byte(readyOK))
	ready.Close()
	// Stop and rm signal the container, never the supervisor, which must
	// live to record the exit; a stray SIGTERM is not a reason to die.
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if _, err := r.Wait(ctx, c, p); err != nil {
		log.Error("cleaning up after container", "container", c.Name, "err", err)
		return 1
	}
	return 0
}

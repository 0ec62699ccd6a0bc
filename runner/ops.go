package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/runner/pty"
	"github.com/berthnet/berth/runner/sandbox"
)

// Phase is what is true of a container now, derived from its record and
// from which of its processes still exist.
type Phase string

const (
	PhaseCreated  Phase = "created"  // its supervisor is starting it
	PhaseRunning  Phase = "running"  // pid 1 runs
	PhaseStopping Phase = "stopping" // pid 1 ended; the supervisor is cleaning up
	PhaseExited   Phase = "exited"   // ended and cleaned up
	// PhaseDead: the supervisor died (kill -9, reboot) and left the
	// container unfinished; rm (or gc) cleans it up.
	PhaseDead Phase = "dead"
)

// Phase observes c.
func (c *Container) Phase() Phase {
	st := &c.State
	supervised := alive(st.Supervisor, st.SupervisorStart)
	switch {
	case st.Status == StatusExited:
		return PhaseExited
	case st.Status == StatusRunning && alive(st.Pid, st.PidStart):
		return PhaseRunning
	case st.Status == StatusRunning && supervised:
		return PhaseStopping
	case st.Status == StatusCreated && supervised:
		return PhaseCreated
	}
	return PhaseDead
}

// StatusText is the STATUS column of ps, as docker writes it.
func (c *Container) StatusText(now time.Time) string {
	st := &c.State
	switch c.Phase() {
	case PhaseCreated:
		return "Created"
	case PhaseRunning:
		s := "Up " + ago(now.Sub(st.StartedAt))
		if !alive(st.Supervisor, st.SupervisorStart) {
			s += " (supervisor died)"
		}
		return s
	case PhaseStopping:
		return "Stopping"
	case PhaseExited:
		if st.Orphaned {
			// Nobody saw the exit status: say what happened instead.
			what := "cleaned up by " + st.CleanedBy
			if st.Network != nil {
				what = st.CleanedBy + " removed it from network " + st.Network.Network
			}
			return fmt.Sprintf("Exited (unknown) %s ago (supervisor died; %s)", ago(now.Sub(st.FinishedAt)), what)
		}
		s := fmt.Sprintf("Exited (%d) %s ago", st.ExitCode, ago(now.Sub(st.FinishedAt)))
		if st.OOMKilled {
			s += " (OOM killed)"
		}
		return s
	}
	return "Dead (supervisor died; runner gc or rm cleans up)"
}

func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d seconds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// IPs are the container's addresses on its CNI network while attached.
func (c *Container) IPs() []string {
	if c.State.Network == nil || !c.State.Attached {
		return nil
	}
	return c.State.Network.IPs
}

// IPsOf are the container's addresses of one family: IPv4, or IPv6.
func (c *Container) IPsOf(ipv6 bool) []string {
	var out []string
	for _, ip := range c.IPs() {
		if a, err := netip.ParseAddr(ip); err == nil && a.Unmap().Is6() == ipv6 {
			out = append(out, ip)
		}
	}
	return out
}

// PublishedPorts are the container's published ports while it runs, per
// family it has addresses in ("0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp").
func (c *Container) PublishedPorts() []string {
	if c.Phase() != PhaseRunning {
		return nil
	}
	var out []string
	for _, p := range c.Ports {
		out = append(out, p.Published(len(c.IPsOf(false)) > 0, len(c.IPsOf(true)) > 0)...)
	}
	return out
}

// List returns the containers, oldest first; without all only the
// running ones.
func (r *Runtime) List(all bool) ([]*Container, error) {
	cs, err := r.store.list()
	if err != nil {
		return nil, err
	}
	if all {
		return cs, nil
	}
	var out []*Container
	for _, c := range cs {
		if c.Phase() == PhaseRunning {
			out = append(out, c)
		}
	}
	return out, nil
}

// Get finds a container by name, id or unique id prefix.
func (r *Runtime) Get(ref string) (*Container, error) { return r.store.resolve(ref) }

// Stop sends SIGTERM to the container's pid 1 and SIGKILL after timeout,
// then waits until its resources are released. Stopping a stopped
// container is not an error.
func (r *Runtime) Stop(ctx context.Context, ref string, timeout time.Duration) error {
	c, err := r.store.resolve(ref)
	if err != nil {
		return err
	}
	if err := r.checkUnsupervised(c); err != nil {
		return err
	}
	st := &c.State
	if err := sendSignal(st.Pid, st.PidStart, syscall.SIGTERM); err != nil {
		return err
	}
	if !waitGone(ctx, st.Pid, st.PidStart, timeout) {
		// pid 1 of a namespace ignores signals it has no handler for,
		// so a plain `sleep` lands here.
		if err := sendSignal(st.Pid, st.PidStart, syscall.SIGKILL); err != nil {
			return err
		}
		waitGone(ctx, st.Pid, st.PidStart, 5*time.Second)
	}
	_, err = r.finish(ctx, c, "stop")
	return err
}

// checkUnsupervised refuses to touch an attached container whose
// supervisor is gone from the wrong network namespace: this runner would
// have to run CNI DEL itself, and there it would remove nothing.
func (r *Runtime) checkUnsupervised(c *Container) error {
	if c.State.Attached && !alive(c.State.Supervisor, c.State.SupervisorStart) {
		return checkNode(c)
	}
	return nil
}

// finish waits for the supervisor to record the exit and clean up, and
// does the cleanup itself when the supervisor is gone; by names the
// command doing it ("stop", "rm", "gc") in the record. It returns what it
// released itself.
func (r *Runtime) finish(ctx context.Context, c *Container, by string) ([]string, error) {
	wait, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for c.Phase() != PhaseExited && alive(c.State.Supervisor, c.State.SupervisorStart) && sleep(wait, 25*time.Millisecond) {
		latest, err := r.store.load(c.ID)
		if err != nil {
			return nil, nil // removed meanwhile (--rm)
		}
		c = latest
	}
	unlock, err := r.store.lockContainer(c.ID)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	if c, err = r.store.load(c.ID); err != nil {
		return nil, err
	}
	st := &c.State
	if st.Status == StatusExited && !st.Attached && st.NetNS == "" && st.Cgroup == nil {
		return nil, nil
	}
	if st.Status != StatusExited && !alive(st.Supervisor, st.SupervisorStart) {
		st.Orphaned, st.CleanedBy = true, by
	}
	return r.teardown(ctx, c)
}

// Remove deletes a container and everything it holds. A running
// container needs force (it is killed).
func (r *Runtime) Remove(ctx context.Context, ref string, force bool) error {
	c, err := r.store.resolve(ref)
	if err != nil {
		return err
	}
	if err := r.checkUnsupervised(c); err != nil {
		return err
	}
	if ph := c.Phase(); ph == PhaseRunning || ph == PhaseCreated {
		if !force {
			return fmt.Errorf("container %s is %s: stop it first, or use rm -f", c.Name, ph)
		}
		if err := sendSignal(c.State.Pid, c.State.PidStart, syscall.SIGKILL); err != nil {
			return err
		}
		waitGone(ctx, c.State.Pid, c.State.PidStart, 5*time.Second)
	}
	if _, err := r.finish(ctx, c, "rm"); err != nil {
		return fmt.Errorf("removing %s: %w (its record is kept: fix the cause and run rm again)", c.Name, err)
	}
	r.discard(c)
	return nil
}

// ExecSpec is a command to run in a running container.
type ExecSpec struct {
	Args []string
	Env  []string // added to the container's environment
	Cwd  string
}

// Exec starts a command in all of a running container's namespaces and
// cgroups; the caller then owns the Process and must Wait for it. With
// stdio.TTY the command gets a pseudo-terminal from the container's own
// devpts instance (Process.Terminal is its master). The error of a
// command that cannot be executed is a *sandbox.CommandError (exit status
// 126 or 127).
func (r *Runtime) Exec(ctx context.Context, ref string, spec ExecSpec, stdio Stdio) (*Process, error) {
	if len(spec.Args) == 0 {
		return nil, invalid("no command given: runner exec NAME CMD [ARGS...]")
	}
	c, err := r.store.resolve(ref)
	if err != nil {
		return nil, err
	}
	if c.Phase() != PhaseRunning {
		return nil, fmt.Errorf("container %s is not running (%s)", c.Name, c.StatusText(time.Now()))
	}
	env := append(containerEnv(c), spec.Env...)
	if stdio.TTY && sandbox.Getenv(env, "TERM") == "" {
		env = append(env, "TERM=xterm")
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	var terminal, slave *os.File
	cmd, err := startIn(birth{nsOf: c.State.Pid, cgroup: c.State.Cgroup}, func() (*exec.Cmd, error) {
		// On a thread in the container's mount namespace: paths resolve
		// in its root, /dev/ptmx is its own devpts instance's.
		path, err := sandbox.LookPath(spec.Args[0], sandbox.Getenv(env, "PATH"))
		if err != nil {
			return nil, err
		}
		cmd := &exec.Cmd{Path: path, Args: spec.Args, Env: env, Dir: cwd}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
		if stdio.TTY {
			var err error
			if terminal, slave, err = pty.Open("/dev/ptmx", stdio.Size); err != nil {
				return nil, err
			}
			cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		}
		return cmd, nil
	})
	if slave != nil {
		slave.Close() // the child has its own copy
	}
	if err != nil {
		if terminal != nil {
			terminal.Close()
		}
		var ce *sandbox.CommandError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, fmt.Errorf("exec in %s: %w", c.Name, err)
	}
	return &Process{cmd: cmd, Terminal: terminal}, nil
}

// Wait waits for the process to end and returns its exit status (128+n
// when killed by signal n).
func (p *Process) Wait() int {
	p.cmd.Wait()
	return exitStatus(p.cmd.ProcessState)
}

// Logs copies the output of a detached container to w; with follow it
// keeps copying until the container ends or ctx is done.
func (r *Runtime) Logs(ctx context.Context, ref string, follow bool, w io.Writer) error {
	c, err := r.store.resolve(ref)
	if err != nil {
		return err
	}
	f, err := os.Open(r.store.logPath(c.ID))
	if os.IsNotExist(err) {
		return fmt.Errorf("container %s has no log: only detached (-d) containers are logged", c.Name)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		if latest, err := r.store.load(c.ID); err != nil || latest.Phase() == PhaseExited || latest.Phase() == PhaseDead {
			_, err := io.Copy(w, f) // what was written before the end
			return err
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return nil
		}
	}
}

// GCReport is what GC did.
type GCReport struct {
	// Orphans are the containers whose supervisor had died, now cleaned up.
	Orphans []Orphan
	// Networks are the networks CNI GC ran on.
	Networks []NetworkGC
}

// Orphan is a container GC cleaned up after its supervisor died.
type Orphan struct {
	Name          string
	SupervisorPid int
	// Released is what GC released, e.g. "removed from network bridge
	// (10.88.0.5)", "network namespace", "cgroups".
	Released []string
}

// NetworkGC is CNI GC on one network: the attachments it kept.
type NetworkGC struct {
	Network string
	Kept    int
}

// GC finishes containers whose supervisor died, then asks every network
// to garbage-collect attachments other than those of live containers
// (CNI GC, through libcni's cache of attachments). The report says what
// was done even when GC also returns an error.
func (r *Runtime) GC(ctx context.Context) (*GCReport, error) {
	rep := &GCReport{}
	cs, err := r.store.list()
	if err != nil {
		return rep, err
	}
	var errs []error
	valid := map[string][]types.GCAttachment{}
	for _, c := range cs {
		switch c.Phase() {
		case PhaseDead:
			released, err := r.finish(ctx, c, "gc")
			if err != nil {
				errs = append(errs, fmt.Errorf("cleaning up %s: %w", c.Name, err))
			}
			rep.Orphans = append(rep.Orphans, Orphan{Name: c.Name, SupervisorPid: c.State.Supervisor, Released: released})
		default:
			if c.State.Attached {
				n := c.State.Network.Network
				valid[n] = append(valid[n], types.GCAttachment{ContainerID: c.ID, IfName: c.State.Network.IfName})
			}
		}
	}
	nets, err := r.Networks()
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	for _, n := range nets {
		if n.Err != "" {
			continue
		}
		if err := r.cni().GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: valid[n.Name]}); err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", n.Name, err))
			continue
		}
		rep.Networks = append(rep.Networks, NetworkGC{Network: n.Name, Kept: len(valid[n.Name])})
	}
	return rep, errors.Join(errs...)
}

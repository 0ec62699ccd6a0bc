package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcSpec describes a long-running process to start inside a namespace.
type ProcSpec struct {
	Name string   // label for logs, e.g. "netd-node1"; also the log file name
	Path string   // the binary
	Args []string // its arguments
	Env  []string // added to the test's environment
}

// Process is a process the test bed started inside one of its namespaces.
// It is stopped by its PID, never by name, and killed when the test
// process dies (Pdeathsig), so a crashed test leaves no daemon running.
type Process struct {
	Name    string
	PID     int
	LogPath string // stdout and stderr

	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, valid once done is closed
}

func (tb *Testbed) start(n *NetNS, spec ProcSpec) (*Process, error) {
	if spec.Name == "" {
		spec.Name = filepath.Base(spec.Path)
	}
	logPath := filepath.Join(tb.Dir, "logs", spec.Name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	// Append: a restarted daemon keeps the log of its earlier run above.
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", spec.Name, err)
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), spec.Path, strings.Join(spec.Args, " "))

	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := spawn(n, cmd); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", spec.Name, n.Name, err)
	}
	p := &Process{Name: spec.Name, PID: cmd.Process.Pid, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.mu.Lock()
	tb.procs = append(tb.procs, p)
	tb.mu.Unlock()
	return p, nil
}

// Pdeathsig fires when the thread that forked the child exits, not the
// process. Go reuses threads, and some code (the CNI test utilities among
// it) deliberately lets a locked thread die, so a child forked from an
// ordinary thread could be killed at random. Children are therefore forked
// from one thread that stays locked for the life of the test process.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	n    *NetNS
	cmd  *exec.Cmd
	done chan error
}

// spawn starts cmd inside n from the spawner thread.
func spawn(n *NetNS, cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go spawner()
	})
	req := spawnReq{n: n, cmd: cmd, done: make(chan error, 1)}
	spawnReqs <- req
	return <-req.done
}

func spawner() {
	// Never unlocked: this thread belongs to the spawner until the test
	// process exits. Its namespace is set before every fork, so it need
	// not be switched back.
	runtime.LockOSThread()
	for req := range spawnReqs {
		err := req.n.Set()
		if err == nil {
			// Forked from this thread, so the child starts in n.
			err = req.cmd.Start()
		}
		req.done <- err
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end and returns how it ended (nil for exit
// status 0).
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s (pid %d): %w", p.Name, p.PID, ctx.Err())
	}
}

// Kill ends the process with SIGKILL, as a crash would, and reaps it.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

// Stop asks the process to end with SIGTERM and kills it after grace.
// It returns the exit error of a process that ended on its own terms
// with a failure, nil when it exited 0 or had to be killed.
func (p *Process) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		return p.Kill()
	}
}

// Log returns what the process wrote so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

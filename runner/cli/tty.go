package cli

import (
	"errors"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/berthnet/berth/runner"
	"github.com/berthnet/berth/runner/pty"
)

// attachment connects the runner's stdio to a container command's (run
// and exec in the foreground): directly, or through the pseudo-terminal
// the command gets with -t, and relays the runner's signals to it.
type attachment struct {
	interactive, tty bool
	// raw: the runner's own terminal is in raw mode, so ^C and friends
	// reach the command as bytes through its terminal, not as signals.
	raw bool

	sigs     chan os.Signal
	terminal *os.File // the command's terminal (master), with -t
	restore  func()   // the runner's terminal mode
	stopped  chan struct{}
	outDone  chan struct{}
	stopOnce sync.Once
}

// ErrNotTTY is docker's refusal of -it when stdin is not a terminal: the
// keys would have nowhere to come from, and a shell would wait forever.
var ErrNotTTY = errors.New("the input device is not a TTY: -t with -i needs a terminal on stdin (to pipe input, use -i without -t)")

// terminationGrace is how long a command has to end after the runner got
// SIGTERM or SIGHUP before it is killed, as `runner stop`'s default.
const terminationGrace = 10 * time.Second

func newAttachment(interactive, tty bool) (*attachment, error) {
	if tty && interactive && !pty.IsTerminal(os.Stdin) {
		return nil, ErrNotTTY
	}
	a := &attachment{interactive: interactive, tty: tty, restore: func() {}, stopped: make(chan struct{})}
	a.raw = tty && interactive // stdin is a terminal, checked above
	// Caught from now on, so that a signal arriving while the container
	// starts is relayed once it runs rather than killing the runner.
	a.sigs = make(chan os.Signal, 8)
	signal.Notify(a.sigs, a.relayed()...)
	return a, nil
}

// relayed are the signals the runner passes on. In raw mode ^C, ^\ and
// ^Z reach the command through its terminal as bytes instead, but a
// SIGINT sent to the runner (or typed while the container starts, before
// raw mode) is still the command's, not a reason to abandon it.
func (a *attachment) relayed() []os.Signal {
	return []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}
}

// stdio is what the command is given.
func (a *attachment) stdio() runner.Stdio {
	if !a.tty {
		s := runner.Stdio{Stdout: os.Stdout, Stderr: os.Stderr}
		if a.interactive {
			s.Stdin = os.Stdin
		}
		return s
	}
	size, err := pty.GetSize(os.Stdin)
	if err != nil || size.Rows == 0 {
		size = pty.Size{Rows: 24, Cols: 80}
	}
	return runner.Stdio{TTY: true, Size: size}
}

// attach connects the runner to p once it runs: copies its terminal to
// stdout (and stdin to it with -i), follows the window size, and relays
// signals until detach.
func (a *attachment) attach(p *runner.Process) {
	go a.relay(p)
	if p.Terminal == nil {
		return
	}
	a.terminal = p.Terminal
	if pty.IsTerminal(os.Stdin) {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		winch <- syscall.SIGWINCH // a resize before Notify would be lost
		go func() {
			for {
				select {
				case <-winch:
					if size, err := pty.GetSize(os.Stdin); err == nil {
						pty.SetSize(a.terminal, size)
					}
				case <-a.stopped:
					signal.Stop(winch)
					return
				}
			}
		}()
		if a.raw {
			if restore, err := pty.MakeRaw(os.Stdin); err == nil {
				a.restore = restore
			}
		}
	}
	a.outDone = make(chan struct{})
	go func() {
		io.Copy(os.Stdout, a.terminal) // ends with EIO once no process holds the terminal
		close(a.outDone)
	}()
	if a.interactive {
		go io.Copy(a.terminal, os.Stdin)
	}
}

// relay passes the runner's signals on to p. SIGTERM and SIGHUP mean the
// runner is asked to end: the command gets the signal, with a terminal
// also the hangup the kernel sends when a terminal goes away (shells
// ignore SIGTERM, and pid 1 of a container any signal it has no handler
// for), and SIGKILL if it still runs after terminationGrace.
func (a *attachment) relay(p *runner.Process) {
	var kill <-chan time.Time
	for {
		select {
		case s := <-a.sigs:
			p.Signal(s)
			if s == syscall.SIGTERM || s == syscall.SIGHUP {
				if a.tty && s != syscall.SIGHUP {
					p.Signal(syscall.SIGHUP)
				}
				if kill == nil {
					kill = time.After(terminationGrace)
				}
			}
		case <-kill:
			p.Signal(syscall.SIGKILL)
		case <-a.stopped:
			return
		}
	}
}

// detach stops relaying once the command ended and waits (briefly) until
// its last terminal output is copied.
func (a *attachment) detach() {
	a.stopOnce.Do(func() {
		signal.Stop(a.sigs)
		close(a.stopped)
	})
	if a.outDone == nil {
		return
	}
	select {
	case <-a.outDone:
	case <-time.After(2 * time.Second): // a background process still holds the terminal
	}
}

// close restores the runner's terminal and releases the command's.
func (a *attachment) close() {
	a.detach()
	a.restore()
	if a.terminal != nil {
		a.terminal.Close()
	}
}

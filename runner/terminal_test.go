package runner_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tmux drives the runner through a real terminal (a tmux pane), as a
// person at a keyboard would: keys in, screen out.
type tmux struct {
	t    *testing.T
	sock string
}

// newTmux starts a private tmux server (its own socket, so no other tmux
// on the machine is touched) with one window of 100x30 running cmd.
func newTmux(t *testing.T, cmd []string) *tmux {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed (apt-get install tmux)")
	}
	tm := &tmux{t: t, sock: filepath.Join(t.TempDir(), "tmux.sock")}
	tm.run("new-session", "-d", "-x", "100", "-y", "30", reporting(cmd))
	tm.run("set-option", "-g", "remain-on-exit", "on")
	t.Cleanup(func() { exec.Command("tmux", "-S", tm.sock, "kill-server").Run() })
	return tm
}

func (tm *tmux) run(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.sock}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// newWindow opens another window running cmd; its target is returned.
func (tm *tmux) newWindow(cmd []string) string {
	tm.t.Helper()
	return strings.TrimSpace(tm.run("new-window", "-P", "-F", "#{window_index}", reporting(cmd)))
}

// reporting runs cmd under a shell that prints its exit status when it
// ends. tmux 3.3a is not a reliable parent to read it from: now and then
// it misses the SIGCHLD of a pane's command (the command stays a zombie,
// pane_dead_status empty, until another SIGCHLD arrives); a shell in the
// pane reaps it every time. A non-interactive shell keeps the command in
// the terminal's foreground process group, so ^C, ^Z and SIGWINCH reach
// it as they would from tmux directly.
func reporting(cmd []string) string {
	return shellJoin([]string{"sh", "-c", `"$@"; echo "[exit status $?]"`, "sh"}) + " " + shellJoin(cmd)
}

// keys types keys into window w (tmux key names: Enter, C-c, ...).
func (tm *tmux) keys(w string, keys ...string) {
	tm.t.Helper()
	tm.run(append([]string{"send-keys", "-t", ":" + w}, keys...)...)
}

// line types a command line.
func (tm *tmux) line(w, s string) { tm.keys(w, "-l", s); tm.keys(w, "Enter") }

func (tm *tmux) screen(w string) string {
	tm.t.Helper()
	return tm.run("capture-pane", "-p", "-J", "-t", ":"+w)
}

// wait waits until window w shows a match of re; the machine may be busy,
// so it waits long.
func (tm *tmux) wait(w, re string) string {
	tm.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := tm.screen(w)
		if m := rx.FindString(s); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("window %s never showed %q; screen:\n%s", w, re, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exitStatus waits until window w's command ended and returns its exit
// status as the shell reports it (128+n for signal n).
func (tm *tmux) exitStatus(w string) string {
	tm.t.Helper()
	m := regexp.MustCompile(`\[exit status (\d+)\]`).FindStringSubmatch(tm.wait(w, `\[exit status \d+\]`))
	return m[1]
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// command is the full command line of the runner on node n.
func (n *node) command(args ...string) []string {
	return append([]string{"nsenter", "--net=" + n.ns.Path(), n.bin, "--state-dir", n.stateDir, "--cni-conf-dir", n.confDir,
		"--cni-bin-dir", n.binDirs, "--cgroup-parent", n.cgroupParent}, args...)
}

// waitProc waits until a process named name runs in container c.
func (n *node) waitProc(c, name string) {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for n.runner("exec", c, "pidof", name).code != 0 {
		if time.Now().After(deadline) {
			n.t.Fatalf("no %s in container %s", name, c)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitForeground waits until the process called name in container c is
// running in its terminal's foreground process group: after a shell's fg,
// which hands over the terminal and continues the job after it returns, a
// ^C sent too early reaches the shell instead.
func (n *node) waitForeground(c, name string) {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res := n.runner("exec", c, "sh", "-c", "cat /proc/$(pidof "+name+")/stat")
		// After the command's name in parentheses: state, ppid, pgrp,
		// session, tty, tpgid (proc(5)).
		_, after, _ := strings.Cut(res.stdout, ") ")
		if f := strings.Fields(after); res.code == 0 && len(f) > 5 && f[0] != "T" && f[2] == f[5] {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s in container %s never ran in the foreground: %q", name, c, res.stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A terminal (-it) behaves as with docker: the container's own pts, the
// window size following the runner's terminal, ^C and ^Z reaching the
// foreground process, job control; for run and for exec.
func TestTerminal(t *testing.T) {
	n := newNode(t, nil)
	before := n.snapshot()
	tm := newTmux(t, n.command("run", "-it", "--name", "tty1", "--", "sh"))
	const run = "0"
	tm.wait(run, `(?m)^/ # $`)

	// Window 1: exec -it into the same container. Its pseudo-terminal is
	// the second of the container's devpts instance.
	exe := tm.newWindow(n.command("exec", "-it", "tty1", "sh"))
	tm.wait(exe, `(?m)^/ # $`)

	for _, w := range []struct{ window, pts string }{{run, "/dev/pts/0"}, {exe, "/dev/pts/1"}} {
		t.Run("window "+w.window, func(t *testing.T) {
			tm.t = t
			tm.line(w.window, "echo T:$(tty) L:$(ls /dev/pts | tr '\\n' ,)")
			tm.wait(w.window, "T:"+w.pts+" L:0,1,ptmx,")
			tm.line(w.window, "echo S:$(stty size)")
			tm.wait(w.window, "S:30 100")
		})
	}
	tm.t = t

	t.Run("window size follows SIGWINCH", func(t *testing.T) {
		tm.t = t
		tm.run("resize-window", "-t", ":"+run, "-x", "120", "-y", "40")
		tm.run("resize-window", "-t", ":"+exe, "-x", "90", "-y", "20")
		tm.line(run, "echo R:$(stty size)")
		tm.wait(run, "R:40 120")
		tm.line(exe, "echo R:$(stty size)")
		tm.wait(exe, "R:20 90")
	})

	for _, w := range []string{run, exe} {
		t.Run("^C interrupts the foreground process, window "+w, func(t *testing.T) {
			tm.t = t
			n := n.at(t)
			tm.line(w, "sleep 1000")
			n.waitProc("tty1", "sleep")
			tm.keys(w, "C-c")
			tm.line(w, "echo C:$?")
			tm.wait(w, "C:130")
			if res := n.runner("exec", "tty1", "pidof", "sleep"); res.code == 0 {
				t.Errorf("sleep survived ^C: pids %s", res.stdout)
			}
		})
	}

	t.Run("job control", func(t *testing.T) {
		tm.t = t
		n := n.at(t)
		tm.line(exe, "sleep 1001")
		n.waitProc("tty1", "sleep")
		tm.keys(exe, "C-z")
		tm.wait(exe, `\[1\]\+\s+Stopped\s+sleep 1001`)
		tm.line(exe, "bg; jobs")
		tm.wait(exe, `\[1\]\+\s+Running\s+sleep 1001`)
		tm.line(exe, "fg")
		n.waitForeground("tty1", "sleep")
		tm.keys(exe, "C-c")
		tm.line(exe, "echo J:$?")
		tm.wait(exe, "J:130")
	})

	tm.t = t
	tm.line(exe, "exit 3")
	if got := tm.exitStatus(exe); got != "3" {
		t.Errorf("exec -it ended with %s, want the shell's 3", got)
	}
	tm.line(run, "exit 4")
	if got := tm.exitStatus(run); got != "4" {
		t.Errorf("run -it ended with %s, want the shell's 4", got)
	}
	n.ok("rm", "tty1")
	n.expectClean(before)
}

// -it with stdin that is not a terminal is refused as docker does, at
// once: a shell would wait for keys that can never come.
func TestTerminalNeedsTTY(t *testing.T) {
	n := newNode(t, nil)
	n.ok("run", "-d", "--name", "web", "--", "sleep", "1000")
	before := n.snapshot()
	for _, args := range [][]string{
		{"exec", "-it", "web", "sh"},
		{"run", "-it", "--rm", "--", "sh"},
	} {
		start := time.Now()
		res := n.runnerStdin([]byte("echo hi\n"), args...)
		if res.code != 125 || !strings.Contains(res.stderr, "the input device is not a TTY") || time.Since(start) > 10*time.Second {
			t.Errorf("echo 'echo hi' | runner %v: exit %d after %s, stderr %q; want 125 and \"the input device is not a TTY\" at once",
				args, res.code, time.Since(start).Round(time.Millisecond), res.stderr)
		}
	}
	// -i alone pipes input; -t alone gives a terminal without input.
	if got := n.runnerStdin([]byte("echo hi\n"), "exec", "-i", "web", "sh"); got.code != 0 || got.stdout != "hi\n" {
		t.Errorf("exec -i with piped input: exit %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
	}
	if got := n.runner("exec", "-t", "web", "tty"); got.code != 0 || got.stdout != "/dev/pts/0\r\n" {
		t.Errorf("exec -t tty: exit %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
	}
	n.expectClean(before)
	n.ok("rm", "-f", "web")
}

// SIGTERM ends a runner waiting on a container's command, even when the
// command ignores it (an interactive shell, pid 1 without a handler).
func TestSIGTERMEndsRunner(t *testing.T) {
	n := newNode(t, nil)
	n.ok("run", "-d", "--name", "web", "--", "sleep", "1000")
	before := n.snapshot()
	for _, tc := range []struct {
		name     string
		args     []string
		proc     string
		within   time.Duration
		wantCode int
	}{
		// The shell ignores SIGTERM; the hangup of its terminal ends it.
		{"exec -t of a shell", []string{"exec", "-t", "web", "sh"}, "sh", 5 * time.Second, 129},
		// pid 1 ignores SIGTERM: killed after the grace period.
		{"run of pid 1 without a handler", []string{"run", "--name", "fg", "--", "sleep", "1001"}, "", 20 * time.Second, 137},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := n.at(t)
			cmdline := n.command(tc.args...)
			cmd := exec.Command(cmdline[0], cmdline[1:]...)
			// A file, not a pipe: the container's processes inherit it,
			// and Wait would wait for them to close a pipe.
			stderrFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
			if err != nil {
				t.Fatal(err)
			}
			defer stderrFile.Close()
			cmd.Stderr = stderrFile
			stderr := func() string { b, _ := os.ReadFile(stderrFile.Name()); return string(b) }
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			if tc.proc != "" {
				n.waitProc("web", tc.proc)
			} else {
				waitFor(t, func() bool { return n.runner("exec", "fg", "true").code == 0 })
			}
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(tc.within):
				cmd.Process.Kill()
				<-done
				t.Fatalf("runner %v still ran %s after SIGTERM; stderr %q", tc.args, tc.within, stderr())
			}
			if got := cmd.ProcessState.ExitCode(); got != tc.wantCode {
				t.Errorf("runner %v ended with %d after SIGTERM, want %d; stderr %q", tc.args, got, tc.wantCode, stderr())
			}
			if tc.proc != "" {
				if res := n.runner("exec", "web", "pidof", tc.proc); res.code == 0 {
					t.Errorf("%s still runs in the container after the runner ended", tc.proc)
				}
			} else {
				n.ok("rm", "fg")
			}
		})
	}
	n.expectClean(before)
	n.ok("rm", "-f", "web")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// --pids-limit holds from the first instruction of the container's
// command: pid 1 forking 8 at once in a 5-pid container never gets all 8
// (before the fix, 4 starts in 14 did).
func TestPidsLimitFromFirstInstruction(t *testing.T) {
	n := newNode(t, nil)
	before := n.snapshot()
	// ash forks as fast as it can and, as a non-interactive shell, exits
	// with 2 at the first fork that fails.
	script := `for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; echo forked all 8`
	for i := range 30 {
		res := n.runner("run", "--rm", "--pids-limit", "5", "--", "sh", "-c", script)
		if strings.Contains(res.stdout, "forked all 8") {
			t.Fatalf("start %d: the command forked 8 processes in a container limited to 5", i)
		}
		if res.code != 2 || !strings.Contains(res.stderr, "can't fork") {
			t.Fatalf("start %d: exit %d, stdout %q, stderr %q; want ash's fork failure", i, res.code, res.stdout, res.stderr)
		}
	}
	n.expectClean(before)
}

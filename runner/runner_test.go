package runner_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/runner/rootfs"
)

// The same flow on every network configuration the runner must support.
func TestNetworkFlow(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf conflist
	}{
		{"berth-bridge", berthBridge},
		{"reference-bridge", referenceBridge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, tc.conf)
			parent := n
			// The first attachment creates what a network keeps for good
			// (the bridge, portmap's top-level chains); what the test
			// checks is what each container adds and must take away.
			n.ok("run", "--rm", "--net", n.network, "-p", "8079:80", "--", "true")
			before := n.snapshot()

			n.ok("run", "-d", "--name", "a", "--net", n.network, "--", "sleep", "1000")
			n.ok("run", "-d", "--name", "b", "--net", n.network, "--", "sleep", "1000")
			ipA, ipB := n.ip("a"), n.ip("b")
			t.Run("containers ping each other", func(t *testing.T) {
				n := parent.at(t)
				n.ok("exec", "a", "ping", "-c", "1", "-W", "5", ipB)
				n.ok("exec", "b", "ping", "-c", "1", "-W", "5", ipA)
			})

			t.Run("exec shares the container's network and pid namespaces", func(t *testing.T) {
				n := parent.at(t)
				a := n.inspect("a")
				fi, err := os.Stat(a.State.NetNS)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := strings.TrimSpace(n.ok("exec", "a", "readlink", "/proc/self/ns/net")), fmt.Sprintf("net:[%d]", fi.Sys().(*syscall.Stat_t).Ino); got != want {
					t.Errorf("exec's network namespace %s, container's %s", got, want)
				}
				hostPid, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", a.State.Pid))
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.TrimSpace(n.ok("exec", "a", "readlink", "/proc/self/ns/pid")); got != hostPid {
					t.Errorf("exec's pid namespace %s, container's %s", got, hostPid)
				}
				if got := n.ok("exec", "a", "cat", "/proc/1/cmdline"); got != "sleep\x001000\x00" {
					t.Errorf("pid 1 seen by exec: %q, want the container's sleep", got)
				}
			})

			t.Run("published port answers from the node", func(t *testing.T) {
				n := parent.at(t)
				n.ok("run", "-d", "--name", "web", "--net", n.network, "-p", "8080:80", "--", "sh", "-c",
					"mkdir /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www")
				if got := n.waitHTTP(fmt.Sprintf("http://%s:8080/", n.gateway)); got != "hello-from-web\n" {
					t.Errorf("GET via the published port: %q", got)
				}
				if ps := n.ok("ps"); !strings.Contains(ps, "0.0.0.0:8080->80/tcp") {
					t.Errorf("ps does not show the published port:\n%s", ps)
				}
			})

			t.Run("-P publishes on a free port that ps shows", func(t *testing.T) {
				n := parent.at(t)
				n.ok("run", "-d", "--name", "auto", "--net", n.network, "-P", "--expose", "80", "--", "sh", "-c",
					"mkdir /www && echo hello-from-auto > /www/index.html && exec httpd -f -p 80 -h /www")
				m := regexp.MustCompile(`(?m)^\S+\s+auto\s.*0\.0\.0\.0:(\d+)->80/tcp`).FindStringSubmatch(n.ok("ps"))
				if m == nil {
					t.Fatalf("ps shows no published port for auto:\n%s", n.ok("ps"))
				}
				port, _ := strconv.Atoi(m[1])
				if port < 49153 || port > 65535 {
					t.Errorf("-P chose port %d, outside 49153-65535", port)
				}
				if got := n.waitHTTP(fmt.Sprintf("http://%s:%d/", n.gateway, port)); got != "hello-from-auto\n" {
					t.Errorf("GET via the -P port: %q", got)
				}
			})

			during := n.snapshot()
			for _, kind := range []string{"link", "file", "mount", "cgroup"} {
				if count(during, kind) <= count(before, kind) {
					t.Errorf("running containers added no %s line to the snapshot: the leak check below would prove nothing", kind)
				}
			}
			if testenv.Diff(before, during) == "" || !strings.Contains(testenv.Diff(before, during), "-A") {
				t.Errorf("running containers added no iptables rule: the leak check below would prove nothing")
			}

			t.Run("gc keeps live containers", func(t *testing.T) {
				n := parent.at(t)
				n.ok("gc")
				n.ok("exec", "a", "ping", "-c", "1", "-W", "5", ipB)
				if got := n.waitHTTP(fmt.Sprintf("http://%s:8080/", n.gateway)); got != "hello-from-web\n" {
					t.Errorf("GET via the published port after gc: %q", got)
				}
			})

			t.Run("stop releases the network, rm the rest", func(t *testing.T) {
				n := parent.at(t)
				n.ok("stop", "-t", "1", "a")
				if c := n.inspect("a"); c.State.Attached || c.State.NetNS != "" || c.State.Cgroup != nil {
					t.Errorf("stopped container still holds resources: %+v", c.State)
				}
				n.ok("rm", "a")
				n.ok("rm", "-f", "b", "web", "auto")
				if ps := n.ok("ps", "-a", "-q"); ps != "" {
					t.Errorf("containers left after rm: %s", ps)
				}
				n.expectClean(before)
			})
		})
	}
}

func (n *node) ip(name string) string {
	n.t.Helper()
	c := n.inspect(name)
	if ips := c.IPs(); len(ips) == 1 {
		return ips[0]
	}
	n.t.Fatalf("container %s has IPs %v, want one", name, c.IPs())
	return ""
}

// The container itself, without a network: namespaces, rootfs, env,
// exit status, terminal.
func TestContainer(t *testing.T) {
	n := newNode(t, nil)
	before := n.snapshot()
	for _, tc := range []struct {
		name     string
		args     []string
		stdin    string
		want     string
		wantCode int
	}{
		{"pid 1 is the command", []string{"--", "cat", "/proc/1/cmdline"}, "", "cat\x00/proc/1/cmdline\x00", 0},
		{"hostname set", []string{"--hostname", "box1", "--", "hostname"}, "", "box1\n", 0},
		{"hostname defaults to the name", []string{"--name", "named1", "--", "cat", "/etc/hostname"}, "", "named1\n", 0},
		{"own network namespace, loopback up", []string{"--", "sh", "-c", "ls /sys/class/net; ping -c1 -W2 127.0.0.1 >/dev/null && echo up"}, "", "lo\nup\n", 0},
		{"fresh /proc sees only the container", []string{"--", "sh", "-c", "echo /proc/[0-9]*"}, "", "/proc/1\n", 0},
		{"minimal /dev", []string{"--", "ls", "/dev"}, "", "fd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n", 0},
		{"/tmp is a tmpfs", []string{"--", "sh", "-c", "grep ' /tmp ' /proc/mounts | cut -d' ' -f3"}, "", "tmpfs\n", 0},
		{"cgroup namespace rooted at the container", []string{"--", "sh", "-c", "grep memory /proc/self/cgroup | cut -d: -f3"}, "", "/\n", 0},
		{"env", []string{"-e", "GREETING=hi there", "--", "sh", "-c", "echo $GREETING"}, "", "hi there\n", 0},
		{"exit status", []string{"--", "sh", "-c", "exit 7"}, "", "", 7},
		{"unknown command", []string{"--", "no-such-command"}, "", "", 127},
		{"stdin with -i", []string{"-i", "--", "sh", "-c", "read x; echo got $x"}, "hello\n", "got hello\n", 0},
		{"no stdin without -i", []string{"--", "sh", "-c", "cat; echo eof"}, "hello\n", "eof\n", 0},
		{"terminal with -t", []string{"-t", "--", "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty"}, "", "tty\r\n", 0},
		{"rootfs is never written", []string{"--", "sh", "-c", "echo x > /bin/new && cat /bin/new"}, "", "x\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := n.at(t)
			args := append([]string{"run", "--rm"}, tc.args...)
			var stdin []byte
			if tc.stdin != "" {
				stdin = []byte(tc.stdin)
			}
			res := n.runnerStdin(stdin, args...)
			if res.code != tc.wantCode || (tc.want != "" && res.stdout != tc.want) {
				t.Errorf("runner %v: exit %d, stdout %q (stderr %q); want exit %d, stdout %q",
					tc.args, res.code, res.stdout, res.stderr, tc.wantCode, tc.want)
			}
		})
	}
	// The default rootfs is shared: the write above stayed in that container's layer.
	if _, err := os.Stat(n.stateDir + "/rootfs"); err != nil {
		t.Fatal(err)
	}
	if res := n.runner("run", "--rm", "--", "test", "-e", "/bin/new"); res.code == 0 {
		t.Errorf("a container's write reached the shared rootfs")
	}
	n.expectClean(before)
}

func TestResourceLimits(t *testing.T) {
	n := newNode(t, nil)
	before := n.snapshot()

	t.Run("memory limit OOM-kills and ps says so", func(t *testing.T) {
		n := n.at(t)
		// tmpfs pages are charged to the container and cannot be swapped
		// or reclaimed: 64 MiB into a 32 MiB container must be killed.
		res := n.runner("run", "--name", "hog", "--memory", "32m", "--", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=64")
		if res.code != 137 {
			t.Errorf("exit %d (stderr %q), want 137 (SIGKILL)", res.code, res.stderr)
		}
		if c := n.inspect("hog"); !c.State.OOMKilled {
			t.Errorf("inspect does not record the OOM kill: %+v", c.State)
		}
		if ps := n.ok("ps", "-a"); !regexp.MustCompile(`hog\s+Exited \(137\).*OOM killed`).MatchString(ps) {
			t.Errorf("ps -a does not show the OOM kill:\n%s", ps)
		}
		n.ok("rm", "hog")
	})

	t.Run("limits are applied to the container's cgroup", func(t *testing.T) {
		n := n.at(t)
		n.ok("run", "-d", "--name", "lim", "--memory", "48m", "--cpus", "0.5", "--pids-limit", "16", "--", "sleep", "1000")
		cg := n.inspect("lim").State.Cgroup
		for _, f := range []struct{ path, want string }{
			{cg.V1["memory"] + "/memory.limit_in_bytes", strconv.Itoa(48 << 20)},
			{cg.V1["cpu"] + "/cpu.cfs_quota_us", "50000"},
			{cg.V1["cpu"] + "/cpu.cfs_period_us", "100000"},
			{cg.V1["pids"] + "/pids.max", "16"},
		} {
			data, err := os.ReadFile(f.path)
			if err != nil || strings.TrimSpace(string(data)) != f.want {
				t.Errorf("%s = %q (%v), want %s", f.path, data, err, f.want)
			}
		}
		// The pids limit holds for exec'd processes too.
		res := n.runner("exec", "lim", "sh", "-c", "for i in $(seq 20); do sleep 1 & done; wait")
		if res.code == 0 || !strings.Contains(res.stderr, "fork") {
			t.Errorf("20 processes in a 16-pid container: exit %d, stderr %q; want fork failures", res.code, res.stderr)
		}
		n.ok("rm", "-f", "lim")
	})
	n.expectClean(before)
}

func TestDetachedLogs(t *testing.T) {
	n := newNode(t, nil)
	before := n.snapshot()
	n.ok("run", "-d", "--name", "talk", "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; sleep 1; echo later")
	out := n.ok("logs", "-f", "talk") // returns once the container exited
	for _, want := range []string{"to-stdout\n", "to-stderr\n", "later\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs -f lacks %q:\n%s", want, out)
		}
	}
	if ps := n.ok("ps", "-a"); !regexp.MustCompile(`talk\s+Exited \(0\)`).MatchString(ps) {
		t.Errorf("ps -a after the command ended:\n%s", ps)
	}
	if n.ok("logs", "talk") != out {
		t.Errorf("logs without -f differs from logs -f")
	}
	n.ok("rm", "talk")
	n.expectClean(before)
}

// Bad input: a clear error, and nothing left behind on the node.
func TestErrorsLeakNothing(t *testing.T) {
	n := newNode(t, referenceBridge)
	n.ok("run", "--rm", "--net", n.network, "-p", "8079:80", "--", "true")
	n.ok("run", "-d", "--name", "taken", "--net", n.network, "-p", "8080:80", "--", "sleep", "1000")
	// A process of the node itself listens on 8081.
	listener := startNodeListener(t, n, 8081)
	defer listener()
	before := n.snapshot()
	for _, tc := range []struct {
		name string
		args []string
		want string
		code int
	}{
		{"unknown network lists the available ones", []string{"--net", "nosuch", "--", "true"}, `unknown network "nosuch".*available: none, host, testnet`, 125},
		{"bad memory", []string{"--memory", "12x", "--", "true"}, `--memory "12x"`, 125},
		{"memory too small", []string{"--memory", "1k", "--", "true"}, `minimum is 6m`, 125},
		{"bad cpus", []string{"--cpus", "lots", "--", "true"}, `--cpus "lots"`, 125},
		{"too many cpus", []string{"--cpus", "1000", "--", "true"}, `this machine has only`, 125},
		{"missing rootfs", []string{"--rootfs", "/nonexistent/rootfs", "--", "true"}, `--rootfs /nonexistent/rootfs: no such file or directory`, 125},
		{"duplicate name", []string{"--name", "taken", "--", "true"}, `"taken" is container`, 125},
		{"port published by another container", []string{"--net", n.network, "-p", "8080:80", "--", "true"}, `8080/tcp is published by container taken`, 125},
		{"port a node process listens on", []string{"--net", n.network, "-p", "8081:80", "--", "true"}, `host port already in use: 8081/tcp`, 125},
		{"host IP not on the node", []string{"--net", n.network, "-p", "192.0.2.1:8082:80", "--", "true"}, `not an address of this node`, 125},
		{"bad port", []string{"--net", n.network, "-p", "80000:80", "--", "true"}, `not a port number`, 125},
		{"ports without a network", []string{"-p", "8082:80", "--", "true"}, `needs a CNI network`, 125},
		{"-P without --expose", []string{"--net", n.network, "-P", "--", "true"}, `--expose`, 125},
		{"bad name", []string{"--name", "no/slash", "--", "true"}, `--name "no/slash"`, 125},
		{"command not found after the network is set up", []string{"--net", n.network, "-p", "8083:80", "--", "no-such-command"}, `executable file not found`, 127},
		{"same, detached", []string{"-d", "--net", n.network, "-p", "8083:80", "--", "no-such-command"}, `executable file not found`, 127},
		{"no command", []string{"--net", n.network}, `no command given`, 125},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := n.at(t)
			res := n.runner(append([]string{"run"}, tc.args...)...)
			if res.code != tc.code || !regexp.MustCompile(tc.want).MatchString(res.stderr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", res.code, res.stderr, tc.code, tc.want)
			}
			n.expectClean(before)
		})
	}
	n.ok("rm", "-f", "taken")
}

// startNodeListener makes a process of the node listen on port.
func startNodeListener(t *testing.T, n *node, port int) func() {
	t.Helper()
	cmd := exec.Command("busybox", "nc", "-l", "-p", strconv.Itoa(port))
	if err := n.ns.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := n.inNode("ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		if strings.TrimSpace(out) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node listener on %d did not start", port)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return func() { cmd.Process.Kill(); cmd.Wait() }
}

// After kill -9 of the supervisor, ps tells the truth and rm (or gc)
// cleans up.
func TestSupervisorKilled(t *testing.T) {
	n := newNode(t, referenceBridge)
	n.ok("run", "--rm", "--net", n.network, "-p", "8079:80", "--", "true")
	elsewhere := testenv.NewNS(t)
	before := n.snapshot()
	for _, cleanup := range []string{"rm", "gc"} {
		t.Run(cleanup, func(t *testing.T) {
			n := n.at(t)
			n.ok("run", "-d", "--name", "orphan", "--net", n.network, "-p", "8080:80", "--", "sleep", "1000")
			c := n.inspect("orphan")
			killPid(t, c.State.Supervisor)
			if ps := n.ok("ps"); !regexp.MustCompile(`orphan\s+Up`).MatchString(ps) {
				t.Errorf("container runs on without its supervisor, but ps says:\n%s", ps)
			}
			// From another node's namespace, CNI DEL would remove nothing:
			// rm must refuse before it kills anything.
			if res := n.runnerIn(elsewhere, nil, "rm", "-f", "orphan"); res.code == 0 || !strings.Contains(res.stderr, "wrong network namespace") {
				t.Errorf("rm -f from another namespace: exit %d, stderr %q; want a wrong-namespace error", res.code, res.stderr)
			}
			n.ok("exec", "orphan", "true")
			if ps := n.ok("ps"); !strings.Contains(ps, "(supervisor died") {
				t.Errorf("ps does not say the supervisor died:\n%s", ps)
			}
			killPid(t, c.State.Pid)
			if ps := n.ok("ps", "-a"); !regexp.MustCompile(`orphan\s+Dead \(supervisor died`).MatchString(ps) {
				t.Errorf("ps -a after both died:\n%s", ps)
			}
			switch cleanup {
			case "rm":
				n.ok("rm", "orphan")
			case "gc":
				// gc says what happened and what it released.
				out := n.ok("gc")
				for _, want := range []string{
					fmt.Sprintf("orphan: its supervisor (pid %d) died before the container ended; exit status unknown\n", c.State.Supervisor),
					fmt.Sprintf("orphan: released: cgroups, removed from network %s (%s), network namespace, 1 host port(s)\n", n.network, c.IPs()[0]),
					fmt.Sprintf("network %s: CNI GC done, 0 live attachment(s) kept\n", n.network),
				} {
					if !strings.Contains(out, want) {
						t.Errorf("gc output lacks %q:\n%s", want, out)
					}
				}
				if ps := n.ok("ps", "-a"); !regexp.MustCompile(`orphan\s+Exited \(unknown\) \d+ seconds ago \(supervisor died; gc removed it from network testnet\)`).MatchString(ps) {
					t.Errorf("ps -a after gc:\n%s", ps)
				}
				if out := n.ok("gc"); !strings.Contains(out, "no container with a dead supervisor") {
					t.Errorf("second gc:\n%s", out)
				}
				n.ok("rm", "orphan")
			}
			n.expectClean(before)
		})
	}
}

func killPid(t *testing.T, pid int) {
	t.Helper()
	p, err := os.FindProcess(pid)
	if err == nil {
		err = p.Kill()
	}
	if err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
	for i := 0; i < 200; i++ {
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || strings.Contains(string(data), ") Z ") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d did not die", pid)
}

func TestNetworks(t *testing.T) {
	n := newNode(t, referenceBridge)
	if err := os.WriteFile(n.confDir+"/20-broken.conflist", []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := n.ok("networks")
	if !regexp.MustCompile(`(?m)^testnet\s+bridge,portmap\s+1\.0\.0\s+yes\s`).MatchString(out) ||
		!strings.Contains(out, "20-broken.conflist") || !strings.Contains(out, "unusable") {
		t.Errorf("networks:\n%s", out)
	}
	// A broken file elsewhere in the dir does not stop the good network.
	n.ok("run", "--rm", "--net", n.network, "--", "true")
	// --net host: the node's own namespace, where the bridge now is.
	if links := n.ok("run", "--rm", "--net", "host", "--", "ls", "/sys/class/net"); !strings.Contains(links, n.bridge) {
		t.Errorf("--net host sees links %q, not the node's bridge %s", links, n.bridge)
	}
}

// Read-only commands leave a fresh machine as it was: no state dir, no
// parent of it.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	n := newNode(t, referenceBridge)
	fresh := filepath.Join(n.dir, "fresh")
	n.stateDir = filepath.Join(fresh, "run", "berth", "runner")
	for _, args := range [][]string{
		{"ps"}, {"ps", "-a"}, {"ps", "-a", "-q"}, {"networks"}, {"inspect", "web"}, {"logs", "web"}, {"version"},
	} {
		res := n.runner(args...)
		if _, err := os.Stat(fresh); !os.IsNotExist(err) {
			t.Fatalf("runner %v created %s (exit %d, stderr %q)", args, fresh, res.code, res.stderr)
		}
		if args[0] == "inspect" || args[0] == "logs" {
			if res.code == 0 || !strings.Contains(res.stderr, "no such container") {
				t.Errorf("runner %v on a fresh machine: exit %d, stderr %q; want no such container", args, res.code, res.stderr)
			}
		} else if res.code != 0 {
			t.Errorf("runner %v on a fresh machine: exit %d, stderr %q", args, res.code, res.stderr)
		}
	}
	// The first run creates it.
	n.ok("run", "--rm", "--", "true")
	if _, err := os.Stat(n.stateDir); err != nil {
		t.Errorf("run did not create the state dir: %v", err)
	}
}

// The README's first example: busybox httpd in the default rootfs, with
// no -h, answers with a page (its working directory is /).
func TestDefaultRootfsServesAPage(t *testing.T) {
	n := newNode(t, nil)
	n.ok("run", "-d", "--name", "web", "--", "httpd", "-f", "-p", "80")
	var res result
	waitFor(t, func() bool {
		res = n.runner("exec", "web", "wget", "-qO-", "http://127.0.0.1/")
		return res.code == 0
	})
	if res.stdout != rootfs.IndexPage {
		t.Errorf("GET / from httpd -f -p 80: %q, want the index page", res.stdout)
	}
	n.ok("rm", "-f", "web")
}

// berthDualStack is berthBridge with an IPv6 range next to the IPv4 one.
func berthDualStack(n *node, bridge string) string {
	return strings.Replace(berthBridge(n, bridge), `"gateway": "10.99.0.1"}]]`, `"gateway": "10.99.0.1"}], [{"subnet": "fd00:99::/64"}]]`, 1)
}

// On a dual-stack network, -p publishes on both families, -p [::]:... on
// IPv6 only, and ps and inspect show both families.
func TestDualStackNetwork(t *testing.T) {
	n := newNode(t, berthDualStack)
	n.ok("run", "--rm", "--net", n.network, "-p", "8079:80", "--", "true")
	before := n.snapshot()
	const web = "mkdir /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
	n.ok("run", "-d", "--name", "both", "--net", n.network, "-p", "8080:80", "--", "sh", "-c", web)
	n.ok("run", "-d", "--name", "six", "--net", n.network, "-p", "[::]:8081:80", "--", "sh", "-c", web)
	for _, url := range []string{"http://10.99.0.1:8080/", "http://[fd00:99::1]:8080/", "http://[fd00:99::1]:8081/"} {
		if got := n.waitHTTP(url); got != "hello\n" {
			t.Errorf("GET %s: %q", url, got)
		}
	}
	if out, err := n.inNode("busybox", "wget", "-q", "-O", "-", "http://10.99.0.1:8081/"); err == nil {
		t.Errorf("-p [::]:8081:80 is published on IPv4 too: %s", out)
	}
	six := n.inspect("six")
	if len(six.IPsOf(false)) != 1 || len(six.IPsOf(true)) != 1 || !strings.HasPrefix(six.IPsOf(true)[0], "fd00:99::") {
		t.Fatalf("addresses of a dual-stack container: %v", six.IPs())
	}
	n.ok("exec", "both", "ping", "-c", "1", "-W", "5", six.IPsOf(true)[0])
	ps := n.ok("ps")
	for _, want := range []string{"0.0.0.0:8080->80/tcp,[::]:8080->80/tcp", "[::]:8081->80/tcp ", six.IPsOf(false)[0] + "," + six.IPsOf(true)[0]} {
		if !strings.Contains(ps, want) {
			t.Errorf("ps does not show %q:\n%s", want, ps)
		}
	}
	var inspected []struct {
		IPv4, IPv6     []string
		PublishedPorts []string `json:"publishedPorts"`
	}
	if err := json.Unmarshal([]byte(n.ok("inspect", "both")), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("inspect: %v", err)
	}
	if got := inspected[0]; len(got.IPv4) != 1 || len(got.IPv6) != 1 || strings.Join(got.PublishedPorts, " ") != "0.0.0.0:8080->80/tcp [::]:8080->80/tcp" {
		t.Errorf("inspect: %+v", got)
	}
	n.ok("rm", "-f", "both", "six")
	n.expectClean(before)
}

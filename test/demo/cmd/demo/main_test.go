package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
)

// Every mode of `make demo` runs to the end, shows what it claims, and
// leaves nothing behind.
func TestDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.BinDir(t, "netd", "netd-etcd", "runner", "berth-vxlan", "berth-hostgw", "berth-bgp")
	for name, m := range modes {
		t.Run(name, func(t *testing.T) {
			var out strings.Builder
			d := &demo{mode: m, name: name, nodes: 3, out: &out}
			err := d.run(context.Background())
			d.cleanup()
			t.Log(out.String())
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"hello from web1, you came from 10.244.", // the client's own address
				"hello from web1, you came from 192.168.50.2\n",
				"hello from web1, you came from 192.168.50.250\n",
				"3 packets transmitted, 3 packets received",
				"in " + m.netdMode + " mode",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
			// Only netd's modes are named as modes.
			if regexp.MustCompile(`bgp-bird mode|in bgp-bird`).MatchString(out.String()) {
				t.Errorf("output names a mode netd does not have")
			}
			// The note about protocol 73 follows the routes it explains.
			if !regexp.MustCompile(`ip route show proto 73\x1b\[0m\n(\S.*\n)+\(routes with protocol 73 are netd's`).MatchString(out.String()) {
				t.Errorf("the protocol 73 note does not follow the routes")
			}
			if name == "vxlan" && !regexp.MustCompile(`vxlan id 1 local 192\.168\.50\.1 .*dstport 8472 .*nolearning`).MatchString(out.String()) {
				t.Errorf("the VTEP's details (VNI, local address, port, learning) are not shown")
			}
			if left, _ := filepath.Glob(filepath.Join("/run/netns", d.tb.ID+"*")); len(left) > 0 {
				t.Errorf("namespaces left: %v", left)
			}
			if _, err := os.Stat(d.tb.Dir); !os.IsNotExist(err) {
				t.Errorf("%s left: %v", d.tb.Dir, err)
			}
		})
	}
}

// A step that does not show what it says fails the demo.
func TestPingLoss(t *testing.T) {
	for _, tc := range []struct {
		out   string
		count int
		ok    bool
	}{
		{"3 packets transmitted, 3 packets received, 0% packet loss\n", 3, true},
		{"3 packets transmitted, 1 packets received, 66% packet loss\n", 3, false},
		{"2 packets transmitted, 2 packets received, 0% packet loss\n", 3, false},
		{"ping: sendto: Network unreachable\n", 3, false},
	} {
		if err := pingLoss(tc.out, tc.count); (err == nil) != tc.ok {
			t.Errorf("pingLoss(%q, %d) = %v, want ok=%v", tc.out, tc.count, err, tc.ok)
		}
	}
}

func TestReadyChecks(t *testing.T) {
	peers := []netd.PeerStatus{{Name: "node2", Subnet: "10.244.2.0/24"}, {Name: "node3", Subnet: "10.244.3.0/24"}}
	routes := "10.244.2.0/24 via 192.168.50.2 dev eth0 proto 73\n10.244.30.0/24 via 192.168.50.3 dev eth0 proto 73\n"
	if got := missingRoutes(routes, peers); len(got) != 1 || got[0] != "10.244.3.0/24 (node3)" {
		t.Errorf("missingRoutes = %v, want node3's subnet", got)
	}
	protocols := "Name       Proto      Table      State  Since         Info\n" +
		"device1    Device     ---        up     10:00:00.000  \n" +
		"node1      BGP        ---        up     10:00:01.000  Established   \n" +
		"node2      BGP        ---        start  10:00:01.000  Active        Socket: Connection refused\n"
	if err := birdSessionsUp(protocols, 2); err == nil || !strings.Contains(err.Error(), "node2") {
		t.Errorf("birdSessionsUp with one session down = %v", err)
	}
	if err := birdSessionsUp(strings.Replace(protocols, "start  10:00:01.000  Active", "up     10:00:01.000  Established", 1), 2); err != nil {
		t.Errorf("birdSessionsUp with both up = %v", err)
	}
}

// Two bridge demos at once both finish (they used to delete each other's
// namespaces at start), and demo.sh clean says what it removed, or that
// nothing was left.
func TestBridgeDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.BinDir(t, "berth-bridge")
	script := filepath.Join(testenv.RepoRoot(t), "test", "demo", "demo.sh")
	// The second starts once the first has made its namespaces.
	// Each must finish with nothing on stderr: a command failing in a
	// namespace the other run removed complains there.
	var wg sync.WaitGroup
	var outs, stderrs [2]strings.Builder
	var errs [2]error
	for i := range 2 {
		cmd := exec.Command(script, "bridge")
		cmd.Stdout, cmd.Stderr = &outs[i], &stderrs[i]
		wg.Go(func() { errs[i] = cmd.Run() })
		if i == 0 {
			waitFile(t, "/run/netns/berth-demo-*node")
		}
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || !strings.Contains(outs[i].String(), "demo finished") || stderrs[i].Len() > 0 {
			t.Errorf("run %d of two at once: %v\nstderr:\n%s\nstdout:\n%s", i, errs[i], stderrs[i].String(), outs[i].String())
		}
	}

	// A run killed with -9 leaves its namespaces; clean removes them.
	cmd := exec.Command(script, "bridge")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	node := fmt.Sprintf("/run/netns/berth-demo-%d-node", pid)
	waitFile(t, node)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	out, err := exec.Command(script, "clean").CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("removed the namespaces and files of bridge demo run %d", pid)) {
		t.Errorf("clean after kill -9: %v\n%s", err, out)
	}
	if _, err := os.Stat(node); !os.IsNotExist(err) {
		t.Errorf("%s left after clean: %v", node, err)
	}
	out, _ = exec.Command(script, "clean").CombinedOutput()
	if strings.Contains(string(out), fmt.Sprint(pid)) {
		t.Errorf("second clean claims to remove run %d again:\n%s", pid, out)
	}
}

// waitFile waits until a file matching pattern exists.
func waitFile(t *testing.T, pattern string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s appeared", pattern)
		}
	}
}

package runner_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/runner"
	"github.com/berthnet/berth/runner/cgroups"
)

// node is a test node: a network namespace the test created, in which
// every runner command runs (so CNI plugins put bridges and iptables
// rules there, never in the machine's namespace), with its own CNI conf
// dir, IPAM data dir, state dir and cgroup parent.
type node struct {
	t        *testing.T
	ns       ns.NetNS
	bin      string
	binDirs  string // --cni-bin-dir
	dir      string
	stateDir string
	confDir  string
	dataDir  string
	// pluginStateDir is for plugins that keep state (berth-bridge).
	pluginStateDir string
	cgroupParent   string
	network        string
	bridge         string // the bridge link the conflist names
	gateway        string // the bridge's address: the node's side of the network
}

// conflist writes the network configuration for n into n.confDir.
type conflist func(n *node, bridge string) string

// referenceBridge is the reference plugins' bridge + host-local + portmap.
func referenceBridge(n *node, bridge string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`, n.network, bridge, n.dataDir)
}

// berthBridge is berth's own bridge plugin with berth-ipam linked in.
func berthBridge(n *node, bridge string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.1.0",
  "name": %q,
  "plugins": [
    {"type": "berth-bridge", "bridge": %q, "isDefaultGateway": true, "ipMasq": true, "stateDir": %q,
     "ipam": {"type": "berth-ipam", "ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]], "dataDir": %q},
     "capabilities": {"portMappings": true}}
  ]
}`, n.network, bridge, n.pluginStateDir, n.dataDir)
}

func newNode(t *testing.T, conf conflist) *node {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	suffix := randHex(3)
	n := &node{
		t:              t,
		bin:            filepath.Join(testenv.BinDir(t, "runner"), "runner"),
		binDirs:        testenv.BinDir(t) + ":" + testenv.ReferenceCNIDir(t, "bridge", "host-local", "portmap"),
		dir:            dir,
		stateDir:       filepath.Join(dir, "state"),
		confDir:        filepath.Join(dir, "conf"),
		dataDir:        filepath.Join(dir, "ipam"),
		pluginStateDir: filepath.Join(dir, "plugin-state"),
		cgroupParent:   "/berth-test-" + suffix,
		network:        "testnet",
		bridge:         "rt" + suffix,
		gateway:        "10.99.0.1",
	}
	if err := os.MkdirAll(n.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if conf != nil {
		if err := os.WriteFile(filepath.Join(n.confDir, "10-test.conflist"), []byte(conf(n, n.bridge)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n.ns = testenv.NewNS(t)
	if out, err := testenv.InNS(n.ns, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	t.Cleanup(n.cleanup)
	return n
}

// cleanup removes whatever a failed test left: containers, then the
// cgroup parent and any mount under the state dir.
func (n *node) cleanup() {
	res := n.runner("ps", "-a", "-q")
	for _, id := range strings.Fields(res.stdout) {
		if r := n.runner("rm", "-f", id); r.code != 0 {
			n.t.Errorf("cleanup: rm -f %s: %s", id, r.stderr)
		}
	}
	for _, dir := range n.cgroupDirs(true) {
		unix.Rmdir(dir)
	}
	for _, m := range n.mounts() {
		unix.Unmount(m, unix.MNT_DETACH)
	}
}

type result struct {
	stdout, stderr string
	code           int
}

// runner runs the runner binary inside the node's network namespace.
func (n *node) runner(args ...string) result {
	return n.runnerStdin(nil, args...)
}

func (n *node) runnerStdin(stdin []byte, args ...string) result {
	n.t.Helper()
	return n.runnerIn(n.ns, stdin, args...)
}

// runnerIn runs the runner with n's directories but in network namespace
// netns.
func (n *node) runnerIn(netns ns.NetNS, stdin []byte, args ...string) result {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"--state-dir", n.stateDir, "--cni-conf-dir", n.confDir,
		"--cni-bin-dir", n.binDirs, "--cgroup-parent", n.cgroupParent}, args...)
	var stdout, stderr bytes.Buffer
	var res result
	err := netns.Do(func(ns.NetNS) error {
		cmd := exec.CommandContext(ctx, n.bin, full...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		return cmd.Run()
	})
	res.stdout, res.stderr = stdout.String(), stderr.String()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		n.t.Fatalf("runner %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// ok runs the runner and fails the test unless it exits 0.
func (n *node) ok(args ...string) string {
	n.t.Helper()
	res := n.runner(args...)
	if res.code != 0 {
		n.t.Fatalf("runner %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

// at returns n reporting to t, for use in a subtest.
func (n *node) at(t *testing.T) *node {
	m := *n
	m.t = t
	return &m
}

// inspect returns the record of one container.
func (n *node) inspect(name string) *runner.Container {
	n.t.Helper()
	var out []*runner.Container
	if err := json.Unmarshal([]byte(n.ok("inspect", name)), &out); err != nil || len(out) != 1 {
		n.t.Fatalf("inspect %s: %v", name, err)
	}
	return out[0]
}

// inNode runs a command (not the runner) in the node's namespace.
func (n *node) inNode(name string, args ...string) (string, error) {
	out, err := testenv.InNS(n.ns, name, args...)
	return string(out), err
}

// snapshot is everything a container may leave behind on its node: links,
// iptables rules and IPAM/state files (testenv.Snapshot), plus the host's
// mounts under the node's directory and its containers' cgroups.
func (n *node) snapshot() string {
	n.t.Helper()
	var dirs []string
	for _, sub := range []string{"containers", "names", "ports", "netns", "cni"} {
		dirs = append(dirs, filepath.Join(n.stateDir, sub))
	}
	s := testenv.Snapshot(n.t, n.ns, append(dirs, n.dataDir, n.pluginStateDir)...)
	for _, m := range n.mounts() {
		s += "mount " + m + "\n"
	}
	for _, cg := range n.cgroupDirs(false) {
		s += "cgroup " + cg + "\n"
	}
	return s
}

// count is how many snapshot lines start with kind ("link", "file", ...).
func count(snapshot, kind string) int {
	n := 0
	for _, l := range strings.Split(snapshot, "\n") {
		if strings.HasPrefix(l, kind+" ") {
			n++
		}
	}
	return n
}

// mounts lists the host's mounts under the node's state dir.
func (n *node) mounts() []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], n.dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// cgroupDirs lists the cgroups below the node's cgroup parent in every
// hierarchy; with parents, deepest first and including the parents.
func (n *node) cgroupDirs(parents bool) []string {
	h, err := cgroups.Detect()
	if err != nil {
		n.t.Fatal(err)
	}
	roots := slices.Collect(func(yield func(string) bool) {
		for _, mnt := range h.V1 {
			yield(filepath.Join(mnt, n.cgroupParent))
		}
		if h.Unified != "" {
			yield(filepath.Join(h.Unified, n.cgroupParent))
		}
	})
	var out []string
	for _, root := range roots {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if e.IsDir() {
				out = append(out, filepath.Join(root, e.Name()))
			}
		}
		if parents {
			out = append(out, root)
		}
	}
	return out
}

// expectClean fails unless the node is back to before.
func (n *node) expectClean(before string) {
	n.t.Helper()
	if diff := testenv.Diff(before, n.snapshot()); diff != "" {
		n.t.Fatalf("left behind (+) or removed (-):\n%s", diff)
	}
}

// waitHTTP fetches url from the node until it answers or 10s pass.
func (n *node) waitHTTP(url string) string {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// (busybox 1.35's wget -T crashes; the connection goes to this
		// node's own bridge address, so it cannot hang long anyway.)
		out, err := n.inNode("busybox", "wget", "-q", "-O", "-", url)
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("GET %s from the node: %v: %s", url, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

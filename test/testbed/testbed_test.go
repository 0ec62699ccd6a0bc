package testbed

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/runner/cgroups"
)

// Nodes reach each other on their segment and across the router, reach
// etcd on the underlay, and everything is gone after Close.
func TestTestbed(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	tb, err := New(Options{Nodes: 3, Segment2: []int{3}})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()

	n1, n3 := tb.Node(1), tb.Node(3)
	if n1.IP.String() != "192.168.50.1" || n3.IP.String() != "192.168.60.3" || n3.Gateway != RouterIP2 {
		t.Fatalf("addresses: node1 %s, node3 %s via %s", n1.IP, n3.IP, n3.Gateway)
	}
	for _, tc := range []struct {
		from *NetNS
		to   string
	}{
		{n1.NetNS, tb.Node(2).IP.String()},     // same segment
		{n1.NetNS, n3.IP.String()},             // across the router
		{n3.NetNS, UnderlayIP.String()},        // where etcd listens
		{tb.Node(2).NetNS, RouterIP1.String()}, // the router itself
		// The same over the IPv6 underlay.
		{n1.NetNS, tb.Node(2).IPv6.String()},
		{n1.NetNS, "fd00:60::3"},
		{n3.NetNS, IPv6Of(UnderlayIP).String()},
		{tb.Node(2).NetNS, "fd00:50::254"},
	} {
		if _, err := tc.from.Run(ctx, "ping", "-c", "1", "-W", "2", tc.to); err != nil {
			t.Error(err)
		}
	}
	out, err := n1.Run(ctx, "ip", "route", "show", "default")
	if err != nil || !strings.Contains(string(out), "via 192.168.50.254 dev eth0") {
		t.Errorf("node1 default route: %s %v", out, err)
	}

	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tb.Client(etcd.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("etcd put: %v", err)
	}
	// etcd answers nodes on both segments.
	for _, n := range []*Node{n1, n3} {
		if _, err := n.Get(ctx, etcd.ClientURL+"/health"); err != nil {
			t.Errorf("%s: %v", n.Host, err)
		}
	}

	// A process started in a node runs in that node's namespace.
	p, err := n3.Start(ProcSpec{Name: "sleeper", Path: "sleep", Args: []string{"600"}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := nsInode(filepath.Join(netnsDir, n3.Name))
	if got, err := nsInode(filepath.Join("/proc", strconv.Itoa(p.PID), "ns", "net")); err != nil || got != want {
		t.Errorf("sleeper runs in netns %d, node3 is %d (%v)", got, want, err)
	}

	cli.Close() // its reconnects would dial into namespaces being removed
	if err := tb.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if alive(p.PID) && !zombie(p.PID) {
		t.Errorf("process %d still running after Close", p.PID)
	}
	if _, err := os.Stat(tb.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Close: %v", tb.Dir, err)
	}
	if left, _ := filepath.Glob(filepath.Join(netnsDir, tb.ID+"*")); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
}

// Sweep removes a crashed run's namespace, kills what runs inside it and
// removes its directory; a live run's things stay.
func TestSweep(t *testing.T) {
	testenv.RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	crashed := Prefix + strconv.Itoa(dead.Process.Pid) + "x000000"
	if alive(dead.Process.Pid) {
		t.Skip("pid reused already")
	}
	live, err := New(Options{Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	nsName := crashed + "-node1"
	if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer deleteNetNS(nsName)
	orphan := exec.Command("ip", "netns", "exec", nsName, "sleep", "600")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- orphan.Wait() }()
	defer orphan.Process.Kill()
	dir, err := os.MkdirTemp("", crashed+"-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// Give `ip netns exec` time to switch and exec sleep.
	time.Sleep(200 * time.Millisecond)

	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, nsName)); !os.IsNotExist(err) {
		t.Errorf("crashed run's namespace survived the sweep: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("crashed run's directory survived the sweep: %v", err)
	}
	select {
	case err := <-exited:
		if ws, ok := orphan.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("orphan ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("process inside the crashed run's namespace still runs")
	}
	if _, err := os.Stat(live.Dir); err != nil {
		t.Errorf("the sweep removed a live test bed's directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, live.Node(1).Name)); err != nil {
		t.Errorf("the sweep removed a live test bed's namespace: %v", err)
	}
}

// A 3-member cluster keeps serving with one member down, and the member
// rejoins.
func TestEtcdCluster(t *testing.T) {
	tb := ForTest(t, Options{})
	ctx := context.Background()
	c, err := tb.StartEtcdCluster(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tb.Client(c.Endpoints()...)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := c.Members[0].Kill(); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// A request in flight to a killed leader times out; clients retry.
	err = waitFor(20*time.Second, func() error {
		_, err := cli.Put(wctx, "/k", "with one member down")
		return err
	})
	if err != nil {
		t.Fatalf("put with one member down: %v", err)
	}
	if err := c.Members[0].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(wctx, "/k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get after restart: %v %v", resp, err)
	}
}

// Close removes the containers of every node's runner: their processes,
// cgroups and pinned network namespaces.
func TestCloseRemovesContainers(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.BinDir(t, "runner")
	tb, err := New(Options{Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	r, err := tb.Node(1).Runner()
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Start(context.Background(), "sleeper", "--net", "none", "--", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	if c.State.Pid == 0 || c.NetNSPath() == "" || !strings.HasPrefix(c.NetNSPath(), tb.Dir) {
		t.Fatalf("container record: pid %d, netns %q", c.State.Pid, c.NetNSPath())
	}
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	expectGone(t, tb.ID, tb.Dir, c.State.Pid)
}

// Sweep removes what a killed run's runner left: processes in its
// containers' cgroups and in network namespaces pinned in its directory,
// the cgroups and the mounts.
func TestSweepContainers(t *testing.T) {
	testenv.RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	id := Prefix + strconv.Itoa(dead.Process.Pid) + "x000001"
	if alive(dead.Process.Pid) {
		t.Skip("pid reused already")
	}
	// The run's directory is made under a name no sweep matches and
	// renamed into the dead run's name just before Sweep: the sweep of a
	// test bed starting in another test package meanwhile would otherwise
	// remove it before unshare has pinned the namespace in it. (cgroup v2
	// refuses renames, but a sweep that takes the cgroup early only does
	// this test's job: the process is gone either way.)
	staging := "staging-" + id
	dir, err := os.MkdirTemp("", staging+"-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// A "container" in its cgroup, as the runner makes them (in the
	// hierarchies of the controllers it uses).
	h, err := cgroups.Detect()
	if err != nil {
		t.Fatal(err)
	}
	roots := slices.Collect(maps.Values(h.V1))
	if h.Unified != "" {
		roots = append(roots, h.Unified)
	}
	slices.Sort(roots)
	inCgroup := startSleep(t)
	for _, root := range slices.Compact(roots) {
		cg := filepath.Join(root, id, "node1", "ctr")
		if err := os.MkdirAll(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(cg)
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(inCgroup.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A process in a network namespace pinned in the run's directory.
	pin := filepath.Join(dir, "node1", "runner", "netns", "ctr")
	if err := os.MkdirAll(filepath.Dir(pin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pin, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	inNetNS := startSleep(t, "unshare", "--net="+pin)
	defer func() { unix.Unmount(pin, unix.MNT_DETACH) }() // pin moves with the rename below
	if err := waitFor(5*time.Second, func() error {
		if !mountedAt(pin) {
			return errors.New("namespace not pinned yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	swept := filepath.Join(filepath.Dir(dir), strings.Replace(filepath.Base(dir), staging, id, 1))
	if err := os.Rename(dir, swept); err != nil {
		t.Fatal(err)
	}
	pin = filepath.Join(swept, strings.TrimPrefix(pin, dir))
	dir = swept
	defer os.RemoveAll(dir)
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*exec.Cmd{inCgroup, inNetNS} {
		select {
		case <-waitDone(p):
		case <-time.After(5 * time.Second):
			t.Errorf("%v still runs after the sweep", p.Args)
		}
	}
	expectGone(t, id, dir, 0)
}

// startSleep starts `sleep 600`, prefixed by wrapper (e.g. unshare), and
// kills it when t ends.
func startSleep(t *testing.T, wrapper ...string) *exec.Cmd {
	t.Helper()
	args := append(wrapper, "sleep", "600")
	cmd := exec.Command(args[0], args[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); <-waitDone(cmd) })
	return cmd
}

var waits sync.Map // *exec.Cmd -> chan struct{}

// waitDone reaps cmd once and returns a channel closed when it ended.
func waitDone(cmd *exec.Cmd) <-chan struct{} {
	ch := make(chan struct{})
	if v, loaded := waits.LoadOrStore(cmd, ch); loaded {
		return v.(chan struct{})
	}
	go func() { cmd.Wait(); close(ch) }()
	return ch
}

func mountedAt(path string) bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(data), " "+path+" ")
}

// expectGone fails t if anything of test bed id is left: cgroups, mounts
// under dir, dir itself, or process pid.
func expectGone(t *testing.T, id, dir string, pid int) {
	t.Helper()
	roots, err := CgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, root := range roots {
		if _, err := os.Stat(filepath.Join(root, id)); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left in %s (%v)", id, root, err)
		}
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(data), dir+"/") {
		t.Errorf("mounts under %s left", dir)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left (%v)", dir, err)
	}
	if pid != 0 && alive(pid) && !zombie(pid) {
		t.Errorf("container process %d still runs", pid)
	}
}

// FRR starts in the router namespace with its own paths, answers on its
// vty, carries the configured neighbors and originates Announce.
func TestFRR(t *testing.T) {
	tb := ForTest(t, Options{Nodes: 1, Router: true})
	ctx := context.Background()
	f, err := tb.StartFRR(ctx, FRROptions{ASN: 64600, Peers: []FRRPeer{
		{IP: tb.Node(1).IP.String(), ASN: 65001, Password: "a,b:c"}, {IP: tb.Node(1).IPv6.String(), ASN: 65001}},
		Announce: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:100::/48")}})
	if err != nil {
		t.Fatal(err)
	}
	type summary struct {
		AS    uint32 `json:"as"`
		Peers map[string]struct {
			State string `json:"state"`
		} `json:"peers"`
	}
	var sum struct {
		IPv4 summary `json:"ipv4Unicast"`
		IPv6 summary `json:"ipv6Unicast"`
	}
	if err := f.JSON(ctx, "show bgp summary json", &sum); err != nil {
		t.Fatal(err)
	}
	// Each neighbor in its own family only.
	_, v4 := sum.IPv4.Peers[tb.Node(1).IP.String()]
	_, v6 := sum.IPv6.Peers[tb.Node(1).IPv6.String()]
	if sum.IPv4.AS != 64600 || !v4 || !v6 || len(sum.IPv4.Peers) != 1 || len(sum.IPv6.Peers) != 1 {
		t.Fatalf("FRR summary: %+v\n%s", sum, f.Conf)
	}
	routes, err := f.Routes(ctx)
	if err != nil || len(routes) != 2 || routes[0].Prefix != "198.51.100.0/24" || routes[1].Prefix != "2001:db8:100::/48" {
		t.Fatalf("FRR routes %+v, %v", routes, err)
	}
	// FRR's crash log and log buffers went to the test bed, not /var/tmp.
	if entries, err := os.ReadDir(filepath.Join(f.Dir, "tmp", "frr")); err != nil || len(entries) != 2 {
		t.Errorf("FRR's /var/tmp/frr in its private mount namespace: %v %v", entries, err)
	}
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
}

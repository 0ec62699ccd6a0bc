package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
)

// TestSmoke runs each measurement of `make bench` at its smallest so that
// the benchmark cannot rot unnoticed; the figures themselves are `make
// bench`'s business, not a test's.
func TestSmoke(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("runs iperf3 and CNI plugins")
	}
	ctx := context.Background()
	bin := testenv.BinDir(t, "berth-bridge", "berth-vxlan", "berth-hostgw", "berth-bgp")
	progress := func(format string, args ...any) { t.Logf(format, args...) }
	r := &Report{When: time.Now(), Quick: true}

	var err error
	r.CNILatency, err = MeasureCNI(ctx, CNIConfig{Runs: 2, Parallel: 2, BinDirs: []string{bin, "/usr/lib/cni"}, Progress: progress})
	if err != nil {
		t.Fatalf("MeasureCNI: %v", err)
	}
	if want := 3 * len(CNINetworks); len(r.CNILatency) != want {
		t.Fatalf("MeasureCNI gave %d latencies, want %d", len(r.CNILatency), want)
	}
	for _, l := range r.CNILatency {
		if l.Runs == 0 || l.P50 <= 0 || l.P99 < l.P50 {
			t.Errorf("%s %s: implausible latency %+v", l.Name, l.Op, l)
		}
	}

	cfg := DatapathConfig{Seconds: 1, Repeats: 1, RoundTrips: 100, Progress: progress}
	r.Datapath, err = OneNodeDatapath(ctx, cfg, []string{bin, "/usr/lib/cni"})
	if err != nil {
		t.Fatalf("OneNodeDatapath: %v", err)
	}
	cross, err := CrossNode(ctx, CrossNodeConfig{Datapath: cfg, Progress: progress, BinDir: bin, RefDir: "/usr/lib/cni"})
	if err != nil {
		t.Fatalf("CrossNode: %v", err)
	}
	r.Datapath = append(r.Datapath, cross...)
	for _, d := range r.Datapath {
		if d.Gbps1 <= 0 || d.Gbps4 <= 0 || d.RTTP50 <= 0 {
			t.Errorf("%s: implausible datapath figures %+v", d.Name, d)
		}
	}

	// 3 nodes: the last one leaves and joins again until there are
	// minPairs pairs.
	r.ControlPlane, err = MeasureControlPlane(ctx, ControlPlaneConfig{Sizes: []int{3}, Quick: true, BinDir: bin, Progress: progress})
	if err != nil {
		t.Fatalf("MeasureControlPlane: %v", err)
	}
	// A latency is clamped at 0 when a peer had the route before the
	// bench's own etcd watch delivered the lease: on an idle machine most
	// of a 3-node run's are, so only the max must be positive.
	for _, c := range r.ControlPlane.Convergence {
		if c.Pairs < minPairs || c.P50 < 0 || c.Max <= 0 || c.Max < c.P50 || c.AllPeersMax < c.AllPeersP50 || c.AllPeersP50 < c.P50 ||
			c.Joins < 3 || c.StartToLeaseP50 <= 0 || c.StartToLeaseMax < c.StartToLeaseP50 {
			t.Errorf("%s convergence: implausible %+v", c.Mode, c)
		}
	}

	r.Finish()
	// bridge ADD, DEL and throughput; dual-stack ADD and DEL against
	// IPv4; throughput and round trip of vxlan, hostgw and bgp; all peers
	// at 3 nodes of vxlan and hostgw; start → lease of the three modes;
	// on the eBPF datapath, ADD and DEL against iptables' and throughput
	// and round trip of bridge, vxlan, hostgw and bgp; none of the
	// 50-node ones.
	if len(r.Targets) != 26 {
		t.Errorf("want 26 targets, got %d: %+v", len(r.Targets), r.Targets)
	}
	dir := t.TempDir()
	if err := r.WriteJSON(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.Plot(dir); err != nil {
		t.Fatalf("plotting: %v", err)
	}
	readme := filepath.Join(dir, "README.md")
	os.WriteFile(readme, []byte("# x\n<!-- bench:begin -->\nold\n<!-- bench:end -->\ntail\n"), 0o644)
	if err := r.UpdateREADME(readme); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(readme)
	for _, want := range []string{"berth-bgp | ADD", "bridge (one node)", DualStackName + " | ADD", "bridge IPv6 (one node)", "hostgw (2 nodes)",
		"raw underlay IPv6 (2 nodes)", "vxlan IPv6 (2 nodes)", "hostgw IPv6 (2 nodes)", "bgp IPv6 (2 nodes)", "**Control plane**", "**Targets**", "tail\n",
		"berth-bridge, eBPF | DEL", "bgp, eBPF (2 nodes)", "**eBPF datapath vs iptables datapath**"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("README section lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "old") {
		t.Errorf("README section kept the old text")
	}
}

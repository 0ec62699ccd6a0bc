package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sample is a small report as a quick run makes one.
func sample(quick bool) *Report {
	r := &Report{When: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC), Quick: quick, Machine: "2 vCPUs (test), 1.0 GiB, Linux 6.18"}
	for _, n := range CNINetworks {
		name := n.name
		for i, op := range []string{"ADD", "DEL", "ADD x8 parallel"} {
			r.CNILatency = append(r.CNILatency, Latency{Name: name, Op: op, Runs: 20, P50: time.Duration(10+i) * time.Millisecond, P99: time.Duration(20+i) * time.Millisecond})
		}
	}
	r.Datapath = []Datapath{
		{Name: "raw veth", Gbps1: 20, Gbps4: 35, RTTP50: 14 * time.Microsecond, RTTP99: 20 * time.Microsecond},
		{Name: "bridge (one node)", Gbps1: 18, Gbps4: 30, RTTP50: 19 * time.Microsecond, RTTP99: 30 * time.Microsecond, Baseline: "raw veth"},
	}
	r.ControlPlane = &ControlPlane{Quick: quick, Convergence: []Convergence{
		{Mode: "vxlan", Nodes: 10, Pairs: 24, P50: 50 * time.Millisecond, Max: 60 * time.Millisecond},
	}}
	r.Finish()
	return r
}

// Every plot is drawn from a quick run's report too (one cluster size,
// one mode), and says where and when it was measured.
func TestPlots(t *testing.T) {
	dir := t.TempDir()
	r := sample(true)
	if err := r.Plot(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cni-latency.png", "datapath.png", "controlplane.png"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() < 10000 {
			t.Errorf("%s: %v", f, err)
		}
	}
	if got := r.measuredLine(); !strings.Contains(got, "2026-12-01") || !strings.Contains(got, "2 vCPUs (test)") || !strings.Contains(got, "quick run") {
		t.Errorf("footer line %q lacks the date, the machine or the kind of run", got)
	}
}

// The control-plane legend lists only target lines it draws.
func TestConvergenceTargets(t *testing.T) {
	for _, tc := range []struct {
		modes []string
		want  string
	}{
		{[]string{"vxlan"}, "target vxlan, hostgw"},
		{[]string{"bgp"}, "target bgp"},
		{[]string{"vxlan", "hostgw", "bgp"}, "target vxlan, hostgw|target bgp"},
		{nil, ""},
	} {
		var got []string
		for _, tg := range convergenceTargets(tc.modes) {
			got = append(got, tg.label)
		}
		if strings.Join(got, "|") != tc.want {
			t.Errorf("targets for %v: %q, want %q", tc.modes, got, tc.want)
		}
	}
}

// A VXLAN row's throughput target shows the plain VXLAN device's figure,
// its ceiling; the other modes' do not.
func TestVXLANTargetShowsCeiling(t *testing.T) {
	r := &Report{Datapath: []Datapath{
		{Name: RawUnderlay, Gbps1: 10, RTTP50: 20e3},
		{Name: PlainVXLAN, Baseline: RawUnderlay, Gbps1: 7.8, RTTP50: 25e3},
		{Name: "vxlan, eBPF (2 nodes)", Baseline: RawUnderlay, Gbps1: 7.4, RTTP50: 28e3},
		{Name: "hostgw, eBPF (2 nodes)", Baseline: RawUnderlay, Gbps1: 9, RTTP50: 22e3},
	}}
	want := map[string]string{
		"vxlan, eBPF (2 nodes) throughput, 1 stream":  "74% (7.40 vs 10.00 Gbit/s); the plain vxlan device: 78%",
		"hostgw, eBPF (2 nodes) throughput, 1 stream": "90% (9.00 vs 10.00 Gbit/s)",
	}
	for _, tg := range r.targets() {
		if w, ok := want[tg.What]; ok {
			if tg.Measured != w {
				t.Errorf("%s: %q, want %q", tg.What, tg.Measured, w)
			}
			delete(want, tg.What)
		}
	}
	if len(want) != 0 {
		t.Errorf("targets missing: %v", want)
	}
}

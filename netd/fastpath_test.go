package netd

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/netd/cluster"
)

// The eBPF datapath's share of a pass, without root: what netd wants
// follows the lease and the uplinks, and the diff changes only what
// differs.
func TestFastpathDesiredAndDiff(t *testing.T) {
	n := &conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Datapath: conf.DatapathEBPF}
	self := cluster.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24")}
	want := desiredFastpath(n, self, []int{7, 2})
	wantCfg := fastpath.Config{Local: self.Subnet, Scope: n.CIDR, Netd: true}
	if want.Config != wantCfg || !slices.Equal(want.Uplinks, []int{2, 7}) {
		t.Fatalf("desired %+v", want)
	}
	whats := func(cs []fastpathChange) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.What)
		}
		return out
	}
	for _, tt := range []struct {
		name string
		have fastpathState
		want []string
	}{
		{"in sync", want, nil},
		{"first pass after netd made the pins", fastpathState{Config: fastpath.Config{Netd: true}}, []string{
			"configure eBPF datapath: local 10.244.3.0/24, scope 10.244.0.0/16",
			"attach eBPF from_uplink to interface 2", "attach eBPF from_uplink to interface 7"}},
		{"VTEP re-created (new index)", fastpathState{Config: wantCfg, Uplinks: []int{2}}, []string{"attach eBPF from_uplink to interface 7"}},
		{"lease changed", fastpathState{Config: fastpath.Config{Local: netip.MustParsePrefix("10.244.9.0/24"), Scope: n.CIDR, Netd: true}, Uplinks: []int{2, 7}},
			[]string{"configure eBPF datapath: local 10.244.3.0/24, scope 10.244.0.0/16"}},
		{"a link netd no longer wants", fastpathState{Config: wantCfg, Uplinks: []int{2, 5, 7}}, []string{"detach eBPF from_uplink from interface 5"}},
	} {
		if got := whats(diffFastpath(tt.have, want)); !slices.Equal(got, tt.want) {
			t.Errorf("%s: changes %q, want %q", tt.name, got, tt.want)
		}
	}
}

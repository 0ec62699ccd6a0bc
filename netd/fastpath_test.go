package netd

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// The eBPF datapath's share of a pass, without root: what netd wants
// follows the lease and the uplinks, and the diff changes only what
// differs.
func TestFastpathDesiredAndDiff(t *testing.T) {
	n := &conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Datapath: conf.DatapathEBPF}
	self := cluster.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24")}
	want := desiredFastpath(n, self, []int{7, 2}, nil, false, backend.State{})
	wantCfg := fastpath.Config{Local: self.Subnet, Scope: n.CIDR, Netd: true}
	if want.Config != wantCfg || !slices.Equal(want.Uplinks, []int{2, 7}) || want.VXLAN != (fastpath.VXLAN{}) || len(want.Tunnels) != 0 {
		t.Fatalf("desired %+v", want)
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

// In vxlan mode over an IPv4 underlay the programs encapsulate for the
// peers the backend's state names: a VTEP neighbour (a peer subnet's next
// hop) whose MAC has an FDB entry (the peer's node address). IPv6 next
// hops, neighbours without an FDB entry, other links and an IPv6 underlay
// give no tunnel.
func TestFastpathTunnels(t *testing.T) {
	n := &conf.Network{Name: "pods", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Datapath: conf.DatapathEBPF}
	self := cluster.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24")}
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	ip := func(s string) net.IP { return net.ParseIP(s) }
	state := backend.State{
		FDB: []netlink.Neigh{
			{LinkIndex: 7, IP: ip("192.168.1.2"), HardwareAddr: mac("02:00:00:00:00:02")},
			{LinkIndex: 7, IP: ip("192.168.1.4"), HardwareAddr: mac("02:00:00:00:00:04")},
			{LinkIndex: 9, IP: ip("192.168.1.6"), HardwareAddr: mac("02:00:00:00:00:06")},
		},
		Neighs: []netlink.Neigh{
			{LinkIndex: 7, IP: ip("10.244.5.0"), HardwareAddr: mac("02:00:00:00:00:02")},
			{LinkIndex: 7, IP: ip("fd00:244:0:5::"), HardwareAddr: mac("02:00:00:00:00:02")},
			{LinkIndex: 7, IP: ip("10.244.8.0"), HardwareAddr: mac("02:00:00:00:00:04")},
			{LinkIndex: 7, IP: ip("10.244.9.0"), HardwareAddr: mac("02:00:00:00:00:09")}, // no FDB entry
			{LinkIndex: 9, IP: ip("10.244.6.0"), HardwareAddr: mac("02:00:00:00:00:06")}, // not the VTEP
		},
	}
	vtepMAC := cluster.MAC{2, 0xbe, 0, 0, 0, 7}
	tun := backend.Tunnel{VTEP: 7, Underlay: 2, Local: netip.MustParseAddr("192.168.1.1"), VNI: 1, Port: 8472, MAC: vtepMAC}
	want := desiredFastpath(n, self, []int{2, 7}, &tun, true, state)
	wantVX := fastpath.VXLAN{VTEP: 7, Underlay: 2, Local: tun.Local, VNI: 1, Port: 8472, MAC: vtepMAC}
	wantTun := map[netip.Addr]netip.Addr{
		netip.MustParseAddr("10.244.5.0"): netip.MustParseAddr("192.168.1.2"),
		netip.MustParseAddr("10.244.8.0"): netip.MustParseAddr("192.168.1.4"),
	}
	wantPeers := []netip.Addr{netip.MustParseAddr("192.168.1.2"), netip.MustParseAddr("192.168.1.4")}
	if want.VXLAN != wantVX || !maps.Equal(want.Tunnels, wantTun) || !slices.Equal(want.Peers, wantPeers) {
		t.Fatalf("desired VXLAN %+v, tunnels %v, peers %v; want %+v, %v, %v", want.VXLAN, want.Tunnels, want.Peers, wantVX, wantTun, wantPeers)
	}
	v6 := tun
	v6.Local = netip.MustParseAddr("fd00::1")
	if got := desiredFastpath(n, self, []int{2, 7}, &v6, true, state); got.VXLAN != (fastpath.VXLAN{}) || len(got.Tunnels) != 0 || len(got.Peers) != 0 {
		t.Errorf("IPv6 underlay: VXLAN %+v, tunnels %v; want none (the VTEP encapsulates)", got.VXLAN, got.Tunnels)
	}

	// A VTEP that is not up: no tunnel at all. The diff from what netd
	// had set clears the VXLAN config (the programs neither encapsulate
	// nor decapsulate), the tunnels and the peers.
	down := desiredFastpath(n, self, []int{2, 7}, &tun, false, state)
	if down.VXLAN != (fastpath.VXLAN{}) || len(down.Tunnels) != 0 || len(down.Peers) != 0 || !slices.Equal(down.Uplinks, want.Uplinks) {
		t.Errorf("VTEP down: VXLAN %+v, tunnels %v, peers %v, uplinks %v; want no tunnel, the same uplinks", down.VXLAN, down.Tunnels, down.Peers, down.Uplinks)
	}
	if got := whats(diffFastpath(want, down)); !slices.Equal(got, []string{
		"stop eBPF VXLAN encapsulation and decapsulation (no VTEP, or not up)",
		"remove eBPF VXLAN tunnel via 10.244.5.0", "remove eBPF VXLAN tunnel via 10.244.8.0",
		"stop decapsulating eBPF VXLAN from node 192.168.1.2", "stop decapsulating eBPF VXLAN from node 192.168.1.4"}) {
		t.Errorf("VTEP set down: changes %q", got)
	}

	in := func(have fastpathState) fastpathState {
		have.Config, have.Uplinks = want.Config, want.Uplinks
		return have
	}
	for _, tt := range []struct {
		name string
		have fastpathState
		want []string
	}{
		{"in sync", want, nil},
		{"netd's first pass", in(fastpathState{}), []string{
			"configure eBPF VXLAN encapsulation: VTEP 7 (02:be:00:00:00:07) over 2, local 192.168.1.1, VNI 1, port 8472",
			"eBPF VXLAN tunnel via 10.244.5.0 to node 192.168.1.2", "eBPF VXLAN tunnel via 10.244.8.0 to node 192.168.1.4",
			"decapsulate eBPF VXLAN from node 192.168.1.2", "decapsulate eBPF VXLAN from node 192.168.1.4"}},
		{"VTEP re-created", in(fastpathState{VXLAN: fastpath.VXLAN{VTEP: 4, Underlay: 2, Local: tun.Local, VNI: 1, Port: 8472}, Tunnels: wantTun, Peers: wantPeers}),
			[]string{"configure eBPF VXLAN encapsulation: VTEP 7 (02:be:00:00:00:07) over 2, local 192.168.1.1, VNI 1, port 8472"}},
		{"pins of the berth before vtep_mac (no MAC: nothing decapsulated)", in(fastpathState{VXLAN: fastpath.VXLAN{VTEP: 7, Underlay: 2, Local: tun.Local, VNI: 1, Port: 8472},
			Tunnels: wantTun, Peers: wantPeers}),
			[]string{"configure eBPF VXLAN encapsulation: VTEP 7 (02:be:00:00:00:07) over 2, local 192.168.1.1, VNI 1, port 8472"}},
		{"a peer moved and one left", in(fastpathState{VXLAN: wantVX, Tunnels: map[netip.Addr]netip.Addr{
			netip.MustParseAddr("10.244.5.0"): netip.MustParseAddr("192.168.1.2"),
			netip.MustParseAddr("10.244.8.0"): netip.MustParseAddr("192.168.1.99"),
			netip.MustParseAddr("10.244.1.0"): netip.MustParseAddr("192.168.1.5"),
		}, Peers: []netip.Addr{netip.MustParseAddr("192.168.1.2"), netip.MustParseAddr("192.168.1.5"), netip.MustParseAddr("192.168.1.99")}}),
			[]string{"eBPF VXLAN tunnel via 10.244.8.0 to node 192.168.1.4", "remove eBPF VXLAN tunnel via 10.244.1.0",
				"decapsulate eBPF VXLAN from node 192.168.1.4",
				"stop decapsulating eBPF VXLAN from node 192.168.1.5", "stop decapsulating eBPF VXLAN from node 192.168.1.99"}},
	} {
		if got := whats(diffFastpath(tt.have, want)); !slices.Equal(got, tt.want) {
			t.Errorf("%s: changes %q, want %q", tt.name, got, tt.want)
		}
	}
}

// whats are the changes' descriptions, in order.
func whats(cs []fastpathChange) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.What)
	}
	return out
}

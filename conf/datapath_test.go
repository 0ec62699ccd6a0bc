package conf

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestNetworkDatapath(t *testing.T) {
	for _, tt := range []struct {
		given, stored string
		conflict      bool
	}{
		{"", "", false},
		{"", "ebpf", false}, // not given: the network's
		{"ebpf", "ebpf", false},
		{"iptables", "", false}, // empty is the default, iptables
		{"ebpf", "", true},
		{"iptables", "ebpf", true},
	} {
		given, stored := Network{Datapath: tt.given}, Network{Datapath: tt.stored}
		got := given.Conflicts(&stored)
		if (len(got) > 0) != tt.conflict || (tt.conflict && !strings.Contains(got[0], "datapath")) {
			t.Errorf("given %q, stored %q: conflicts %q", tt.given, tt.stored, got)
		}
	}
	n := Network{Datapath: "xdp"}
	if err := n.Validate(); err == nil || !strings.Contains(err.Error(), "datapath") {
		t.Errorf("datapath xdp: %v", err)
	}
}

func TestConflistDatapath(t *testing.T) {
	for _, tt := range []struct {
		datapath string
		want     map[string]any
	}{
		{"", map[string]any{}},
		{"iptables", map[string]any{}},
		{"ebpf", map[string]any{"datapath": "ebpf", "bpffs": "/run/bpf-node1"}},
	} {
		data, err := NodeConflist{Network: "pods", Mode: "hostgw"}.WithDatapath(&Network{Datapath: tt.datapath}, "/run/bpf-node1").Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var list struct{ Plugins []map[string]any }
		json.Unmarshal(data, &list)
		p := list.Plugins[0]
		for _, k := range []string{"datapath", "bpffs"} {
			if p[k] != tt.want[k] {
				t.Errorf("datapath %q: %s = %v, want %v", tt.datapath, k, p[k], tt.want[k])
			}
		}
	}
}

// The eBPF datapath handles IPv4 only: a network with IPv6 on it is
// invalid, naming datapath, wherever the IPv6 comes from (a dual-stack or
// IPv6-only cluster network, a bridge's ipam range, a node lease).
func TestEBPFRefusesIPv6(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")
	for _, tt := range []struct {
		name string
		n    Network
		ok   bool
	}{
		{"IPv4", Network{CIDR: v4, Datapath: DatapathEBPF}, true},
		{"dual-stack", Network{CIDR: v4, CIDRv6: v6, Datapath: DatapathEBPF}, false},
		{"IPv6-only", Network{CIDRv6: v6, Datapath: DatapathEBPF}, false},
		{"dual-stack on iptables", Network{CIDR: v4, CIDRv6: v6}, true},
	} {
		err := tt.n.Validate()
		if (err == nil) != tt.ok || (err != nil && !strings.Contains(err.Error(), "datapath")) {
			t.Errorf("network %s: %v", tt.name, err)
		}
	}
	// Refused at ADD (CheckAddressing), naming the field; DEL and GC
	// still parse such a config, to clean up.
	for _, tt := range []struct {
		name, ranges string
		want         string // in the error; "" for none
	}{
		{"IPv4", `[{"subnet":"10.99.0.0/24"}]`, ""},
		{"dual-stack", `[{"subnet":"10.99.0.0/24"}],[{"subnet":"fd00:99::/64"}]`, "datapath"},
		{"IPv6-only", `[{"subnet":"fd00:99::/64"}]`, "datapath"},
		{"two IPv4 ranges in one set", `[{"subnet":"10.99.0.0/24","rangeEnd":"10.99.0.99"},{"subnet":"10.99.0.0/24","rangeStart":"10.99.0.200"}]`, ""},
		{"two IPv4 range sets", `[{"subnet":"10.99.0.0/24"}],[{"subnet":"10.100.0.0/24"}]`, "ipam.ranges[1]"},
	} {
		stdin := []byte(`{"cniVersion":"1.0.0","name":"n","type":"berth-bridge","datapath":"ebpf",
			"ipam":{"type":"berth-ipam","ranges":[` + tt.ranges + `]}}`)
		c, err := ParseBridge(stdin, "")
		if err == nil {
			err = c.ParseIPAMFor(stdin, "")
		}
		if err != nil {
			t.Errorf("bridge ranges %s: parsing (as DEL does): %v", tt.name, err)
			continue
		}
		err = c.CheckAddressing()
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("bridge ranges %s: %v, want an error naming %q", tt.name, err, tt.want)
		}
	}
	leased := &Bridge{Datapath: DatapathEBPF}
	leased.Name = "pods"
	if err := leased.CheckLeasedFamilies("/run/berth/pods.json", netip.Prefix{}); err != nil {
		t.Errorf("IPv4 lease: %v", err)
	}
	err := leased.CheckLeasedFamilies("/run/berth/pods.json", netip.MustParsePrefix("fd00:244:0:7::/64"))
	if err == nil || !strings.Contains(err.Error(), "datapath") || !strings.Contains(err.Error(), "/run/berth/pods.json") {
		t.Errorf("lease with IPv6: %v", err)
	}
}

func TestGuardHook(t *testing.T) {
	for _, tt := range []struct {
		config string
		want   string // in the error; "" for none
	}{
		{`"guardHook":"tc"`, ""},
		{`"guardHook":"tcx"`, ""},
		{`"guardHook":"xdp"`, "guardHook"},
		{`"guardHook":"tcx","datapath":"ebpf"`, "guardHook"},
	} {
		_, err := ParseBridge([]byte(`{"cniVersion":"1.0.0","name":"n","type":"berth-bridge",`+tt.config+`}`), "")
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: %v, want an error naming %q", tt.config, err, tt.want)
		}
	}
}

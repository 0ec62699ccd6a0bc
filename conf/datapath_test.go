package conf

import (
	"encoding/json"
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

package conf

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/berthnet/berth/internal/cnierr"
)

func TestNetworkValidate(t *testing.T) {
	yes := true
	tests := []struct {
		name  string
		n     Network
		field string // "" when valid
	}{
		{name: "defaults", n: Network{}.WithDefaults()},
		{name: "nothing given", n: Network{}},
		{name: "hostgw", n: Network{Mode: "hostgw", CIDR: netip.MustParsePrefix("10.1.0.0/16"), SubnetLen: 26}.WithDefaults()},
		{name: "bad name", n: Network{Name: "a b"}, field: "name"},
		{name: "ipv6", n: Network{CIDR: netip.MustParsePrefix("fd00::/48")}, field: "cidr"},
		{name: "host bits", n: Network{CIDR: netip.MustParsePrefix("10.244.1.0/16")}, field: "cidr"},
		{name: "subnet too small", n: Network{SubnetLen: 31}, field: "subnetLen"},
		{name: "subnet larger than network", n: Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 8}, field: "subnetLen"},
		{name: "mode", n: Network{Mode: "ipip"}, field: "mode"},
		{name: "vni", n: Network{VNI: 1 << 24}, field: "vni"},
		{name: "port", n: Network{Port: 70000}, field: "port"},
		{name: "mtu", n: Network{MTU: 100}, field: "mtu"},
		{name: "vni in hostgw", n: Network{Mode: "hostgw", VNI: 4}, field: "vni"},
		{name: "directRouting in hostgw", n: Network{Mode: "hostgw", DirectRouting: &yes}, field: "directRouting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.n.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field+":") {
				t.Fatalf("got %v, want an invalid-config error naming %s", err, tt.field)
			}
		})
	}
}

func TestNetworkConflicts(t *testing.T) {
	stored := Network{Name: "n", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Mode: "vxlan"}.WithDefaults()
	no := false
	tests := []struct {
		name  string
		given Network
		want  []string // fields reported
	}{
		{name: "only a name", given: Network{Name: "n"}},
		{name: "same values", given: Network{Name: "n", CIDR: stored.CIDR, Mode: "vxlan", VNI: 1, Port: 8472}},
		{name: "other cidr and mode", given: Network{CIDR: netip.MustParsePrefix("10.10.0.0/16"), Mode: "hostgw"}, want: []string{"cidr", "mode"}},
		{name: "masquerade off", given: Network{IPMasq: &no}, want: []string{"ipMasq"}},
		{name: "subnet length", given: Network{SubnetLen: 26}, want: []string{"subnetLen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.given.Conflicts(&stored)
			if len(got) != len(tt.want) {
				t.Fatalf("conflicts %q, want fields %q", got, tt.want)
			}
			for i, f := range tt.want {
				if !strings.HasPrefix(got[i], f+":") {
					t.Fatalf("conflict %q, want field %s", got[i], f)
				}
			}
		})
	}
}

func TestParseNetwork(t *testing.T) {
	for _, tt := range []struct {
		json string
		ok   bool
	}{
		{`{"name":"n","cidr":"10.244.0.0/16","subnetLen":24,"mode":"vxlan","vni":1,"port":8472}`, true},
		{`{"name":"n","cidr":"10.244.0.0/16","subnetLen":24,"mode":"hostgw"}`, true},
		{`{"name":"n","cidr":"10.244.0.0/16","subnetLen":24,"mode":"vxlan"}`, false},
		{`{"name":"n","subnetLen":24,"mode":"hostgw"}`, false},
		{`{"name":`, false},
	} {
		_, err := ParseNetwork([]byte(tt.json))
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v", tt.json, err)
		}
	}
}

// The conflist netd writes loads with libcni, the way runtimes read it.
func TestNodeConflist(t *testing.T) {
	c := NodeConflist{Network: "pods", Mode: "vxlan", LeaseDir: "/run/berth", StateDir: "/run/berth", IPAMDataDir: "/var/lib/cni/networks"}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni rejects %s: %v", data, err)
	}
	if list.Name != "pods" || list.CNIVersion != "1.0.0" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "berth-vxlan" {
		t.Fatalf("unexpected conflist %s", data)
	}
	if !list.Plugins[0].Network.Capabilities["portMappings"] {
		t.Fatalf("portMappings capability missing: %s", data)
	}
	if got := ConflistPath("/etc/cni/net.d", "pods"); got != filepath.Join("/etc/cni/net.d", "10-berth-pods.conflist") {
		t.Fatalf("conflist path %s", got)
	}
}

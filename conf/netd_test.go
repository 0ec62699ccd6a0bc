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
		{name: "ipv6 as cidr", n: Network{CIDR: netip.MustParsePrefix("fd00::/48")}, field: "cidr"},
		{name: "dual-stack", n: Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")}.WithDefaults()},
		{name: "ipv6-only", n: Network{CIDRv6: netip.MustParsePrefix("fd00:244::/48")}.WithDefaults()},
		{name: "ipv4 as cidrV6", n: Network{CIDRv6: netip.MustParsePrefix("10.0.0.0/8")}, field: "cidrV6"},
		{name: "mapped cidrV6", n: Network{CIDRv6: netip.MustParsePrefix("::ffff:10.0.0.0/104")}, field: "cidrV6"},
		{name: "cidrV6 host bits", n: Network{CIDRv6: netip.MustParsePrefix("fd00::1/64")}, field: "cidrV6"},
		{name: "subnetLenV6 too long", n: Network{SubnetLenV6: 127}, field: "subnetLenV6"},
		{name: "subnetLenV6 larger than network", n: Network{CIDRv6: netip.MustParsePrefix("fd00::/64"), SubnetLenV6: 48}, field: "subnetLenV6"},
		{name: "fewer IPv6 subnets than IPv4", n: Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00::/60")}.WithDefaults(), field: "cidrV6"},
		{name: "ipv6 mtu", n: Network{CIDRv6: netip.MustParsePrefix("fd00::/48"), MTU: 1200}, field: "mtu"},
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
		{`{"name":"n","cidr":"10.244.0.0/16","subnetLen":24,"cidrV6":"fd00:244::/56","subnetLenV6":64,"mode":"hostgw"}`, true},
		{`{"name":"n","cidrV6":"fd00:244::/56","subnetLenV6":64,"mode":"bgp"}`, true},
		{`{"name":"n","cidrV6":"fd00:244::/56","mode":"bgp"}`, false},
		{`{"name":"n","mode":"bgp"}`, false},
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
	// 1.0.0 by default: podman 4 and containerd 1.6/1.7 refuse 1.1.0 results.
	if list.Name != "pods" || list.CNIVersion != "1.0.0" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "berth-vxlan" {
		t.Fatalf("unexpected conflist %s", data)
	}
	if !list.Plugins[0].Network.Capabilities["portMappings"] {
		t.Fatalf("portMappings capability missing: %s", data)
	}
	c.CNIVersion = "1.1.0"
	if data, err := c.Marshal(); err != nil || !strings.Contains(string(data), `"cniVersion": "1.1.0"`) {
		t.Errorf("asked for 1.1.0: %s, %v", data, err)
	}
	c.CNIVersion = "2.0.0"
	if _, err := c.Marshal(); !errors.Is(err, cnierr.ErrIncompatibleVersion) {
		t.Errorf("cniVersion 2.0.0: %v, want refused", err)
	}
	if got := ConflistPath("/etc/cni/net.d", "pods"); got != filepath.Join("/etc/cni/net.d", "10-berth-pods.conflist") {
		t.Fatalf("conflist path %s", got)
	}
}

// A dual-stack network pairs the i-th IPv4 node subnet with the i-th
// IPv6 one; an IPv6-only network counts and numbers IPv6 subnets.
func TestNodeSubnets(t *testing.T) {
	n := Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), CIDRv6: netip.MustParsePrefix("fd00:244::/56")}.WithDefaults()
	for v4, v6 := range map[string]string{"10.244.0.0/24": "fd00:244::/64", "10.244.3.0/24": "fd00:244:0:3::/64", "10.244.255.0/24": "fd00:244:0:ff::/64"} {
		if got, ok := n.PairedV6(netip.MustParsePrefix(v4)); !ok || got.String() != v6 {
			t.Errorf("PairedV6(%s) = %s %v, want %s", v4, got, ok, v6)
		}
	}
	for _, bad := range []string{"10.245.0.0/24", "10.244.3.0/25", "10.244.3.1/24", "fd00:244:0:3::/64"} {
		if got, ok := n.PairedV6(netip.MustParsePrefix(bad)); ok {
			t.Errorf("PairedV6(%s) = %s, want none", bad, got)
		}
	}
	if n.Subnets() != 256 || n.NthSubnet(7).String() != "10.244.7.0/24" || !n.IsNodeSubnet(netip.MustParsePrefix("fd00:244:0:9::/64")) ||
		n.IsNodeSubnet(netip.MustParsePrefix("fd00:244:0:9::/80")) || n.IsNodeSubnet(netip.MustParsePrefix("fd00:245::/64")) {
		t.Errorf("dual-stack subnets")
	}
	v6 := Network{CIDRv6: netip.MustParsePrefix("fd00:244::/48"), SubnetLenV6: 80}.WithDefaults()
	if v6.CIDR.IsValid() || !v6.KeyFamilyV6() || v6.Subnets() != 1<<32 || v6.NthSubnet(1<<32-1).String() != "fd00:244:0:ffff:ffff::/80" {
		t.Errorf("IPv6-only: %+v %d %s", v6, v6.Subnets(), v6.NthSubnet(1<<32-1))
	}
	huge := Network{CIDRv6: netip.MustParsePrefix("fd00::/8"), SubnetLenV6: 120}.WithDefaults()
	if huge.Subnets() != 1<<62 || huge.NthSubnet(1<<62-1).String() != "fd00::3f:ffff:ffff:ffff:ff00/120" {
		t.Errorf("huge: %d %s", huge.Subnets(), huge.NthSubnet(1<<62-1))
	}
	if _, ok := (&Network{CIDR: n.CIDR, SubnetLen: 24}).PairedV6(netip.MustParsePrefix("10.244.3.0/24")); ok {
		t.Error("an IPv4-only network paired an IPv6 subnet")
	}
}

// An IPv4 network joined by a netd given an IPv6 CIDR gains it (that is
// not a conflict); an IPv6 CIDR of its own is kept.
func TestWithIPv6Of(t *testing.T) {
	stored := Network{Name: "n", CIDR: netip.MustParsePrefix("10.244.0.0/16"), Mode: "hostgw"}.WithDefaults()
	given := Network{Name: "n", CIDR: stored.CIDR, CIDRv6: netip.MustParsePrefix("fd00:244::/56")}
	if c := given.Conflicts(&stored); len(c) != 0 {
		t.Errorf("conflicts %v", c)
	}
	got, ok := stored.WithIPv6Of(given)
	if !ok || got.CIDRv6 != given.CIDRv6 || got.SubnetLenV6 != 64 || got.CIDR != stored.CIDR {
		t.Fatalf("added: %+v %v", got, ok)
	}
	other := Network{CIDRv6: netip.MustParsePrefix("fd00:99::/56")}
	if c := other.Conflicts(&got); len(c) != 1 || !strings.HasPrefix(c[0], "cidrV6:") {
		t.Errorf("another IPv6 CIDR: %v", c)
	}
	if _, ok := got.WithIPv6Of(other); ok {
		t.Error("replaced the stored IPv6 CIDR")
	}
	if _, ok := stored.WithIPv6Of(Network{Name: "n"}); ok {
		t.Error("added IPv6 nobody gave")
	}
}

package lease

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func validNode() Node {
	return Node{
		Network:     "vxlan",
		Mode:        ModeVXLAN,
		NetworkCIDR: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:      netip.MustParsePrefix("10.244.3.0/24"),
		MTU:         1450,
		IPMasq:      true,
		NodeName:    "node1",
		NodeIP:      netip.MustParseAddr("192.168.50.1"),
	}
}

// dual makes n a dual-stack lease.
func dual(n *Node) {
	n.NetworkCIDRv6 = netip.MustParsePrefix("fd00:244::/56")
	n.SubnetV6 = netip.MustParsePrefix("fd00:244:0:3::/64")
	n.NodeIPv6 = netip.MustParseAddr("fd00:50::1")
}

// Dual-stack and IPv6-only leases read back as written, with a gateway
// in each subnet.
func TestWriteReadFamilies(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ds := validNode()
	dual(&ds)
	v6 := ds
	v6.NetworkCIDR, v6.Subnet, v6.NodeIP = netip.Prefix{}, netip.Prefix{}, netip.Addr{}
	for name, n := range map[string]Node{"dual-stack": ds, "ipv6-only": v6} {
		t.Run(name, func(t *testing.T) {
			path := Path(t.TempDir(), n.Network)
			if err := Write(path, &n); err != nil {
				t.Fatal(err)
			}
			got, err := Read(path, now)
			if err != nil {
				t.Fatal(err)
			}
			if *got != n {
				t.Fatalf("read %+v, wrote %+v", got, n)
			}
			subnets := got.Subnets()
			last := subnets[len(subnets)-1]
			if last != n.SubnetV6 || Gateway(last) != netip.MustParseAddr("fd00:244:0:3::1") {
				t.Fatalf("subnets %v, IPv6 gateway %s", subnets, Gateway(last))
			}
		})
	}
}

// A plugin from before dual-stack reads the IPv4 part of a dual-stack
// lease file: the fields it knows keep their names and meaning.
func TestDualStackFileKeepsIPv4Fields(t *testing.T) {
	n := validNode()
	dual(&n)
	path := Path(t.TempDir(), n.Network)
	if err := Write(path, &n); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var old struct {
		NetworkCIDR netip.Prefix `json:"networkCIDR"`
		Subnet      netip.Prefix `json:"subnet"`
		NodeIP      netip.Addr   `json:"nodeIP"`
	}
	if err := json.Unmarshal(data, &old); err != nil || old.NetworkCIDR != n.NetworkCIDR || old.Subnet != n.Subnet || old.NodeIP != n.NodeIP {
		t.Fatalf("IPv4 fields as an old reader sees them: %+v (%v)\n%s", old, err, data)
	}
}

func TestWriteRead(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n := validNode()
	n.Expires = now.Add(time.Minute)
	path := Path(dir, n.Network)
	if err := Write(path, &n); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path, now)
	if err != nil {
		t.Fatal(err)
	}
	if *got != n {
		t.Fatalf("read %+v, wrote %+v", got, n)
	}
	if gw := Gateway(got.Subnet); gw != netip.MustParseAddr("10.244.3.1") {
		t.Fatalf("gateway %s, want 10.244.3.1", gw)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestReadErrors(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		mutate func(*Node)
		raw    string // written verbatim instead of the node when set
		want   error
	}{
		{name: "missing", want: ErrMissing},
		{name: "expired", mutate: func(n *Node) { n.Expires = now.Add(-time.Second) }, want: ErrStale},
		{name: "garbage", raw: "{not json", want: ErrInvalid},
		{name: "bad mode", mutate: func(n *Node) { n.Mode = "ipip" }, want: ErrInvalid},
		{name: "subnet outside network", mutate: func(n *Node) { n.Subnet = netip.MustParsePrefix("10.99.0.0/24") }, want: ErrInvalid},
		{name: "subnet larger than network", mutate: func(n *Node) { n.Subnet = netip.MustParsePrefix("10.0.0.0/8") }, want: ErrInvalid},
		{name: "tiny subnet", mutate: func(n *Node) { n.Subnet = netip.MustParsePrefix("10.244.3.0/31") }, want: ErrInvalid},
		{name: "mtu", mutate: func(n *Node) { n.MTU = 100 }, want: ErrInvalid},
		{name: "ipv6 subnet", mutate: func(n *Node) { n.Subnet = netip.MustParsePrefix("fd00::/64") }, want: ErrInvalid},
		{name: "no network", mutate: func(n *Node) { n.NetworkCIDR, n.Subnet = netip.Prefix{}, netip.Prefix{} }, want: ErrInvalid},
		{name: "ipv4 subnet without cidr", mutate: func(n *Node) { n.NetworkCIDR = netip.Prefix{}; dual(n) }, want: ErrInvalid},
		{name: "ipv6 cidr without subnet", mutate: func(n *Node) { dual(n); n.SubnetV6 = netip.Prefix{} }, want: ErrInvalid},
		{name: "ipv4 subnetV6", mutate: func(n *Node) { dual(n); n.SubnetV6 = netip.MustParsePrefix("10.244.3.0/24") }, want: ErrInvalid},
		{name: "ipv4-mapped subnetV6", mutate: func(n *Node) {
			dual(n)
			n.NetworkCIDRv6, n.SubnetV6 = netip.MustParsePrefix("::ffff:0:0/96"), netip.MustParsePrefix("::ffff:10.0.0.0/120")
		}, want: ErrInvalid},
		{name: "subnetV6 outside", mutate: func(n *Node) { dual(n); n.SubnetV6 = netip.MustParsePrefix("fd00:99::/64") }, want: ErrInvalid},
		{name: "tiny subnetV6", mutate: func(n *Node) { dual(n); n.SubnetV6 = netip.MustParsePrefix("fd00:244:0:3::/127") }, want: ErrInvalid},
		{name: "ipv6 below 1280", mutate: func(n *Node) { dual(n); n.MTU = 1200 }, want: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "net.json")
			switch {
			case tt.raw != "":
				os.WriteFile(path, []byte(tt.raw), 0o644)
			case tt.mutate != nil:
				n := validNode()
				tt.mutate(&n)
				if err := Write(path, &n); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Read(path, now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

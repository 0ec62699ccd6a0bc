package lease

import (
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
	if gw := got.Gateway(); gw != netip.MustParseAddr("10.244.3.1") {
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

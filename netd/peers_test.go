package netd

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/berthnet/berth/netd/cluster"
)

// After etcd lost its data, a held lease fills in only for a node that
// has not written its own again, and never over someone else's subnet.
func TestWithHeld(t *testing.T) {
	l := func(subnet, node string) cluster.Lease {
		return cluster.Lease{Subnet: netip.MustParsePrefix(subnet), NodeName: node}
	}
	now := []cluster.Lease{l("10.244.1.0/24", "a"), l("10.244.5.0/24", "newcomer")}
	held := []cluster.Lease{l("10.244.1.0/24", "a"), l("10.244.2.0/24", "b"), l("10.244.5.0/24", "c"), l("10.244.7.0/24", "a")}
	got := withHeld(now, held)
	var names []string
	for _, g := range got {
		names = append(names, g.NodeName+"@"+g.Subnet.String())
	}
	want := "a@10.244.1.0/24 newcomer@10.244.5.0/24 b@10.244.2.0/24"
	if strings.Join(names, " ") != want {
		t.Fatalf("got %v, want %s", names, want)
	}
}

func TestShort(t *testing.T) {
	if s := short(strings.Repeat("x", 1<<20)); len(s) > 250 || !strings.HasSuffix(s, "...(1048576 bytes)") {
		t.Fatalf("short: %d bytes, ends %q", len(s), s[len(s)-20:])
	}
	if short("ok") != "ok" {
		t.Fatal("short changed a short string")
	}
}

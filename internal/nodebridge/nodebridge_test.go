package nodebridge_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/nodebridge"
	"github.com/berthnet/berth/internal/testenv"
)

func mustRun(t *testing.T, n ns.NetNS, name string, args ...string) {
	t.Helper()
	if out, err := testenv.InNS(n, name, args...); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// Release (DEL's last step, and netd's on leave) removes only a bridge
// berth made for that network with nothing plugged in; otherwise it keeps
// the bridge and, when the network no longer uses it, unmarks it.
// Containers names the berth host veths that keep it.
func TestRelease(t *testing.T) {
	node := testenv.NewNS(t)
	peer := testenv.NewNS(t)
	tests := []struct {
		name, alias string
		port        string // a port of the bridge: a berth host veth (bv...) or another link
		containers  []string
		removed     bool
		aliasAfter  string
	}{
		{name: "made by berth, empty", alias: "berth:net1", removed: true},
		{name: "made by berth, a container plugged in", alias: "berth:net1", port: "bv0123456789a", containers: []string{"bv0123456789a"}, aliasAfter: "berth:net1"},
		{name: "made by berth, an uplink enslaved", alias: "berth:net1", port: "uplink0"},
		{name: "adopted", alias: "berth:net1 (adopted)"},
		{name: "another network's", alias: "berth:net2", port: "bv0123456789b", aliasAfter: "berth:net2"},
		{name: "not berth's", alias: "", aliasAfter: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustRun(t, node, "ip", "link", "add", "brt", "type", "bridge")
			defer testenv.InNS(node, "ip", "link", "del", "brt")
			if tt.alias != "" {
				mustRun(t, node, "ip", "link", "set", "brt", "alias", tt.alias)
			}
			if tt.port != "" {
				testenv.Link(t, node, tt.port, "", peer, "p"+tt.port[:4], "")
				mustRun(t, node, "ip", "link", "set", tt.port, "master", "brt")
				defer testenv.InNS(node, "ip", "link", "del", tt.port)
			}
			var containers []string
			var removed bool
			err := node.Do(func(ns.NetNS) error {
				var err error
				if containers, err = nodebridge.Containers("brt", "net1"); err != nil {
					return err
				}
				removed, err = nodebridge.Release("brt", "net1")
				return err
			})
			if err != nil || removed != tt.removed {
				t.Fatalf("Release: removed %v, %v; want removed %v", removed, err, tt.removed)
			}
			if !slices.Equal(containers, tt.containers) {
				t.Errorf("Containers: %q, want %q", containers, tt.containers)
			}
			out, err := testenv.InNS(node, "ip", "-d", "link", "show", "brt")
			if tt.removed != (err != nil) {
				t.Fatalf("bridge after Release: %s", out)
			}
			if !tt.removed && alias(out) != tt.aliasAfter {
				t.Errorf("alias after: %q, want %q", alias(out), tt.aliasAfter)
			}
		})
	}
	// A bridge that is gone is fine (DEL repeated).
	if err := node.Do(func(ns.NetNS) error { _, err := nodebridge.Release("nosuchbr", "net1"); return err }); err != nil {
		t.Errorf("missing bridge: %v", err)
	}
}

func TestOwner(t *testing.T) {
	for _, tc := range []struct {
		alias, network string
		adopted        bool
	}{
		{nodebridge.Mark("pods", false), "pods", false},
		{nodebridge.Mark("pods", true), "pods", true},
		{"berth:pods", "pods", false},
		{"berth:pods (adopted)", "pods", true},
		{"docker0", "", false},
		{"", "", false},
	} {
		if network, adopted := nodebridge.Owner(tc.alias); network != tc.network || adopted != tc.adopted {
			t.Errorf("Owner(%q) = %q, %v; want %q, %v", tc.alias, network, adopted, tc.network, tc.adopted)
		}
	}
}

func alias(ipLinkOutput []byte) string {
	for _, l := range strings.Split(string(ipLinkOutput), "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(l), "alias "); ok {
			return a
		}
	}
	return ""
}

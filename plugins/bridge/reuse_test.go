package bridge_test

import (
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/plugins/bridge"
)

// After a network's last container leaves (podman network rm, netd
// leave, a node switched from vxlan to hostgw), nothing of it may block a
// new network: not the bridge's owner mark, not its gateway address and
// subnet route. Before the fix the bridge stayed marked ("already used by
// berth:old") and a new bridge with the same subnet got a second route,
// behind the stale one, so host-to-container traffic went nowhere.
func TestLastLeaveFreesBridgeAndSubnet(t *testing.T) {
	n := newNode(t)
	steps := []struct{ network, bridge string }{
		{"old", "berth-r"},
		{"other", "berth-s"}, // the same subnet on another bridge
		{"new", "berth-r"},   // the same bridge name, another network
	}
	for _, s := range steps {
		rt := testenv.NewRuntime(t, n.ns, n.conflist(s.network, s.bridge, "10.56.0.0/24", ""))
		c := container(t, "reuse-"+s.network, port(24000, 80, "tcp"))
		res, err := rt.Add(c)
		if err != nil {
			t.Fatalf("network %s on bridge %s: ADD: %v", s.network, s.bridge, err)
		}
		out, _ := testenv.InNS(n.ns, "ip", "-4", "route", "show", "10.56.0.0/24")
		if routes := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; routes != 1 || !strings.Contains(string(out), s.bridge) {
			t.Errorf("network %s: routes to its subnet:\n%s\nwant one, via %s", s.network, out, s.bridge)
		}
		testenv.Serve(t, c.Netns, "0.0.0.0:80")
		if _, err := testenv.Dial(n.ns, ipOf(t, res)+":80"); err != nil {
			t.Errorf("network %s: node to container: %v", s.network, err)
		}
		if src, err := testenv.Dial(n.outside, nodeIP+":24000"); err != nil || src != outsideIP {
			t.Errorf("network %s: published port: %q, %v", s.network, src, err)
		}
		if err := rt.Del(c); err != nil {
			t.Fatalf("network %s: DEL: %v", s.network, err)
		}
		if out, _ := testenv.InNS(n.ns, "ip", "-o", "link", "show", s.bridge); len(out) != 0 && !strings.Contains(string(out), "does not exist") {
			t.Errorf("network %s left its bridge: %s", s.network, out)
		}
	}
}

// ReleaseBridge (DEL's last step, and netd's on leave) removes only a
// bridge berth made for that network with nothing plugged in; otherwise it
// keeps the bridge and, when the network no longer uses it, unmarks it.
func TestReleaseBridge(t *testing.T) {
	n := newNode(t)
	peer := testenv.NewNS(t)
	tests := []struct {
		name, alias string
		port        string // a port of the bridge: a berth host veth (bv...) or another link
		removed     bool
		aliasAfter  string
	}{
		{name: "made by berth, empty", alias: "berth:net1", removed: true},
		{name: "made by berth, a container plugged in", alias: "berth:net1", port: "bv0123456789a", aliasAfter: "berth:net1"},
		{name: "made by berth, an uplink enslaved", alias: "berth:net1", port: "uplink0"},
		{name: "adopted", alias: "berth:net1 (adopted)"},
		{name: "another network's", alias: "berth:net2", aliasAfter: "berth:net2"},
		{name: "not berth's", alias: "", aliasAfter: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustRun(t, n.ns, "ip", "link", "add", "brt", "type", "bridge")
			defer testenv.InNS(n.ns, "ip", "link", "del", "brt")
			if tt.alias != "" {
				mustRun(t, n.ns, "ip", "link", "set", "brt", "alias", tt.alias)
			}
			if tt.port != "" {
				testenv.Link(t, n.ns, tt.port, "", peer, "p"+tt.port[:4], "")
				mustRun(t, n.ns, "ip", "link", "set", tt.port, "master", "brt")
				defer testenv.InNS(n.ns, "ip", "link", "del", tt.port)
			}
			var removed bool
			err := n.ns.Do(func(ns.NetNS) error {
				var err error
				removed, err = bridge.ReleaseBridge("brt", "net1")
				return err
			})
			if err != nil || removed != tt.removed {
				t.Fatalf("ReleaseBridge: removed %v, %v; want removed %v", removed, err, tt.removed)
			}
			out, err := testenv.InNS(n.ns, "ip", "-d", "link", "show", "brt")
			if tt.removed != (err != nil) {
				t.Fatalf("bridge after ReleaseBridge: %s", out)
			}
			if !tt.removed && alias(out) != tt.aliasAfter {
				t.Errorf("alias after: %q, want %q", alias(out), tt.aliasAfter)
			}
		})
	}
	// A bridge that is gone is fine (DEL repeated).
	if err := n.ns.Do(func(ns.NetNS) error { _, err := bridge.ReleaseBridge("nosuchbr", "net1"); return err }); err != nil {
		t.Errorf("missing bridge: %v", err)
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

package attach_test

import (
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/testenv"
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

package netd_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// The conflist and lease file netd writes are all a runtime needs: a
// container on each of two nodes, attached by berth-<mode> through
// libcni, reach each other across nodes with their own source address.
func TestPluginsOnNetdLease(t *testing.T) {
	for _, mode := range []string{"vxlan", "hostgw"} {
		t.Run(mode, func(t *testing.T) { pluginsOnNetdLease(t, mode) })
	}
}

func pluginsOnNetdLease(t *testing.T, mode string) {
	if _, err := os.Stat(filepath.Join(testenv.BinDir(t), "berth-"+mode)); err != nil {
		t.Skipf("berth-%s not built (make build)", mode)
	}
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	c := newCluster(t, tb, []string{startEtcd(t, tb).ClientURL}, "pods", 9472, "--mode", mode)
	c.start(1)
	c.start(2)
	c.converged(1, 1)
	c.converged(2, 1)

	var ips [3]string
	var ctrs [3]*testenv.Attachment
	var rts [3]*testenv.Runtime
	for i := 1; i <= 2; i++ {
		n := tb.Node(i)
		conflist, err := os.ReadFile(conf.ConflistPath(n.CNIConfDir, "pods"))
		if err != nil {
			t.Fatal(err)
		}
		rts[i] = testenv.NewRuntime(t, n.NetNS.NetNS, string(conflist))
		ctrs[i] = &testenv.Attachment{ID: n.Host + "-ctr", Netns: testenv.NewNS(t)}
		res, err := rts[i].Add(ctrs[i])
		if err != nil {
			t.Fatalf("ADD on %s: %v", n.Host, err)
		}
		ips[i] = res.IPs[0].Address.IP.String()
		if subnet := c.lease(i).Subnet; !subnet.Contains(netip.MustParseAddr(ips[i])) {
			t.Fatalf("container on %s got %s, outside the node's subnet %s", n.Host, ips[i], subnet)
		}
	}
	if err := testenv.Ping(ctrs[1].Netns, ips[2]); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ctrs[2].Netns, ips[2]+":8080")
	if seen, err := testenv.Dial(ctrs[1].Netns, ips[2]+":8080"); err != nil || seen != ips[1] {
		t.Fatalf("TCP across nodes: server saw %q (%v), want the client's own address %s", seen, err, ips[1])
	}
	for i := 1; i <= 2; i++ {
		if err := rts[i].Del(ctrs[i]); err != nil {
			t.Errorf("DEL on node%d: %v", i, err)
		}
	}
}

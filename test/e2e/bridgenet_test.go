package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/test/testbed"
)

// bridgeNet is a local berth-bridge network of a test's own, next to
// netd's on a node: a second network for isolation and confinement
// checks, which needs no lease and no netd.
type bridgeNet struct {
	name    string   // the network's, and its conflist's
	bridge  string   // not netd's: each network has a bridge of its own
	subnets []string // one IPAM range set each: v4, v6, or both for dual stack
	// defaultGateway gives the container a default route via the bridge;
	// without it the gateway address is still there (berth-bridge's
	// default), reachable on the subnet only.
	defaultGateway bool
}

// bridgeContainer writes b's conflist into node n's CNI conf dir and
// starts a container called name on it; both go when the test ends.
func bridgeContainer(t *testing.T, n *testbed.Node, b bridgeNet, name string) *container {
	t.Helper()
	path := filepath.Join(n.CNIConfDir, b.name+".conflist")
	// IPAM's data in the node's dir, not berth-ipam's default on the
	// machine (/var/lib/cni/networks), which every test bed would share
	// and none would clean.
	dataDir := filepath.Join(n.IPAMDataDir, b.name)
	if err := os.WriteFile(path, b.conflist(t, dataDir), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered first so that it runs last: runner rm's CNI DEL reads it.
	t.Cleanup(func() { os.Remove(path) })
	r, err := n.Runner()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctr, err := r.Start(ctx, name, "--net", b.name, "--", "sleep", "86400")
	if err != nil {
		t.Fatal(err)
	}
	netns, err := ns.GetNS(ctr.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Close()
		// A test may have removed it (netd leave wants no container).
		if out, err := r.Run(context.Background(), "rm", "-f", name); err != nil && !strings.Contains(fmt.Sprint(err, out), "no such container") {
			t.Errorf("runner rm %s: %v\n%s", name, err, out)
		}
	})
	return &container{Container: ctr, ns: netns}
}

func (b bridgeNet) conflist(t *testing.T, dataDir string) []byte {
	t.Helper()
	ranges := make([][]map[string]string, len(b.subnets))
	for i, s := range b.subnets {
		ranges[i] = []map[string]string{{"subnet": s}}
	}
	ipam := map[string]any{"type": "berth-ipam", "dataDir": dataDir, "ranges": ranges}
	list, err := json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       b.name,
		"plugins": []any{map[string]any{
			"type":             "berth-bridge",
			"bridge":           b.bridge,
			"isDefaultGateway": b.defaultGateway,
			"ipam":             ipam,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

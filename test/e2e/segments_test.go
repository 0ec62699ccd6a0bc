package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/test/testbed"
)

// Nodes 1 and 2 share an L2 segment, node 3 is behind the router.
// hostgw connects the two neighbours and reports node 3 as unreachable
// (status and metric); vxlan, and vxlan with direct routing, connect
// containers on all three nodes across the router.
//
// Each mode gets its own test bed: netd's conflists all name the bridge
// berth0, so two networks' containers cannot share a node.
func TestSegments(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		// nodes get a container each; all of them must connect.
		nodes []int
		// unreachable: the peers each node must report it cannot connect.
		unreachable map[int][]string
	}{
		{"hostgw", []string{"--mode", "hostgw"}, []int{1, 2},
			map[int][]string{1: {"node3"}, 2: {"node3"}, 3: {"node1", "node2"}}},
		{"vxlan", []string{"--mode", "vxlan"}, []int{1, 2, 3}, nil},
		{"vxlan direct routing", []string{"--mode", "vxlan", "--direct-routing"}, []int{1, 2, 3}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			tb := testbed.ForTest(t, testbed.Options{Nodes: 3, Segment2: []int{3}})
			etcd, err := tb.StartEtcd(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, Args: tc.args,
				EBPF: testenv.Datapath() == "ebpf"}, 1, 2, 3)
			for i := 1; i <= 3; i++ {
				reportsUnreachable(t, c.netd[i], tc.unreachable[i])
			}
			var ctrs []*container
			for _, i := range tc.nodes {
				ctrs = append(ctrs, c.run(i, fmt.Sprintf("c%d", i)))
			}
			matrix(t, ctrs, 7000)
		})
	}
}

// reportsUnreachable checks that netd reports exactly the peers names as
// not connectable, in its status (saying why) and its metrics. The status
// is computed when asked, the metric by netd's last reconcile pass, which
// may not have run yet since the last peer appeared: both get a moment.
func reportsUnreachable(t *testing.T, d *testbed.Netd, names []string) {
	t.Helper()
	ctx := context.Background()
	err := eventually(10*time.Second, func() error {
		var st netd.Status
		if err := d.Status(ctx, &st); err != nil {
			return err
		}
		var got []string
		for _, p := range st.Peers {
			if p.Error != "" {
				got = append(got, p.Name)
				if !strings.Contains(p.Error, "not on this node's L2 segment") {
					return fmt.Errorf("about %s: %q does not say why", p.Name, p.Error)
				}
			}
		}
		if slices.Sort(got); !slices.Equal(got, names) {
			return fmt.Errorf("reports %v as unreachable, want %v", got, names)
		}
		m, err := d.Metrics(ctx)
		if want := fmt.Sprintf(`berth_netd_peer_errors{network=%q} %d`, d.Opts.Network, len(names)); !strings.Contains(m, want) {
			return fmt.Errorf("metrics lack %q (%v)", want, err)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v", d.Node.Host, err)
	}
}

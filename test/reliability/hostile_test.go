package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	bcluster "github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/test/testbed"
)

// A misbehaving node (or anyone with write access to etcd) puts lease
// keys that would break or hijack traffic if netd acted on them. Every
// netd ignores them with a log line and a metric, keeps running, keeps
// its kernel exactly as it was, and writes its own key back when it was
// overwritten. A node joining meanwhile starts and gets a clean subnet.
func TestHostileLeases(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 4})
	etcd, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c := newCluster(t, tb, []string{etcd.ClientURL})
	up := []int{1, 2, 3}
	for _, i := range up {
		c.start(i)
	}
	var status [4]string
	for _, i := range up {
		st := c.converged(i, without(up, i)...)
		status[i] = st.Subnet
	}
	subnets := c.checkLeases(cli, up)
	gws := map[int]netip.Addr{}
	before := map[int]kernel{}
	defaults := map[int]string{}
	for _, i := range up {
		gws[i] = gateway(t, tb.Node(i), subnets[i])
		before[i] = readKernel(t, tb.Node(i))
		defaults[i] = defaultRoute(t, tb.Node(i))
	}
	fullMesh(t, tb, gws)
	macs := map[string]string{} // node name -> VTEP MAC
	for _, i := range []int{1, 2} {
		st, err := c.status(i)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Peers {
			macs[p.Name] = p.VTEPMAC
		}
	}
	mac2 := macs["node2"]

	evil := func(name string) string {
		b, _ := json.Marshal(bcluster.Lease{NodeName: name, NodeIP: netip.MustParseAddr("192.168.50.66"), Mode: "vxlan", VTEPMAC: bcluster.MAC{2, 0x66, 0x66, 0x66, 0x66, 0x66}, VNI: 1})
		return string(b)
	}
	key := func(subnet string) string {
		return "/berth/v1/networks/pods/leases/" + strings.Replace(subnet, "/", "-", 1)
	}
	overlap := netip.PrefixFrom(subnets[2].Addr(), 25).String()
	// Leases are random: the hostile keys take /24s no node holds, or
	// one would overwrite a real lease and test something else.
	var free []string
	for third := 200; len(free) < 5; third++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(third), 0}), 24)
		held := false
		for _, s := range subnets {
			held = held || s == p
		}
		if !held {
			free = append(free, p.String())
		}
	}
	hostile := []struct {
		what, key, value, why string
	}{
		{"malformed JSON", key(free[0]), `{"nodeName": "evil", "nodeIP": `, "not a lease record"},
		{"not a record", key(free[1]), `["` + free[1] + `"]`, "not a lease record"},
		{"subnet outside the cluster CIDR", key("10.99.0.0/24"), evil("evil-outside"), "outside the network's CIDR"},
		{"default route", key("0.0.0.0/0"), evil("evil-default"), "outside the network's CIDR"},
		{"the whole cluster CIDR", key("10.244.0.0/16"), evil("evil-cidr"), "not a /24 node subnet"},
		{"overlapping node2's subnet", key(overlap), evil("evil-overlap"), "not a /24 node subnet"},
		{"node2's VTEP MAC at another IP", key(free[2]),
			fmt.Sprintf(`{"nodeName":"evil-mac","nodeIP":"192.168.50.66","mode":"vxlan","vtepMAC":%q,"vni":1}`, mac2), "VTEP MAC"},
		{"node IP inside the cluster CIDR", key(free[3]),
			fmt.Sprintf(`{"nodeName":"evil-loop","nodeIP":%q,"mode":"vxlan","vtepMAC":"02:66:66:66:66:67","vni":1}`, subnets[3].Addr().Next()), "would loop"},
		{"huge value (1 MiB)", key(free[4]), `{"nodeName":"` + strings.Repeat("e", 1<<20) + `"}`, "more than the 4096"},
		{"key that names no subnet", "/berth/v1/networks/pods/leases/" + strings.Repeat("junk", 64), "{}", "does not name a subnet"},
	}
	ctx := context.Background()
	for _, h := range hostile {
		if _, err := cli.Put(ctx, h.key, h.value); err != nil {
			t.Fatalf("%s: %v", h.what, err)
		}
	}
	// This node's own subnet, taken over by another node IP.
	self1 := key(subnets[1].String())
	hijack := fmt.Sprintf(`{"nodeName":"node1","nodeIP":"192.168.50.66","mode":"vxlan","vtepMAC":%q,"vni":1}`, macs["node1"])
	if _, err := cli.Put(ctx, self1, hijack); err != nil {
		t.Fatal(err)
	}

	// Every netd: still running, each hostile key rejected (logged,
	// counted, in /status), its own key written back, the kernel as
	// it was.
	for _, i := range up {
		eventually(t, fmt.Sprintf("node%d to reject every hostile key", i), 30*time.Second, func() error {
			if p := c.proc(i); p.Exited() {
				t.Fatalf("netd on node%d exited: %v\n%s", i, p.Wait(ctx), tail(p.Log(), 30))
			}
			st, err := c.status(i)
			if err != nil {
				return err
			}
			if len(st.Rejected) != len(hostile) {
				return fmt.Errorf("%d rejected, want %d: %+v", len(st.Rejected), len(hostile), st.Rejected)
			}
			if v, err := c.metric(i, "leases_rejected"); err != nil || v != float64(len(hostile)) {
				return fmt.Errorf("berth_netd_leases_rejected %v (%v)", v, err)
			}
			return nil
		})
		log := c.proc(i).Log()
		for _, h := range hostile {
			if !strings.Contains(log, h.why) {
				t.Errorf("node%d logged nothing saying %q for %s", i, h.why, h.what)
			}
		}
		if strings.Contains(log, strings.Repeat("e", 1000)) {
			t.Errorf("node%d logged the huge value", i)
		}
		if n, err := c.metric(i, "lease_rejections_total"); err != nil || n < float64(len(hostile)) {
			t.Errorf("node%d: berth_netd_lease_rejections_total %v (%v)", i, n, err)
		}
	}
	eventually(t, "node1 to write its key back", 30*time.Second, func() error {
		resp, err := cli.Get(ctx, self1)
		if err != nil || len(resp.Kvs) != 1 {
			return fmt.Errorf("%v %v", resp, err)
		}
		var r bcluster.Lease
		json.Unmarshal(resp.Kvs[0].Value, &r)
		if r.NodeIP != tb.Node(1).IP || resp.Kvs[0].Lease == int64(clientv3.NoLease) {
			return fmt.Errorf("key says %+v, lease %x", r, resp.Kvs[0].Lease)
		}
		return nil
	})
	if n, _ := c.metric(1, "lease_reclaims_total"); n < 1 {
		t.Errorf("node1: berth_netd_lease_reclaims_total %v", n)
	}
	if !strings.Contains(c.proc(1).Log(), "rewritten by another writer") {
		t.Error("node1 did not log that its key was rewritten")
	}
	for _, i := range up {
		eventually(t, fmt.Sprintf("node%d's kernel to be as before", i), 30*time.Second, func() error {
			if k := readKernel(t, tb.Node(i)); k.String() != before[i].String() {
				return fmt.Errorf("\n have %s\n want %s", k, before[i])
			}
			return nil
		})
		if d := defaultRoute(t, tb.Node(i)); d != defaults[i] {
			t.Errorf("node%d's default route changed: %q, was %q", i, d, defaults[i])
		}
		if st, _ := c.status(i); st.Subnet != status[i] {
			t.Errorf("node%d now holds %s, had %s", i, st.Subnet, status[i])
		}
	}
	fullMesh(t, tb, gws)

	// A node joining now starts (one unreadable key used to stop every
	// netd at its first List) and gets none of the hostile subnets.
	l4 := c.start(4)
	for _, h := range hostile {
		if strings.HasSuffix(h.key, strings.Replace(l4.Subnet.String(), "/", "-", 1)) {
			t.Errorf("node4 got %s, a subnet a hostile key names", l4.Subnet)
		}
	}
	up = append(up, 4)
	for _, i := range up {
		c.converged(i, without(up, i)...)
	}

	// The hostile keys removed: nothing rejected any more.
	for _, h := range hostile {
		if _, err := cli.Delete(ctx, h.key); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range up {
		eventually(t, fmt.Sprintf("node%d to clear its rejections", i), 30*time.Second, func() error {
			if v, err := c.metric(i, "leases_rejected"); err != nil || v != 0 {
				return fmt.Errorf("berth_netd_leases_rejected %v (%v)", v, err)
			}
			return nil
		})
		if st := c.converged(i, without(up, i)...); !st.Healthy() {
			t.Errorf("node%d unhealthy: %+v", i, st)
		}
	}
	c.checkLeases(cli, up)
	c.checkKernels(cli, up)
	report(t, "%d hostile keys (+ node1's own key rewritten with another node IP) against %d nodes: %d/%d rejected with a log line and a metric on every node, 0 crashes, 0 routes changed, node1's key written back, a node joining meanwhile leased a clean subnet",
		len(hostile), len(up)-1, len(hostile), len(hostile))
}

// defaultRoute is node n's default route as `ip route` shows it.
func defaultRoute(t *testing.T, n *testbed.Node) string {
	t.Helper()
	out, err := n.Run(context.Background(), "ip", "route", "show", "default")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

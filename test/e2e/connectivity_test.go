package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// outsideIP is a server on the underlay outside the cluster.
var outsideIP = netip.MustParseAddr("192.168.50.200")

// webCmd serves "hello from <hostname>" on port 80 with busybox httpd.
var webCmd = []string{"--", "sh", "-c",
	`mkdir -p /tmp/www && echo "hello from $HOSTNAME" >/tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www`}

// Three nodes with two containers each, in vxlan and in hostgw mode:
// every container reaches every other one (ICMP and TCP) with its own
// source address, reaches a server outside the cluster masqueraded to
// its node's address, and full-size packets cross at the advertised MTU;
// a netd killed and restarted drops no packet; a published port answers
// on the node's underlay address.
func TestConnectivity(t *testing.T) {
	for _, mode := range []string{"vxlan", "hostgw"} {
		t.Run(mode, func(t *testing.T) { connectivity(t, mode) })
	}
}

func connectivity(t *testing.T, mode string) {
	ctx := context.Background()
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3})
	outside, err := tb.AddHost("outside", outsideIP)
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := startNetwork(t, tb, testbed.NetdOptions{Network: "pods", Etcd: []string{etcd.ClientURL}, Args: []string{"--mode", mode},
		EBPF: testenv.Datapath() == "ebpf"}, 1, 2, 3)

	var ctrs []*container
	for i := 1; i <= 3; i++ {
		for _, s := range []string{"a", "b"} {
			name := fmt.Sprintf("n%d%s", i, s)
			if i == 1 && s == "a" {
				// The web server of the published port test.
				ctrs = append(ctrs, c.run(i, name, append([]string{"-p", "8080:80"}, webCmd...)...))
				continue
			}
			ctrs = append(ctrs, c.run(i, name))
		}
	}
	for _, ctr := range ctrs {
		t.Logf("%s: %s", ctr, ctr.IP)
	}

	matrix(t, ctrs, 7000)

	t.Run("leaving the cluster is masqueraded", func(t *testing.T) {
		testenv.Serve(t, outside.NetNS, outsideIP.String()+":8080")
		for _, src := range ctrs {
			seen, err := src.dial(outsideIP.String() + ":8080")
			if err != nil || seen != src.Node.IP.String() {
				t.Errorf("%s -> outside: server saw %q (%v), want its node's address %s", src, seen, err, src.Node.IP)
			}
		}
	})

	t.Run("mtu", func(t *testing.T) {
		underlay := mtu(t, tb.Node(1).NetNS.NetNS, "eth0")
		want := underlay
		if mode == "vxlan" {
			want = underlay - 50
		}
		l, err := c.netd[1].Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if l.MTU != want {
			t.Errorf("lease MTU %d, want %d (underlay %d)", l.MTU, want, underlay)
		}
		for _, ctr := range ctrs {
			if got := mtu(t, ctr.ns, "eth0"); got != want {
				t.Errorf("%s: eth0 MTU %d, want %d", ctr, got, want)
			}
		}
		src, dst := ctrs[0], ctrs[2] // node1 -> node2
		frags := fragCreates(t, src.Node)
		// 20 bytes IP + 8 bytes ICMP header: the payload of a full-size packet.
		full := strconv.Itoa(want - 28)
		if out, err := src.in("ping", "-n", "-M", "do", "-c", "2", "-W", "3", "-s", full, dst.IP.String()); err != nil {
			t.Errorf("full-size packet (%d bytes, DF) %s -> %s: %v\n%s", want, src, dst, err, out)
		}
		if got := fragCreates(t, src.Node); got != frags {
			t.Errorf("%s fragmented %d packets on the underlay to carry full-size ones", src.Node.Host, got-frags)
		}
		over := strconv.Itoa(want - 27)
		out, err := src.in("ping", "-n", "-M", "do", "-c", "1", "-W", "3", "-s", over, dst.IP.String())
		if err == nil || !(strings.Contains(out, "message too long") || strings.Contains(out, "Frag needed")) {
			t.Errorf("one byte over the MTU %s -> %s: want \"message too long\" or \"Frag needed\", got %v\n%s", src, dst, err, out)
		}
		// TCP fills packets to the MSS; a bulk transfer across nodes
		// stalls if anything on the path is smaller than advertised.
		echoCount(t, dst.ns, dst.IP.String()+":7001")
		const size = 4 << 20
		if got, err := send(src.ns, dst.IP.String()+":7001", size); err != nil || got != strconv.Itoa(size) {
			t.Errorf("bulk TCP %s -> %s: server read %q of %d bytes (%v)", src, dst, got, size, err)
		}
	})

	t.Run("netd kill -9 and restart loses no packet", func(t *testing.T) {
		src, dst := ctrs[0], ctrs[2] // node1 -> node2
		before, err := c.netd[2].Lease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan string, 1)
		go func() {
			out, _ := src.in("ping", "-n", "-q", "-i", "0.05", "-c", "80", "-W", "1", dst.IP.String())
			done <- out
		}()
		time.Sleep(300 * time.Millisecond)
		if err := c.netd[2].Kill(); err != nil {
			t.Fatal(err)
		}
		if err := c.netd[2].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.netd[2].WaitConverged(ctx, 2); err != nil {
			t.Fatal(err)
		}
		after, err := c.netd[2].Lease(ctx)
		if err != nil || after.Subnet != before.Subnet {
			t.Errorf("node2 came back with %v (%v), had %s", after, err, before.Subnet)
		}
		out := <-done
		if !strings.Contains(out, "80 packets transmitted, 80 received") {
			t.Errorf("packets lost while node2's netd restarted:\n%s", out)
		}
	})

	t.Run("published port", func(t *testing.T) {
		web := ctrs[0]
		url := "http://" + web.Node.IP.String() + ":8080/"
		for _, client := range []*testbed.NetNS{tb.Node(2).NetNS, outside, web.Node.NetNS} {
			var body []byte
			err := eventually(15*time.Second, func() error {
				var err error
				body, err = client.Get(ctx, url)
				return err
			})
			if err != nil || strings.TrimSpace(string(body)) != "hello from "+web.Name {
				t.Errorf("GET %s from %s: %q %v", url, client.Name, body, err)
			}
		}
	})
}

// fragCreates is the node's count of IPv4 fragments it created.
func fragCreates(t *testing.T, n *testbed.Node) int {
	t.Helper()
	out, err := n.Run(context.Background(), "cat", "/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	var names, values []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Ip: ") {
			if names == nil {
				names = strings.Fields(l)
			} else {
				values = strings.Fields(l)
			}
		}
	}
	for i, name := range names {
		if name == "FragCreates" && i < len(values) {
			v, _ := strconv.Atoi(values[i])
			return v
		}
	}
	t.Fatalf("no Ip FragCreates in /proc/net/snmp of %s", n.Host)
	return 0
}

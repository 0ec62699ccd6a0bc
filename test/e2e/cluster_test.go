// Package e2e_test runs berth end to end: a test bed of node namespaces
// with the real etcd server, one netd per node and network, and
// containers started by the runner on each node through the conflist
// netd wrote and the real CNI plugins, talking to each other across nodes.
package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// cluster is one network on some nodes of a test bed: a netd per node,
// and the containers started on it.
type cluster struct {
	t    *testing.T
	tb   *testbed.Testbed
	net  string
	netd map[int]*testbed.Netd // by node index
}

// startNetwork starts netd for the network on each of the nodes and
// waits until every one has a lease and sees the others in its kernel.
func startNetwork(t *testing.T, tb *testbed.Testbed, opts testbed.NetdOptions, nodes ...int) *cluster {
	t.Helper()
	c := &cluster{t: t, tb: tb, net: opts.Network, netd: map[int]*testbed.Netd{}}
	ctx := context.Background()
	for _, i := range nodes {
		d, err := tb.StartNetd(ctx, tb.Node(i), opts)
		if err != nil {
			t.Fatal(err)
		}
		c.netd[i] = d
	}
	for _, i := range nodes {
		if err := c.netd[i].WaitConverged(ctx, len(nodes)-1); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// run starts a detached container on node i attached to the network;
// args are further `runner run` flags, "--" and the command (default: a
// long sleep).
func (c *cluster) run(i int, name string, args ...string) *container {
	c.t.Helper()
	ctr, l := c.start(i, name, args...)
	if !l.Subnet.Contains(ctr.IP) {
		c.t.Fatalf("container %s on %s got %v, outside the node's subnet %s", name, ctr.Node.Host, ctr.IP, l.Subnet)
	}
	return ctr
}

// start starts the container of run and run6 and returns it with the
// node's lease, for the caller to check its addresses against.
func (c *cluster) start(i int, name string, args ...string) (*container, *lease.Node) {
	c.t.Helper()
	r, err := c.tb.Node(i).Runner()
	if err != nil {
		c.t.Fatal(err)
	}
	if len(args) == 0 {
		args = []string{"--", "sleep", "86400"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctr, err := r.Start(ctx, name, append([]string{"--net", c.net}, args...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	l, err := c.netd[i].Lease(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	netns, err := ns.GetNS(ctr.NetNSPath())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { netns.Close() })
	return &container{Container: ctr, ns: netns}, l
}

// container is a runner container with its network namespace open, so
// that the test can serve and dial from inside it.
type container struct {
	*testbed.Container
	ns ns.NetNS
}

func (c *container) String() string { return c.Name + "@" + c.Node.Host }

// ping sends one echo request from inside the container (busybox ping,
// through `runner exec`).
func (c *container) ping(ctx context.Context, dst netip.Addr) error {
	_, err := c.Exec(ctx, "ping", "-c", "1", "-W", "3", dst.String())
	return err
}

// in runs a host tool (iputils ping, ip) in the container's network
// namespace only.
func (c *container) in(name string, args ...string) (string, error) {
	out, err := testenv.InNS(c.ns, name, args...)
	return string(out), err
}

// serve answers TCP connections on the container's address with the
// peer's address, as testenv.Serve.
func (c *container) serve(t *testing.T, port int) {
	testenv.Serve(t, c.ns, fmt.Sprintf("%s:%d", c.IP, port))
}

// dial connects from the container to addr (served by serve) and returns
// the source address the server saw.
func (c *container) dial(addr string) (string, error) {
	return testenv.Dial(c.ns, addr)
}

// matrix checks that every container reaches every other one: ICMP from
// inside the container, and TCP, where the server must see the client's
// own address (no NAT inside the cluster network).
func matrix(t *testing.T, ctrs []*container, port int) {
	ctx := context.Background()
	t.Run("icmp matrix", func(t *testing.T) {
		for _, src := range ctrs {
			for _, dst := range ctrs {
				if src != dst {
					if err := src.ping(ctx, dst.IP); err != nil {
						t.Errorf("%s -> %s: %v", src, dst, err)
					}
				}
			}
		}
	})
	t.Run("tcp matrix keeps source addresses", func(t *testing.T) {
		for _, dst := range ctrs {
			dst.serve(t, port)
		}
		for _, src := range ctrs {
			for _, dst := range ctrs {
				if src == dst {
					continue
				}
				seen, err := src.dial(fmt.Sprintf("%s:%d", dst.IP, port))
				if err != nil || seen != src.IP.String() {
					t.Errorf("%s -> %s: server saw %q (%v), want %s", src, dst, seen, err, src.IP)
				}
			}
		}
	})
}

// echoCount serves on addr in netns n: it reads each connection to its
// end and answers with the number of bytes read.
func echoCount(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(30 * time.Second))
				n, _ := io.Copy(io.Discard, conn)
				fmt.Fprintf(conn, "%d\n", n)
			}()
		}
	}()
}

// send writes size bytes to an echoCount server from netns n and returns
// what the server counted.
func send(n ns.NetNS, addr string, size int) (string, error) {
	var conn net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial("tcp4", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(make([]byte, size)); err != nil {
		return "", err
	}
	conn.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// eventually retries f every 200ms until it succeeds or timeout passes;
// a fresh route or neighbour may need a moment, but never long.
func eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mtu is the MTU of iface in netns n.
func mtu(t *testing.T, n ns.NetNS, iface string) int {
	t.Helper()
	var v int
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(iface)
		if err == nil {
			v = l.Attrs().MTU
		}
		return err
	})
	if err != nil {
		t.Fatalf("MTU of %s: %v", iface, err)
	}
	return v
}

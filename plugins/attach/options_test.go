package attach_test

import (
	"net"
	"time"

	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/testenv"
)

func TestForceAddress(t *testing.T) {
	n := newNode(t)
	mustRun(t, n.ns, "ip", "link", "add", "berth0", "type", "bridge")
	mustRun(t, n.ns, "ip", "addr", "add", "10.91.0.200/24", "dev", "berth0")
	mustRun(t, n.ns, "ip", "link", "set", "berth0", "up")
	rt := testenv.NewRuntime(t, n.ns, n.conflist("force", "berth0", "10.91.0.0/24", ""))
	before := n.snapshot(t)
	_, err := rt.Add(container(t, "f1"))
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != 103 || !strings.Contains(err.Error(), "forceAddress") {
		t.Fatalf("ADD onto a bridge with another address of the subnet: %v, want 103 naming forceAddress", err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("failed ADD left:\n%s\nvs\n%s", after, before)
	}
	forced := testenv.NewRuntime(t, n.ns, n.conflist("force", "berth0", "10.91.0.0/24", `"forceAddress":true,`))
	c := container(t, "f2")
	if _, err := forced.Add(c); err != nil {
		t.Fatalf("ADD with forceAddress: %v", err)
	}
	out, _ := testenv.InNS(n.ns, "ip", "-4", "-br", "addr", "show", "berth0")
	if strings.Contains(string(out), "10.91.0.200") || !strings.Contains(string(out), "10.91.0.1/24") {
		t.Errorf("bridge addresses after forceAddress: %s", out)
	}
	forced.Del(c)
}

// A client that sent UDP to a host port before it was published keeps its
// conntrack entry (to the node itself) unless ADD flushes it.
func TestUDPConntrackFlushedOnPublish(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("udp", "berth0", "10.92.0.0/24", ""))
	// A resident container: the network's NAT rules, and with them
	// conntrack in the node namespace, exist before the client sends.
	resident := container(t, "resident")
	if _, err := rt.Add(resident); err != nil {
		t.Fatal(err)
	}
	defer rt.Del(resident)
	var client *net.UDPConn
	err := n.outside.Do(func(ns.NetNS) error {
		var err error
		client, err = net.DialUDP("udp4", &net.UDPAddr{Port: 40000}, &net.UDPAddr{IP: net.ParseIP(nodeIP), Port: 5353})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.Write([]byte("before")) // nothing listens on the node: an entry towards the node is created

	c := container(t, "u1", port(5353, 53, "udp"))
	if _, err := rt.Add(c); err != nil {
		t.Fatal(err)
	}
	defer rt.Del(c)
	var server *net.UDPConn
	c.Netns.Do(func(ns.NetNS) error {
		server, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 53})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	// The first write may only return the ICMP error of "before".
	client.Write([]byte("after"))
	client.Write([]byte("after"))
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	if m, _, err := server.ReadFromUDP(buf); err != nil || string(buf[:m]) != "after" {
		t.Errorf("datagram from the same client port after publishing: %q, %v", buf[:m], err)
	}
}

// A container sending with a source address that is not its own has the
// packet dropped at the node: it never reaches the outside world.
func TestSpoofedSourceDropped(t *testing.T) {
	n := newNode(t)
	// A node whose distribution leaves reverse-path filtering off.
	for _, k := range []string{"all", "default"} {
		mustRun(t, n.ns, "sysctl", "-qw", "net.ipv4.conf."+k+".rp_filter=0")
	}
	rt := testenv.NewRuntime(t, n.ns, n.conflist("spoof", "berth0", "10.93.0.0/24", ""))
	c := container(t, "s1")
	if _, err := rt.Add(c); err != nil {
		t.Fatal(err)
	}
	defer rt.Del(c)
	// The outside world counts what arrives from each source.
	for _, src := range []string{"192.0.2.2", "10.66.6.6"} {
		mustRun(t, n.outside, "iptables", "-A", "INPUT", "-s", src, "-p", "icmp", "-j", "ACCEPT")
	}
	// The container knows the gateway's MAC first: an ARP request from
	// the spoofed address goes unanswered (rp_filter), and the control
	// ping would wait behind it.
	if err := testenv.Ping(c.Netns, "10.93.0.1"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, c.Netns, "ip", "addr", "add", "10.66.6.6/32", "dev", "eth0")
	testenv.InNS(c.Netns, "ping", "-c", "2", "-W", "1", "-I", "10.66.6.6", outsideIP)
	if err := testenv.Ping(c.Netns, outsideIP); err != nil {
		t.Fatalf("control: the container's own address does get out: %v", err)
	}
	out, _ := testenv.InNS(n.outside, "iptables", "-L", "INPUT", "-v", "-x", "-n")
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 7 && f[7] == "10.66.6.6" && f[0] != "0" {
			t.Errorf("spoofed packets reached the outside:\n%s", out)
		}
		if len(f) > 7 && f[7] == "192.0.2.2" && f[0] == "0" {
			t.Errorf("control packets (masqueraded to the node) did not arrive:\n%s", out)
		}
	}
}

package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Serve listens on addr (e.g. "0.0.0.0:80"; "[::]:80" is both families)
// inside netns n and answers every TCP connection with the address it
// came from, so that a test sees whether and how the traffic was NATed.
// It stops when t ends.
func Serve(t testing.TB, n ns.NetNS, addr string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	if host == "::" {
		serve(t, n, "tcp4", net.JoinHostPort("0.0.0.0", port))
	}
	serve(t, n, tcpFamily(host), addr)
}

// tcpFamily is "tcp4" or "tcp6" for host: never plain "tcp", for which Go
// decides once per process whether IPv6 works, in whichever namespace it
// first asks (a container's, with lo down, says no).
func tcpFamily(host string) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() && !a.Is4In6() {
		return "tcp6"
	}
	return "tcp4"
}

func serve(t testing.TB, n ns.NetNS, network, addr string) {
	t.Helper()
	l, err := listen(n, network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

// Listen is Serve for a caller that cannot fail the test where it runs (a
// goroutine) or ends the server itself: closing the listener stops it.
// addr is of one family ("0.0.0.0:80", "[::]:80" for IPv6 only).
func Listen(n ns.NetNS, addr string) (net.Listener, error) {
	host, _, _ := net.SplitHostPort(addr)
	return listen(n, tcpFamily(host), addr)
}

func listen(n ns.NetNS, network, addr string) (net.Listener, error) {
	var l net.Listener
	// A socket belongs to the namespace it was created in, whichever
	// thread later accepts on it.
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ip, _ := netip.AddrFromSlice(c.RemoteAddr().(*net.TCPAddr).IP)
			fmt.Fprintf(c, "%s\n", ip.Unmap())
			c.Close()
		}
	}()
	return l, nil
}

// Dial connects from netns n to addr ("10.0.0.2:80", "[fd00::2]:80") and
// returns what a Serve server answered: the source address it saw.
func Dial(n ns.NetNS, addr string) (string, error) {
	host, _, _ := net.SplitHostPort(addr)
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err = d.DialContext(context.Background(), tcpFamily(host), addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// Ping sends one ICMP echo (or ICMPv6, for an IPv6 addr) from n to addr.
func Ping(n ns.NetNS, addr string) error {
	out, err := InNS(n, "ping", "-c", "1", "-W", "2", addr)
	if err != nil {
		return fmt.Errorf("ping %s: %v: %s", addr, err, out)
	}
	return nil
}

// Link connects netns a and b with a veth pair named ifA/ifB and gives
// them the addresses cidrA/cidrB ("192.0.2.2/24"), both up. Deleting a
// namespace removes the pair. More addresses: AddAddr.
func Link(t testing.TB, a ns.NetNS, ifA, cidrA string, b ns.NetNS, ifB, cidrB string) {
	t.Helper()
	err := a.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = ifA
		// The peer gets a temporary name: ifB may equal ifA.
		tmp := fmt.Sprintf("tmp%d", time.Now().UnixNano()%1e9)
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: tmp}); err != nil {
			return fmt.Errorf("creating veth %s: %w", ifA, err)
		}
		peer, err := netlink.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(b.Fd())); err != nil {
			return err
		}
		if err := addrUp(ifA, cidrA); err != nil {
			return err
		}
		return b.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(tmp)
			if err == nil {
				err = netlink.LinkSetName(l, ifB)
			}
			if err != nil {
				return err
			}
			return addrUp(ifB, cidrB)
		})
	})
	if err != nil {
		t.Fatalf("linking namespaces: %v", err)
	}
}

// AddAddr gives ifName in netns n the address cidr ("2001:db8::2/64");
// an IPv6 one skips duplicate address detection, so it works at once.
func AddAddr(t testing.TB, n ns.NetNS, ifName, cidr string) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return addrUp(ifName, cidr) }); err != nil {
		t.Fatalf("adding %s to %s: %v", cidr, ifName, err)
	}
}

func addrUp(ifName, cidr string) error {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		return err
	}
	if cidr != "" {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		if a.IP.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	return errors.Join(err, netlink.LinkSetUp(l))
}

// Package backendtest sets up what backend tests share: a fresh network
// namespace with an underlay interface, as on a node.
package backendtest

import (
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/netd/backend"
)

// Node creates a namespace whose eth0 (one end of a veth pair, MTU 1500)
// has 192.168.50.1/24 and fd00:50::1/64 with default routes via
// 192.168.50.254 and fd00:50::254, and returns it with the backend.Node
// for network n. Use it inside ns.Do.
func Node(t *testing.T, n conf.Network) (ns.NetNS, backend.Node) {
	t.Helper()
	netns := testenv.NewNS(t)
	var node backend.Node
	err := netns.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "eth0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0-peer"}); err != nil {
			return err
		}
		for _, name := range []string{"eth0", "eth0-peer", "lo"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("192.168.50.1/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			return err
		}
		addr6, _ := netlink.ParseAddr("fd00:50::1/64")
		addr6.Flags = unix.IFA_F_NODAD // usable at once
		if err := netlink.AddrAdd(link, addr6); err != nil {
			return err
		}
		for _, gw := range []string{"192.168.50.254", "fd00:50::254"} {
			if err := netlink.RouteAdd(&netlink.Route{Gw: netip.MustParseAddr(gw).AsSlice(), LinkIndex: link.Attrs().Index}); err != nil {
				return err
			}
		}
		n := n.WithDefaults()
		node = backend.Node{Name: "node1", IP: netip.MustParseAddr("192.168.50.1"), IPv6: netip.MustParseAddr("fd00:50::1"), Link: link, Network: &n}
		return nil
	})
	if err != nil {
		t.Fatalf("setting up the node namespace: %v", err)
	}
	return netns, node
}

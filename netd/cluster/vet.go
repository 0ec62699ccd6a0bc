package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
)

// maxNodeNameLen is a DNS name's limit, as for Kubernetes node names.
const maxNodeNameLen = 253

// CheckNodeName reports whether name can be a node's name in a lease:
// 1..253 letters, digits, '.', '-' or '_'. Peers reject leases with any
// other name, so netd refuses to start with one.
func CheckNodeName(name string) error {
	if name == "" || len(name) > maxNodeNameLen {
		return fmt.Errorf("node name of %d bytes: use 1..%d", len(name), maxNodeNameLen)
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("node name %q: use only letters, digits, '.', '-' and '_'", name)
		}
	}
	return nil
}

// Vet sorts the leases a node read from etcd into its peers (the
// leases it may install routes for) and the ones it must ignore because
// acting on them would break or hijack someone's traffic: a subnet that
// is not one of the network's node subnets (outside the CIDR, or of
// another length, so it overlaps other nodes' subnets), a record that is
// not well formed, a lease that claims this node's subnet, name, node
// address or VTEP MAC, or another node's name, IPv6 subnet or VTEP MAC.
// Of two leases that clash, the older key (CreateRevision) keeps its
// place.
//
// self is this node's lease (zero Key before it has one); it is never
// among the peers. A lease at self's key that names another node or
// node address is rejected: well-behaved nodes never write a key that
// exists, so it was replaced by a misbehaving writer (see Reclaim).
//
// On a network without IPv6 (as this netd knows it: the config it read
// at start) a lease's IPv6 fields are dropped, not held against it: a
// netd started after IPv6 was added to the network writes them, and this
// one keeps routing IPv4 to it until it restarts with the new config.
func Vet(n *conf.Network, self Lease, leases []Lease) (peers []Lease, rejected []Rejected) {
	reject := func(l *Lease, err error) {
		rejected = append(rejected, Rejected{Key: l.Key().String(), Subnet: l.Key(), Err: err})
	}
	var candidates []*Lease
	leases = slices.Clone(leases) // the IPv6 fields may be dropped below
	for i := range leases {
		l := &leases[i]
		if !n.CIDRv6.IsValid() {
			l.SubnetV6 = netip.Prefix{}
		}
		if self.Key().IsValid() && l.Key() == self.Key() {
			if l.NodeName != self.NodeName || l.NodeIP != self.NodeIP || l.NodeIPv6 != self.NodeIPv6 || l.NodeID != self.NodeID {
				reject(l, fmt.Errorf("%w: it names node %q at %s (node ID %q), but this node (%s at %s, node ID %q) holds the subnet",
					ErrForeignSelf, l.NodeName, l.NodeAddrs(), l.NodeID, self.NodeName, self.NodeAddrs(), self.NodeID))
			}
			continue
		}
		if err := checkLease(n, l); err != nil {
			reject(l, err)
			continue
		}
		switch {
		case l.NodeName == self.NodeName:
			reject(l, fmt.Errorf("it claims this node's name %q; this node holds %s", l.NodeName, self.Key()))
		case l.NodeIP.IsValid() && l.NodeIP == self.NodeIP:
			reject(l, fmt.Errorf("it claims this node's IP %s (node %q)", l.NodeIP, l.NodeName))
		case l.NodeIPv6.IsValid() && l.NodeIPv6 == self.NodeIPv6:
			reject(l, fmt.Errorf("it claims this node's IP %s (node %q)", l.NodeIPv6, l.NodeName))
		case l.SubnetV6.IsValid() && l.SubnetV6 == self.SubnetV6:
			reject(l, fmt.Errorf("it claims this node's IPv6 subnet %s (node %q)", l.SubnetV6, l.NodeName))
		case self.ownsMAC(l.VTEPMAC) || self.ownsMAC(l.VTEPMACv6):
			reject(l, fmt.Errorf("it claims this node's VTEP MAC %s (node %q)", self.vtepMAC(), l.NodeName))
		default:
			candidates = append(candidates, l)
		}
	}
	// Oldest first, so that a clash rejects the newcomer.
	slices.SortStableFunc(candidates, func(a, b *Lease) int { return cmp.Compare(a.Created, b.Created) })
	names := map[string]netip.Prefix{}
	subnets6 := map[netip.Prefix]*Lease{}
	macs := map[MAC]*Lease{}
	for _, l := range candidates {
		if held, dup := names[l.NodeName]; dup {
			reject(l, fmt.Errorf("node %q already holds %s", l.NodeName, held))
			continue
		}
		if other, dup := subnets6[l.SubnetV6]; dup && l.SubnetV6.IsValid() && other.Key() != l.Key() {
			reject(l, fmt.Errorf("its IPv6 subnet %s is node %q's (%s)", l.SubnetV6, other.NodeName, other.Key()))
			continue
		}
		if other, dup := macs[l.vtepMAC()]; dup && !l.vtepMAC().IsZero() {
			reject(l, fmt.Errorf("its VTEP MAC %s is node %q's (%s)", l.vtepMAC(), other.NodeName, other.Key()))
			continue
		}
		if !l.vtepMAC().IsZero() {
			macs[l.vtepMAC()] = l
		}
		if l.SubnetV6.IsValid() {
			subnets6[l.SubnetV6] = l
		}
		names[l.NodeName] = l.Key()
		peers = append(peers, *l)
	}
	slices.SortFunc(peers, func(a, b Lease) int { return a.Key().Addr().Compare(b.Key().Addr()) })
	slices.SortFunc(rejected, func(a, b Rejected) int { return cmp.Compare(a.Key, b.Key) })
	return peers, rejected
}

// vtepMAC is the MAC of the node's VTEP, whichever underlay it runs over.
func (l Lease) vtepMAC() MAC {
	if !l.VTEPMAC.IsZero() {
		return l.VTEPMAC
	}
	return l.VTEPMACv6
}

// ownsMAC reports whether m is the MAC of l's VTEP.
func (l Lease) ownsMAC(m MAC) bool { return !m.IsZero() && m == l.vtepMAC() }

// ErrForeignSelf marks the rejection of a lease that took this node's
// own subnet.
var ErrForeignSelf = errors.New("lease of this node's subnet rewritten by another writer")

// checkLease checks one lease against the network on its own.
func checkLease(n *conf.Network, l *Lease) error {
	if n.CIDR.IsValid() {
		if err := checkSubnet(n, l.Subnet, "subnet", n.CIDR, n.SubnetLen); err != nil {
			return err
		}
	} else if l.Subnet.IsValid() {
		return fmt.Errorf("subnet %s: the network is IPv6-only (%s)", l.Subnet, n.CIDRv6)
	}
	if l.SubnetV6.IsValid() || n.KeyFamilyV6() {
		if err := checkSubnet(n, l.SubnetV6, "subnetV6", n.CIDRv6, n.SubnetLenV6); err != nil {
			return err
		}
	}
	if err := CheckNodeName(l.NodeName); err != nil {
		return err
	}
	if l.NodeID != "" {
		if err := CheckNodeID(l.NodeID); err != nil {
			return err
		}
	}
	if !l.NodeIP.IsValid() && !l.NodeIPv6.IsValid() {
		return errors.New("nodeIP: the lease has no node address (nodeIP is not an IPv4 address, and there is no nodeIPv6)")
	}
	for _, a := range []struct {
		field string
		ip    netip.Addr
		v6    bool
	}{{"nodeIP", l.NodeIP, false}, {"nodeIPv6", l.NodeIPv6, true}} {
		if !a.ip.IsValid() {
			continue
		}
		if err := checkNodeAddr(n, a.field, a.ip, a.v6); err != nil {
			return err
		}
	}
	for _, m := range []MAC{l.VTEPMAC, l.VTEPMACv6} {
		if !m.IsZero() && m[0]&1 != 0 {
			return fmt.Errorf("vtepMAC %s is not a unicast address", m)
		}
	}
	if l.VNI != 0 && n.Mode == lease.ModeVXLAN && l.VNI != n.VNI {
		return fmt.Errorf("vni %d, the network's is %d", l.VNI, n.VNI)
	}
	return nil
}

// checkSubnet checks a lease's subnet of one family.
func checkSubnet(n *conf.Network, subnet netip.Prefix, field string, cidr netip.Prefix, length int) error {
	switch {
	case !subnet.IsValid():
		return fmt.Errorf("%s: the lease has none, and the network has %s", field, cidr)
	case !cidr.Contains(subnet.Addr()) || subnet.Bits() < cidr.Bits():
		return fmt.Errorf("%s %s is outside the network's CIDR %s", field, subnet, cidr)
	case !n.IsNodeSubnet(subnet):
		return fmt.Errorf("%s %s is not a /%d node subnet of %s: it would overlap other nodes' subnets", field, subnet, length, cidr)
	}
	return nil
}

// checkNodeAddr checks a node address of one family.
func checkNodeAddr(n *conf.Network, field string, ip netip.Addr, v6 bool) error {
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	switch {
	case ip.Is6() != v6 || ip.Is4In6():
		return fmt.Errorf("%s %q is not an %s address", field, ip, family)
	case !ip.IsGlobalUnicast():
		return fmt.Errorf("%s %s is not a unicast address another node can send to", field, ip)
	}
	for _, cidr := range n.CIDRs() {
		if cidr.Contains(ip) {
			return fmt.Errorf("%s %s is inside the network's CIDR %s: traffic to it would loop", field, ip, cidr)
		}
	}
	return nil
}

// NodeSubnet reports whether subnet is a node subnet of n, of either
// family: inside its CIDR, of its subnet length, without host bits.
func NodeSubnet(n *conf.Network, subnet netip.Prefix) bool {
	return n.IsNodeSubnet(subnet)
}

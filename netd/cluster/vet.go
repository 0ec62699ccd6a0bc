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
// not well formed, a lease that claims this node's subnet, name, node IP
// or VTEP MAC, or another node's name or VTEP MAC. Of two leases that
// clash, the older key (CreateRevision) keeps its place.
//
// self is this node's lease (zero Subnet before it has one); it is
// never among the peers. A lease at self's subnet that names another
// node or node IP is rejected: well-behaved nodes never write a key that
// exists, so it was replaced by a misbehaving writer (see Reclaim).
func Vet(n *conf.Network, self Lease, leases []Lease) (peers []Lease, rejected []Rejected) {
	reject := func(l *Lease, err error) {
		rejected = append(rejected, Rejected{Key: l.Subnet.String(), Subnet: l.Subnet, Err: err})
	}
	var candidates []*Lease
	for i := range leases {
		l := &leases[i]
		if self.Subnet.IsValid() && l.Subnet == self.Subnet {
			if l.NodeName != self.NodeName || l.NodeIP != self.NodeIP || l.NodeID != self.NodeID {
				reject(l, fmt.Errorf("%w: it names node %q at %s (node ID %q), but this node (%s at %s, node ID %q) holds the subnet",
					ErrForeignSelf, l.NodeName, l.NodeIP, l.NodeID, self.NodeName, self.NodeIP, self.NodeID))
			}
			continue
		}
		if err := checkLease(n, l); err != nil {
			reject(l, err)
			continue
		}
		switch {
		case l.NodeName == self.NodeName:
			reject(l, fmt.Errorf("it claims this node's name %q; this node holds %s", l.NodeName, self.Subnet))
		case l.NodeIP == self.NodeIP:
			reject(l, fmt.Errorf("it claims this node's IP %s (node %q)", l.NodeIP, l.NodeName))
		case !l.VTEPMAC.IsZero() && l.VTEPMAC == self.VTEPMAC:
			reject(l, fmt.Errorf("it claims this node's VTEP MAC %s (node %q)", l.VTEPMAC, l.NodeName))
		default:
			candidates = append(candidates, l)
		}
	}
	// Oldest first, so that a clash rejects the newcomer.
	slices.SortStableFunc(candidates, func(a, b *Lease) int { return cmp.Compare(a.Created, b.Created) })
	names := map[string]netip.Prefix{}
	macs := map[MAC]*Lease{}
	for _, l := range candidates {
		if held, dup := names[l.NodeName]; dup {
			reject(l, fmt.Errorf("node %q already holds %s", l.NodeName, held))
			continue
		}
		if !l.VTEPMAC.IsZero() {
			if other, dup := macs[l.VTEPMAC]; dup {
				reject(l, fmt.Errorf("its VTEP MAC %s is node %q's (%s)", l.VTEPMAC, other.NodeName, other.Subnet))
				continue
			}
			macs[l.VTEPMAC] = l
		}
		names[l.NodeName] = l.Subnet
		peers = append(peers, *l)
	}
	slices.SortFunc(peers, func(a, b Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	slices.SortFunc(rejected, func(a, b Rejected) int { return cmp.Compare(a.Key, b.Key) })
	return peers, rejected
}

// ErrForeignSelf marks the rejection of a lease that took this node's
// own subnet.
var ErrForeignSelf = errors.New("lease of this node's subnet rewritten by another writer")

// checkLease checks one lease against the network on its own.
func checkLease(n *conf.Network, l *Lease) error {
	switch {
	case !n.CIDR.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < n.CIDR.Bits():
		return fmt.Errorf("subnet %s is outside the network's CIDR %s", l.Subnet, n.CIDR)
	case !NodeSubnet(n, l.Subnet):
		return fmt.Errorf("subnet %s is not a /%d node subnet of %s: it would overlap other nodes' subnets", l.Subnet, n.SubnetLen, n.CIDR)
	}
	if err := CheckNodeName(l.NodeName); err != nil {
		return err
	}
	if l.NodeID != "" {
		if err := CheckNodeID(l.NodeID); err != nil {
			return err
		}
	}
	ip := l.NodeIP
	switch {
	case !ip.IsValid() || !ip.Is4():
		return fmt.Errorf("nodeIP %q is not an IPv4 address", ip)
	case !ip.IsGlobalUnicast():
		return fmt.Errorf("nodeIP %s is not a unicast address another node can send to", ip)
	case n.CIDR.Contains(ip):
		return fmt.Errorf("nodeIP %s is inside the network's CIDR %s: traffic to it would loop", ip, n.CIDR)
	}
	if !l.VTEPMAC.IsZero() && l.VTEPMAC[0]&1 != 0 {
		return fmt.Errorf("vtepMAC %s is not a unicast address", l.VTEPMAC)
	}
	if l.VNI != 0 && n.Mode == lease.ModeVXLAN && l.VNI != n.VNI {
		return fmt.Errorf("vni %d, the network's is %d", l.VNI, n.VNI)
	}
	return nil
}

// NodeSubnet reports whether subnet is a node subnet of n: inside its
// CIDR, of its subnet length, without host bits.
func NodeSubnet(n *conf.Network, subnet netip.Prefix) bool {
	return subnet.IsValid() && subnet.Bits() == n.SubnetLen && subnet == subnet.Masked() && n.CIDR.Contains(subnet.Addr())
}

// Package cluster is what the nodes of a network know of each other: each
// node's lease (its subnet and what it publishes about its datapath), the
// rules that decide which leases a node may route to (Vet), and the two
// interfaces through which netd uses a datastore:
//
//   - Store: the network's config and a feed of every lease;
//   - Holder: keeping this node's own lease (acquire, keep alive, write
//     back after another writer changed it).
//
// netd/registry implements both on etcd. A second datastore (Kubernetes:
// a node's subnet from its Node's spec.podCIDR, the rest of its lease in
// Node annotations, the feed from an informer) implements the same two
// interfaces; nothing else in netd knows which one it runs on.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/berthnet/berth/conf"
)

// Lease is one node's subnet and what the node publishes with it. It is
// the one record type of netd: the datastore stores it, the backends
// publish their part of it (Network.Publish) and connect the peers from
// it (Network.Desired).
//
// A lease holds a subnet of each family the network has. In etcd the
// lease is named by its IPv4 subnet (by its IPv6 subnet on an IPv6-only
// network: Key) and the rest is the JSON value:
// {"nodeName","nodeID","nodeIP","nodeIPv6","subnetV6","mode","vtepMAC",
// "vtepMACv6","vni","asn","routeReflector"}. The IPv6 fields are new
// fields rather than new meanings of old ones, so a netd from before
// dual-stack reads a dual-stack lease as the IPv4 lease it knows, and a
// lease it wrote reads here as an IPv4 lease without IPv6 (see
// conf.Network.PairedV6).
type Lease struct {
	Subnet   netip.Prefix `json:"-"`                 // IPv4; zero on an IPv6-only network
	SubnetV6 netip.Prefix `json:"subnetV6,omitzero"` // IPv6; zero without IPv6
	NodeName string       `json:"nodeName"`
	// NodeID is kept in the node's state and never changes: another node
	// started with the same name has another (see identity.go). Empty in
	// leases of netds from before node IDs.
	NodeID string `json:"nodeID,omitempty"`
	// NodeIP and NodeIPv6 are the node's underlay addresses: what peers
	// send to (at least one is set).
	NodeIP   netip.Addr `json:"nodeIP,omitzero"`
	NodeIPv6 netip.Addr `json:"nodeIPv6,omitzero"`
	Mode     string     `json:"mode"`
	// VTEPMAC is the MAC of the node's VTEP over its IPv4 underlay;
	// VTEPMACv6 of its VTEP over the IPv6 underlay. A node has one VTEP
	// (vxlan), which carries containers of both families.
	VTEPMAC   MAC    `json:"vtepMAC,omitzero"`
	VTEPMACv6 MAC    `json:"vtepMACv6,omitzero"`
	VNI       int    `json:"vni,omitempty"` // vxlan
	ASN       uint32 `json:"asn,omitempty"` // bgp
	// RouteReflector: this node reflects BGP routes to the others (bgp).
	RouteReflector bool `json:"routeReflector,omitempty"`
	// Created orders leases by age in their datastore (etcd: the key's
	// CreateRevision): of two leases that clash, the older keeps its
	// place (see Vet). Not stored in the record.
	Created int64 `json:"-"`
}

// Key is the subnet that names the lease in the datastore: the IPv4
// subnet, or the IPv6 one on an IPv6-only network. It is zero before
// the node holds a lease.
func (l Lease) Key() netip.Prefix {
	if l.Subnet.IsValid() {
		return l.Subnet
	}
	return l.SubnetV6
}

// Subnets are the lease's subnets: IPv4 first, then IPv6.
func (l Lease) Subnets() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{l.Subnet, l.SubnetV6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// NodeAddr is the node's underlay address of the family of a (IPv4 or
// IPv6), zero when it has none.
func (l Lease) NodeAddr(v6 bool) netip.Addr {
	if v6 {
		return l.NodeIPv6
	}
	return l.NodeIP
}

// MAC is an Ethernet address, written "02:00:00:00:00:01". The zero MAC
// means none (a lease of a mode without a VTEP).
type MAC [6]byte

// ParseMAC reads an Ethernet address such as "02:00:00:00:00:01".
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return MAC{}, fmt.Errorf("vtepMAC %q is not an Ethernet address", s)
	}
	return MAC(hw), nil
}

func (m MAC) String() string {
	if m.IsZero() {
		return ""
	}
	return net.HardwareAddr(m[:]).String()
}

// HardwareAddr is m in the form netlink takes.
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(m[:]) }

// IsZero reports whether m is unset.
func (m MAC) IsZero() bool { return m == MAC{} }

// MarshalText writes m as "02:00:00:00:00:01".
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads "02:00:00:00:00:01"; an empty string is the zero MAC.
func (m *MAC) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*m = MAC{}
		return nil
	}
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Rejected is a lease (or a key where a lease should be) that is not
// usable: it is ignored (no route, no peer) and reported.
type Rejected struct {
	// Key names it in the datastore, e.g. "10.244.3.0-24" below etcd's
	// leases prefix, or the lease's Key when the record itself is at fault.
	Key string
	// Subnet is the subnet it names, when it names one; a node that
	// leases a subnet treats it as taken all the same.
	Subnet netip.Prefix
	Err    error
}

// Snapshot is every lease of a network at one point of the datastore's
// history.
type Snapshot struct {
	Leases []Lease // in the datastore's order (etcd: by key)
	// Rejected are the keys that could not be read as a lease (ordered
	// by key). One bad key never hides the others.
	Rejected []Rejected
	// Revision is where in the datastore's history the snapshot was
	// taken (etcd's revision); a follower resumes after it.
	Revision int64
}

// Change is the full set of leases after a change.
type Change struct {
	Snapshot
	// Resync is true when the set was re-read from scratch because the
	// feed could not resume (etcd compacted the revision it needed).
	Resync bool
	// Rewound is true when the datastore lost its data (etcd restored
	// from an empty data dir or an old backup): the leases in it are
	// gone or old, and every node must write its own again.
	Rewound bool
}

// Origin is how a Holder chose a node's subnet.
type Origin string

const (
	OriginKept     Origin = "kept"     // still held under the node's name
	OriginPrevious Origin = "previous" // the node's local copy, still free
	OriginNew      Origin = "new"      // a free subnet
)

// Store is a network's config and its leases in a datastore.
type Store interface {
	// EnsureConfig returns the network's config. When there is none yet,
	// it stores given with defaults filled in; otherwise it returns the
	// stored one, or an error naming each field where given disagrees.
	EnsureConfig(ctx context.Context, given conf.Network) (*conf.Network, error)
	// Follow calls update with every lease of the network, first all of
	// them and then the whole set again after every change, until ctx
	// ends. It recovers from a broken feed on its own; it never misses a
	// change (at worst it re-reads everything: Change.Resync).
	Follow(ctx context.Context, update func(Change)) error
	// Ping reports whether the datastore answers.
	Ping(ctx context.Context) error
}

// Holder keeps one node's lease in a datastore. Acquire first; then
// KeepAlive until it returns, and Acquire again when the lease was lost.
type Holder interface {
	// Acquire leases the node a subnet of n carrying want's record
	// (want.Subnet is ignored), preferring the subnet it still holds,
	// then previous (its local copy), then any free one. The returned
	// lease is the one held from now on. It fails with ErrNodeTaken when
	// another node (another NodeID, see Lease.Owns) holds a live lease
	// under want's name.
	Acquire(ctx context.Context, n *conf.Network, want Lease, previous netip.Prefix) (Lease, Origin, error)
	// KeepAlive keeps the held lease alive until ctx ends (nil) or the
	// lease is lost (an error). renewed is called after each renewal
	// with how long the lease now lasts.
	KeepAlive(ctx context.Context, renewed func(ttl time.Duration)) error
	// Reclaim writes the held lease back if another writer replaced or
	// deleted it; false when it found it intact. It fails when the lease
	// itself is gone (KeepAlive then reports it lost).
	Reclaim(ctx context.Context) (bool, error)
}

// ErrConflict: the network's stored config disagrees with what this netd
// was given. Retrying cannot fix it.
var ErrConflict = errors.New("network config conflict")

// SameRecord reports whether l and o publish the same record (their IPv6
// subnets included), whatever their keys and ages.
func (l Lease) SameRecord(o Lease) bool {
	l.Subnet, l.Created, o.Subnet, o.Created = netip.Prefix{}, 0, netip.Prefix{}, 0
	return l == o
}

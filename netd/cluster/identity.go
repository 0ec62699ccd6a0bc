package cluster

import (
	"errors"
	"fmt"
	"net/netip"
)

// A node is its name plus an ID it keeps in its own state (Lease.NodeID).
// A node name held by a live lease with another ID belongs to another
// node: a Holder refuses it (ErrNodeTaken) rather than take it over, so
// that a second netd started with a name already in use (a typo, a
// copied config, two machines with the same host name) cannot take the
// real node's subnet and its traffic.

// ErrNodeTaken: another node holds a live lease under this node's name.
var ErrNodeTaken = errors.New("node name held by another node")

// Owns reports whether the node whose record is l wrote o, a lease under
// its name. A lease without an ID was written by a netd from before node
// IDs: its owner is the node at one of the same addresses, or the one
// whose lease file names that lease's key (previous).
func (l Lease) Owns(o Lease, previous netip.Prefix) bool {
	if o.NodeID != "" {
		return o.NodeID == l.NodeID
	}
	return (o.NodeIP.IsValid() && o.NodeIP == l.NodeIP) ||
		(o.NodeIPv6.IsValid() && o.NodeIPv6 == l.NodeIPv6) ||
		(previous.IsValid() && o.Key() == previous)
}

// NodeAddrs renders the lease's node addresses for messages:
// "192.168.50.3", "fd00:50::3" or "192.168.50.3,fd00:50::3".
func (l Lease) NodeAddrs() string {
	switch {
	case l.NodeIP.IsValid() && l.NodeIPv6.IsValid():
		return l.NodeIP.String() + "," + l.NodeIPv6.String()
	case l.NodeIPv6.IsValid():
		return l.NodeIPv6.String()
	}
	return l.NodeIP.String()
}

// CheckNodeID reports whether id can be a node ID: 1..64 lower-case hex
// digits. netd makes 32; peers ignore leases with anything else.
func CheckNodeID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("node ID of %d characters: want 1..64 hex digits", len(id))
	}
	for _, c := range []byte(id) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("node ID %q: want lower-case hex digits", id)
		}
	}
	return nil
}

package backend

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Cache is the owned part of the kernel, kept current from netlink events
// (and from the changes netd applies) instead of dumped on every pass.
// Load fills it with a dump, which the reconcile loop does on its full
// passes and whenever events may have been lost; between those, State is
// what the kernel holds.
type Cache struct {
	mu     sync.Mutex
	valid  bool
	owned  Owned
	links  map[int]string
	addrs  map[string]netlink.Addr  // by addrID
	neighs map[string]netlink.Neigh // by neighID
	fdb    map[string]netlink.Neigh // by fdbID
	routes map[string]netlink.Route // by routeID; RouteProtocol routes of the main table
	// seq counts the kernel's events taken; reported holds, by kind and
	// ID, the seq of the last event about each object since the last
	// fill, so that Applied does not override what the kernel reported
	// after a pass read the cache.
	seq      uint64
	reported map[string]uint64
}

// The kernel's identity of each kind of object: what one add replaces and
// one delete removes.
func addrID(a *netlink.Addr) string   { return fmt.Sprintf("%d/%s", a.LinkIndex, a.IPNet) }
func neighID(n *netlink.Neigh) string { return fmt.Sprintf("%d/%s", n.LinkIndex, n.IP) }
func fdbID(n *netlink.Neigh) string {
	return fmt.Sprintf("%d/%s/%s", n.LinkIndex, n.HardwareAddr, n.IP)
}
func routeID(r *netlink.Route) string { return fmt.Sprintf("%s/%d/%d", r.Dst, r.Priority, r.Tos) }

// Load replaces the cache with what the kernel holds now for owned, and
// returns it.
func (c *Cache) Load(owned Owned) (State, error) {
	s, err := Read(owned)
	if err != nil {
		c.Invalidate()
		return s, err
	}
	c.fill(owned, s)
	return s, nil
}

// fill replaces the cache with s, read for owned.
func (c *Cache) fill(owned Owned, s State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.owned = Owned{CIDRs: slices.Clone(owned.CIDRs), Links: slices.Clone(owned.Links)}
	c.links = maps.Clone(s.Links)
	c.addrs, c.neighs, c.fdb, c.routes = map[string]netlink.Addr{}, map[string]netlink.Neigh{}, map[string]netlink.Neigh{}, map[string]netlink.Route{}
	c.reported = map[string]uint64{}
	for _, a := range s.Addrs {
		c.addrs[addrID(&a)] = a
	}
	for _, n := range s.Neighs {
		c.neighs[neighID(&n)] = n
	}
	for _, n := range s.FDB {
		c.fdb[fdbID(&n)] = n
	}
	for _, r := range s.Routes {
		c.routes[routeID(&r)] = r
	}
	c.valid = true
}

// Invalidate marks the cache unusable until the next Load: events were
// lost.
func (c *Cache) Invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.valid = false
}

// State returns the owned part of the kernel as the cache has it; false
// when it must be loaded first (never loaded, invalidated, or asked about
// other links than it was loaded for).
func (c *Cache) State(owned Owned) (State, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid || !slices.Equal(owned.CIDRs, c.owned.CIDRs) || !slices.Equal(owned.Links, c.owned.Links) {
		return State{}, false
	}
	s := State{Links: maps.Clone(c.links)}
	for _, id := range slices.Sorted(maps.Keys(c.addrs)) {
		s.Addrs = append(s.Addrs, c.addrs[id])
	}
	for _, id := range slices.Sorted(maps.Keys(c.neighs)) {
		s.Neighs = append(s.Neighs, c.neighs[id])
	}
	for _, id := range slices.Sorted(maps.Keys(c.fdb)) {
		s.FDB = append(s.FDB, c.fdb[id])
	}
	var routes []netlink.Route
	for _, id := range slices.Sorted(maps.Keys(c.routes)) {
		routes = append(routes, c.routes[id])
	}
	s.Routes = OwnedRoutes(c.owned.CIDRs, routes)
	return s, true
}

// Seq marks the events taken so far: a pass takes it before it reads
// the cache, and gives it to Applied.
func (c *Cache) Seq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seq
}

// Applied records changes netd made successfully, so that a pass right
// after sees them before the kernel's events about them arrive. A change
// to an object the kernel reported on after since (Seq before the pass
// read the cache) is not recorded: its events, handled meanwhile, are
// newer than what the pass did (its echo, or someone changing it again
// at once), and the echo of the change follows them anyway.
func (c *Cache) Applied(changes []Change, since uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range changes {
		switch o := ch.obj.(type) {
		case *netlink.Addr:
			if c.reported["addr/"+addrID(o)] <= since {
				c.setAddr(o, !ch.remove)
			}
		case *netlink.Neigh:
			if o.Family == unix.AF_BRIDGE && c.reported["fdb/"+fdbID(o)] > since ||
				o.Family != unix.AF_BRIDGE && c.reported["neigh/"+neighID(o)] > since {
				continue
			}
			if o.Family == unix.AF_BRIDGE {
				if !ch.remove {
					// A replace moves the MAC to this node IP.
					for id, n := range c.fdb {
						if n.LinkIndex == o.LinkIndex && n.HardwareAddr.String() == o.HardwareAddr.String() {
							delete(c.fdb, id)
						}
					}
				}
				c.setFDB(o, !ch.remove)
			} else {
				c.setNeigh(o, !ch.remove)
			}
		case *netlink.Route:
			if c.reported["route/"+routeID(o)] <= since {
				c.setRoute(o, !ch.remove)
			}
		}
	}
}

// report notes an event about the object of kind and id (under c.mu).
func (c *Cache) report(kind, id string) {
	c.seq++
	if c.reported != nil {
		c.reported[kind+"/"+id] = c.seq
	}
}

func (c *Cache) ownsLink(idx int) bool { return slices.Contains(c.owned.Links, idx) }

// The set functions record an object present or absent, and report
// whether that changed what the cache held (an event confirming netd's
// own change does not).

func (c *Cache) setAddr(a *netlink.Addr, present bool) bool {
	return update(c.addrs, addrID(a), a, present, func(_, _ *netlink.Addr) bool { return true })
}

func (c *Cache) setNeigh(n *netlink.Neigh, present bool) bool {
	return update(c.neighs, neighID(n), n, present, func(a, b *netlink.Neigh) bool {
		return permanent(a) == permanent(b) && bytes.Equal(a.HardwareAddr, b.HardwareAddr)
	})
}

func (c *Cache) setFDB(n *netlink.Neigh, present bool) bool {
	return update(c.fdb, fdbID(n), n, present, func(a, b *netlink.Neigh) bool { return permanent(a) == permanent(b) })
}

func (c *Cache) setRoute(r *netlink.Route, present bool) bool {
	return update(c.routes, routeID(r), r, present, sameRoute)
}

func permanent(n *netlink.Neigh) bool { return n.State&netlink.NUD_PERMANENT != 0 }

func update[T any](m map[string]T, id string, v *T, present bool, same func(a, b *T) bool) bool {
	old, had := m[id]
	if !present {
		delete(m, id)
		return had
	}
	m[id] = *v
	return !had || !same(&old, v)
}

// Event is what a kernel event means to netd.
type Event int

const (
	// Unrelated: nothing netd owns or depends on.
	Unrelated Event = iota
	// OwnedChanged: an object netd owns changed; a pass finds out
	// whether that needs a change.
	OwnedChanged
	// UnderlayChanged: a route or address of the node changed, which may
	// change how it reaches its peers.
	UnderlayChanged
	// CacheLost: the cache can no longer tell (an owned or the underlay
	// link went away or down, taking objects with it without an event
	// each; another VTEP appeared; another protocol's route took the
	// place of one of netd's); load it again.
	CacheLost
)

// Route takes a route event.
func (c *Cache) Route(u netlink.RouteUpdate) Event {
	if u.Table != unix.RT_TABLE_MAIN {
		return Unrelated
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if u.Protocol != RouteProtocol {
		if _, ours := c.routes[routeID(&u.Route)]; c.valid && ours && u.Type == unix.RTM_NEWROUTE {
			// Another protocol's route where netd's is (`ip route
			// replace` by hand): the kernel replaced netd's without an
			// event for it, or appended next to it; only a read tells.
			return CacheLost
		}
		return UnderlayChanged
	}
	if !c.valid {
		return OwnedChanged
	}
	c.report("route", routeID(&u.Route))
	if !c.setRoute(&u.Route, u.Type == unix.RTM_NEWROUTE) {
		return Unrelated
	}
	return OwnedChanged
}

// Neigh takes a neighbour or FDB event.
func (c *Cache) Neigh(u netlink.NeighUpdate) Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid || !c.ownsLink(u.LinkIndex) {
		return Unrelated
	}
	present, changed := u.Type == unix.RTM_NEWNEIGH, false
	switch u.Family {
	case unix.AF_BRIDGE:
		c.report("fdb", fdbID(&u.Neigh))
		changed = c.setFDB(&u.Neigh, present)
	case netlink.FAMILY_V4, netlink.FAMILY_V6:
		if ownedNeigh(u.IP) { // as Read: the kernel's own entries are not netd's
			c.report("neigh", neighID(&u.Neigh))
			changed = c.setNeigh(&u.Neigh, present)
		}
	}
	if !changed {
		return Unrelated
	}
	return OwnedChanged
}

// Addr takes an address event.
func (c *Cache) Addr(u netlink.AddrUpdate) Event {
	if u.LinkAddress.IP.IsLinkLocalUnicast() {
		return Unrelated // as Read: the kernel manages IPv6 link-local addresses
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid || !c.ownsLink(u.LinkIndex) {
		return UnderlayChanged
	}
	ipnet := u.LinkAddress
	a := &netlink.Addr{IPNet: &ipnet, LinkIndex: u.LinkIndex, Flags: u.Flags, Scope: u.Scope}
	c.report("addr", addrID(a))
	if !c.setAddr(a, u.NewAddr) {
		return Unrelated
	}
	return OwnedChanged
}

// Link takes a link event. underlay is the node's underlay link index.
func (c *Cache) Link(u netlink.LinkUpdate, underlay int) Event {
	idx := int(u.Index)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.links != nil {
		if u.Header.Type == unix.RTM_DELLINK {
			delete(c.links, idx)
		} else {
			c.links[idx] = u.Attrs().Name
		}
	}
	switch {
	case c.ownsLink(idx) || idx == underlay:
		// Deleted, set down or changed: the kernel drops the routes
		// through a link that goes down without an event for each.
		return CacheLost
	case u.Link != nil && u.Link.Type() == "vxlan":
		// A VTEP created by hand or by a second netd.
		return CacheLost
	}
	return Unrelated
}

// String names e for logs.
func (e Event) String() string {
	return [...]string{"unrelated", "owned changed", "underlay changed", "cache lost"}[e]
}

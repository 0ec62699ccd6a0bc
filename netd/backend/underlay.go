package backend

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// Path is how this node's kernel routes to an address.
type Path struct {
	LinkIndex int
	Dev       string     // the link's name, for messages
	Gateway   netip.Addr // zero when the address is on the link
	// Direct: on the node's underlay link, without a gateway, i.e. on
	// the node's L2 segment.
	Direct bool
}

// String renders p as `ip route get` does: "via 192.168.50.254 dev eth0".
func (p Path) String() string {
	if p.Gateway.IsValid() {
		return fmt.Sprintf("via %s dev %s", p.Gateway, p.Dev)
	}
	return "dev " + p.Dev
}

// Underlay answers how this node reaches addresses on the underlay, from
// the kernel's routing table, and remembers each answer for MaxAge or
// until Forget: a pass over 50 peers would otherwise ask the kernel 50
// times. netd forgets the answers a route, address or link event may
// have changed; the age bounds how long a change it hears no event of
// (a policy routing rule) goes unseen.
type Underlay struct {
	node Node

	mu    sync.Mutex
	known map[netip.Addr]pathOrErr
}

type pathOrErr struct {
	path Path
	err  error
	at   time.Time
}

// MaxAge is how long Underlay trusts an answer.
const MaxAge = time.Minute

// NewUnderlay returns the Underlay of node.
func NewUnderlay(node Node) *Underlay {
	return &Underlay{node: node, known: map[netip.Addr]pathOrErr{}}
}

// Path is the kernel's route to ip (cached).
func (u *Underlay) Path(ip netip.Addr) (Path, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if k, ok := u.known[ip]; ok && time.Since(k.at) < MaxAge {
		return k.path, k.err
	}
	p, err := u.lookup(ip)
	u.known[ip] = pathOrErr{p, err, time.Now()}
	return p, err
}

// Forget drops the remembered answers: the node's addresses or links
// changed.
func (u *Underlay) Forget() {
	u.mu.Lock()
	defer u.mu.Unlock()
	clear(u.known)
}

// ForgetWithin drops the answers for addresses inside dst, whose route
// changed (nil: the default route, which may carry any of them).
func (u *Underlay) ForgetWithin(dst *net.IPNet) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for ip := range u.known {
		if dst == nil || dst.Contains(ip.AsSlice()) || dst.IP.IsUnspecified() {
			delete(u.known, ip)
		}
	}
}

func (u *Underlay) lookup(ip netip.Addr) (Path, error) {
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil {
		return Path{}, fmt.Errorf("looking up the route to %s: %w", ip, err)
	}
	if len(routes) == 0 {
		return Path{}, fmt.Errorf("no route to %s", ip)
	}
	r := routes[0]
	p := Path{LinkIndex: r.LinkIndex, Dev: u.node.Link.Attrs().Name}
	if r.LinkIndex != u.node.Link.Attrs().Index {
		p.Dev = fmt.Sprintf("link %d", r.LinkIndex)
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			p.Dev = l.Attrs().Name
		}
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
		p.Gateway = gw.Unmap()
	}
	p.Direct = !p.Gateway.IsValid() && r.LinkIndex == u.node.Link.Attrs().Index
	return p, nil
}

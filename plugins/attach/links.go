package attach

import (
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/conf"
)

// Links is what differs between berth's datapaths: how a container's
// interface is plugged into the node. The rest of an attachment's life
// (record, IPAM, host ports, iptables, teardown, GC) is shared and lives
// in this package; plugins/bridge brings the bridge's Links, plugins/bgp
// its routed ones.
type Links interface {
	// Setup creates the veth pair named by r (the caller removes it on
	// failure), configures both sides and returns the CNI result.
	Setup(r LinkRequest) (*current.Result, error)
	// Check verifies both sides against the result of ADD.
	Check(r LinkRequest, prev *current.Result) error
	// Release runs once the network has no attachment left on the node:
	// it removes what Setup made for the whole network, so that nothing
	// blocks a new network from reusing its names or its subnet.
	Release(c *conf.Bridge) error
	// Ingress is where the containers' packets enter the node's IP stack,
	// as iptables -i takes it ("bv+" for every host veth): the firewall's
	// IPv6 anti-spoofing checks their source's reverse path there.
	Ingress(c *conf.Bridge) string
}

// nameKeeper is what links that mark which network uses them (the
// bridge's alias) add: a network name is one network's on a node, and a
// second config under it (with another bridge) is refused at ADD. While
// networks of one name made before that check share the node, what is
// keyed by the name alone (rules, eBPF maps, addresses) is left to the
// last of them: GC and DEL of one remove only its own attachments.
type nameKeeper interface {
	// ClaimName refuses c (error 7 naming the field) when another
	// network of c.Name is on the node, and makes the name c's; until
	// unclaim (once Setup is done) the claim cannot be released.
	ClaimName(c *conf.Bridge) (unclaim func(), err error)
	// NameSharedWith lists the other networks of c.Name on the node;
	// none normally.
	NameSharedWith(c *conf.Bridge) ([]SharedName, error)
	// LockName takes the node-wide lock under which ClaimName decides,
	// until unlock; the caller holds none of the links' other locks.
	LockName(c *conf.Bridge) (unlock func(), err error)
}

// SharedName is another network of a network's name on the node.
type SharedName struct {
	Bridge string
	InUse  bool // it has containers attached
}

// LinkRequest is one container interface to plug in or check.
type LinkRequest struct {
	Conf     *conf.Bridge
	Netns    ns.NetNS
	IfName   string
	HostVeth string
	IPAM     *current.Result // addresses and routes from IPAM (Setup only)
	// Guard closes the host veth to forged frames before it goes up
	// (Setup only, through VethSpec.Guard): the source guard, or on the
	// eBPF datapath a filter dropping all until from_container.
	Guard func(hostIndex int, mac net.HardwareAddr) error
	// Earlier: attached by an earlier berth, without this build's guards
	// (record.Guards); Check does not ask for them.
	Earlier bool
}

// MTU is the container interface MTU: configured, else 1500.
func (r LinkRequest) MTU() int {
	if r.Conf.MTU != 0 {
		return r.Conf.MTU
	}
	return 1500
}

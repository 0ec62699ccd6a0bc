package speaker

import (
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
)

// family is one address family the speaker carries. Prefix sets and
// policy statements exist once per family (a GoBGP prefix set holds one
// family), named after it.
type family struct {
	name string // in set and statement names: "ipv4"
	api  *api.Family
	bits int // address length
}

var (
	ipv4Unicast = family{name: "ipv4", api: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, bits: 32}
	ipv6Unicast = family{name: "ipv6", api: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, bits: 128}
)

// families are the ones the speaker knows, in a fixed order.
var families = []family{ipv4Unicast, ipv6Unicast}

// familyOf returns the unicast family of p's address.
func familyOf(p netip.Prefix) family {
	return addrFamily(p.Addr())
}

// addrFamily is the unicast family of an address: what a session to a
// neighbor at that address carries.
func addrFamily(a netip.Addr) family {
	if a.Is4() {
		return ipv4Unicast
	}
	return ipv6Unicast
}

// set names a per-family defined set or statement: base + "-" + name.
func (f family) set(base string) string { return base + "-" + f.name }

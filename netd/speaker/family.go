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

var ipv4Unicast = family{name: "ipv4", api: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, bits: 32}

// families are the ones the speaker knows, in a fixed order.
var families = []family{ipv4Unicast}

// familyOf returns the family of p's address; ok is false for a family
// the speaker does not carry.
func familyOf(p netip.Prefix) (family, bool) {
	if p.Addr().Is4() {
		return ipv4Unicast, true
	}
	return family{}, false
}

// set names a per-family defined set or statement: base + "-" + name.
func (f family) set(base string) string { return base + "-" + f.name }

package conf

import (
	"math/bits"
	"net/netip"
)

// The node subnets of a network. A dual-stack network pairs them: the
// i-th IPv4 subnet goes with the i-th IPv6 subnet (10.244.3.0/24 with
// fd00:244:0:3::/64 in 10.244.0.0/16 + fd00:244::/56), so that a node's
// IPv6 subnet follows from its IPv4 one and is unique because the IPv4
// one is. Validate makes sure there are enough IPv6 subnets.

// CIDRs are the network's cluster prefixes: IPv4 first, then IPv6.
func (n *Network) CIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{n.CIDR, n.CIDRv6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// KeyFamilyV6 reports whether a node's lease is named by its IPv6
// subnet: on an IPv6-only network. Otherwise it is its IPv4 subnet.
func (n *Network) KeyFamilyV6() bool { return !n.CIDR.IsValid() }

// Subnets is how many node subnets the network holds (its IPv4 ones;
// on an IPv6-only network its IPv6 ones, at most 2^62).
func (n *Network) Subnets() uint64 {
	if n.KeyFamilyV6() {
		return uint64(1) << min(n.SubnetLenV6-n.CIDRv6.Bits(), 62)
	}
	return uint64(1) << (n.SubnetLen - n.CIDR.Bits())
}

// NthSubnet is the i-th node subnet of the key family (i < Subnets()).
func (n *Network) NthSubnet(i uint64) netip.Prefix {
	if n.KeyFamilyV6() {
		return nthSubnet(n.CIDRv6, n.SubnetLenV6, i)
	}
	return nthSubnet(n.CIDR, n.SubnetLen, i)
}

// IsNodeSubnet reports whether p is one of the network's node subnets,
// of either family: inside the CIDR of its family, of that family's
// subnet length, without host bits.
func (n *Network) IsNodeSubnet(p netip.Prefix) bool {
	cidr, l := n.CIDR, n.SubnetLen
	if p.Addr().Is6() {
		cidr, l = n.CIDRv6, n.SubnetLenV6
	}
	return p.IsValid() && cidr.IsValid() && p.Bits() == l && p == p.Masked() && cidr.Contains(p.Addr())
}

// PairedV6 is the IPv6 subnet paired with the IPv4 node subnet s on a
// dual-stack network; false when the network has no IPv6 or s is not
// one of its IPv4 node subnets.
func (n *Network) PairedV6(s netip.Prefix) (netip.Prefix, bool) {
	if !n.CIDRv6.IsValid() || !s.Addr().Is4() || !n.IsNodeSubnet(s) {
		return netip.Prefix{}, false
	}
	off := toUint128(s.Addr().As16()).sub(toUint128(n.CIDR.Addr().As16()))
	i := off.lo >> (32 - n.SubnetLen)
	if i >= uint64(1)<<min(n.SubnetLenV6-n.CIDRv6.Bits(), 63) {
		return netip.Prefix{}, false
	}
	return nthSubnet(n.CIDRv6, n.SubnetLenV6, i), true
}

// nthSubnet is the i-th subnet of length l in cidr.
func nthSubnet(cidr netip.Prefix, l int, i uint64) netip.Prefix {
	base := toUint128(cidr.Masked().Addr().As16())
	width := 128 - l
	if cidr.Addr().Is4() {
		width = 32 - l
	}
	a := netip.AddrFrom16(base.add(uint128{lo: i}.shl(uint(width))).bytes())
	if cidr.Addr().Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, l)
}

// uint128 is an address as a number, for subnet arithmetic.
type uint128 struct{ hi, lo uint64 }

func toUint128(b [16]byte) uint128 {
	var u uint128
	for i := range 8 {
		u.hi = u.hi<<8 | uint64(b[i])
		u.lo = u.lo<<8 | uint64(b[8+i])
	}
	return u
}

func (u uint128) bytes() [16]byte {
	var b [16]byte
	for i := range 8 {
		b[7-i] = byte(u.hi >> (8 * i))
		b[15-i] = byte(u.lo >> (8 * i))
	}
	return b
}

func (u uint128) add(v uint128) uint128 {
	lo, carry := bits.Add64(u.lo, v.lo, 0)
	return uint128{hi: u.hi + v.hi + carry, lo: lo}
}

func (u uint128) sub(v uint128) uint128 {
	lo, borrow := bits.Sub64(u.lo, v.lo, 0)
	return uint128{hi: u.hi - v.hi - borrow, lo: lo}
}

func (u uint128) shl(n uint) uint128 {
	switch {
	case n == 0:
		return u
	case n >= 128:
		return uint128{}
	case n >= 64:
		return uint128{hi: u.lo << (n - 64)}
	}
	return uint128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
}

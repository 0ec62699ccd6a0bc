// Package conf is berth's typed, validated configuration: what the plugins
// read from their CNI config on stdin and what netd writes for them. Every
// validation error wraps cnierr.ErrInvalidConfig and names the field.
package conf

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/cnierr"
)

// DefaultIPAMDataDir is host-local's default, so that a conflist moved from
// host-local to berth-ipam keeps its existing reservations.
const DefaultIPAMDataDir = "/var/lib/cni/networks"

// IPAMType is the ipam "type" berth plugins run in-process.
const IPAMType = "berth-ipam"

// IPAM is the host-local compatible IPAM configuration after validation.
type IPAM struct {
	Type    string
	DataDir string
	// RangeSets: one address is allocated from each set (e.g. one IPv4 and
	// one IPv6); the ranges in a set are tried in order.
	RangeSets [][]Range
	Routes    []*types.Route
	// Requested are addresses the runtime asked for (ips capability,
	// args.cni.ips or CNI_ARGS IP=); each must fall in one range set.
	Requested []netip.Addr
}

// Range is one allocatable range of a subnet.
type Range struct {
	Subnet  netip.Prefix
	Start   netip.Addr // first allocatable address
	End     netip.Addr // last allocatable address
	Gateway netip.Addr // never allocated; zero when the range has none
	// Field is where the config gives the range ("ipam.ranges[0][0]",
	// "ipam" for the legacy single range); "" when it comes from a lease.
	Field string
}

// Contains reports whether a is allocatable in r.
func (r Range) Contains(a netip.Addr) bool {
	return r.Subnet.Contains(a) && a.Compare(r.Start) >= 0 && a.Compare(r.End) <= 0
}

// rawIPAM mirrors host-local's JSON.
type rawIPAM struct {
	Type       string         `json:"type"`
	DataDir    string         `json:"dataDir"`
	Ranges     [][]rawRange   `json:"ranges"`
	Routes     []*types.Route `json:"routes"`
	Subnet     string         `json:"subnet"` // legacy single range
	RangeStart string         `json:"rangeStart"`
	RangeEnd   string         `json:"rangeEnd"`
	Gateway    string         `json:"gateway"`
}

type rawRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

// requestSources are the places a runtime can ask for specific addresses.
type requestSources struct {
	RuntimeConfig struct {
		IPs []string `json:"ips"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

// ParseIPAM validates the "ipam" object of a network config. stdin is the
// whole config (for runtimeConfig and args); cniArgs is CNI_ARGS.
func ParseIPAM(stdin []byte, cniArgs string) (*IPAM, error) {
	var outer struct {
		IPAM *rawIPAM `json:"ipam"`
	}
	if err := Decode(stdin, &outer); err != nil {
		return nil, err
	}
	if outer.IPAM == nil {
		return nil, fmt.Errorf("%w: ipam: missing; add {\"type\":\"berth-ipam\",\"ranges\":[[{\"subnet\":\"10.88.0.0/16\"}]]}", cnierr.ErrInvalidConfig)
	}
	raw := outer.IPAM
	c := &IPAM{Type: raw.Type, DataDir: raw.DataDir, Routes: raw.Routes}
	if c.DataDir == "" {
		c.DataDir = DefaultIPAMDataDir
	}
	sets := raw.Ranges
	legacy := raw.Subnet != ""
	if legacy {
		if len(sets) > 0 {
			return nil, invalid("ipam.subnet", "set either ipam.subnet or ipam.ranges, not both")
		}
		sets = [][]rawRange{{{Subnet: raw.Subnet, RangeStart: raw.RangeStart, RangeEnd: raw.RangeEnd, Gateway: raw.Gateway}}}
	}
	if len(sets) == 0 {
		return nil, invalid("ipam.ranges", "no ranges; give at least one, e.g. [[{\"subnet\":\"10.88.0.0/16\"}]]")
	}
	for i, set := range sets {
		if len(set) == 0 {
			return nil, invalid(fmt.Sprintf("ipam.ranges[%d]", i), "empty range set")
		}
		var parsed []Range
		for j, rr := range set {
			field := fmt.Sprintf("ipam.ranges[%d][%d]", i, j)
			if legacy {
				field = "ipam" // its fields are ipam.subnet, ipam.gateway ...
			}
			r, err := parseRange(field, rr)
			if err != nil {
				return nil, err
			}
			if len(parsed) > 0 && parsed[0].Subnet.Addr().Is4() != r.Subnet.Addr().Is4() {
				return nil, invalid(field, "mixes IPv4 and IPv6 in one range set; put each family in its own set")
			}
			parsed = append(parsed, r)
		}
		c.RangeSets = append(c.RangeSets, parsed)
	}
	if err := c.checkOverlaps(); err != nil {
		return nil, err
	}
	for i, rt := range c.Routes {
		if rt == nil || rt.Dst.IP == nil {
			return nil, invalid(fmt.Sprintf("ipam.routes[%d].dst", i), "missing destination CIDR")
		}
	}
	if err := c.SetRequested(stdin, cniArgs); err != nil {
		return nil, err
	}
	return c, nil
}

// SetRequested reads the addresses the runtime asked for (ips capability,
// args.cni.ips, CNI_ARGS IP=) and checks each is in a range set.
func (c *IPAM) SetRequested(stdin []byte, cniArgs string) error {
	var src requestSources
	if err := Decode(stdin, &src); err != nil {
		return err
	}
	requested, err := requestedIPs(src, cniArgs)
	if err != nil {
		return err
	}
	for _, a := range requested {
		if c.SetFor(a) < 0 {
			return invalid("ips", fmt.Sprintf("requested address %s is in none of the configured ranges", a))
		}
	}
	c.Requested = requested
	return nil
}

func parseRange(field string, rr rawRange) (Range, error) {
	p, err := netip.ParsePrefix(rr.Subnet)
	if err != nil {
		return Range{}, invalid(field+".subnet", fmt.Sprintf("%q is not a CIDR such as 10.88.0.0/16", rr.Subnet))
	}
	p = p.Masked()
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits < 2 {
		return Range{}, invalid(field+".subnet", fmt.Sprintf("%s is too small: it has no room for a gateway and an address", p))
	}
	r := Range{Subnet: p, Field: field}
	// Network address and (for IPv4) broadcast are never handed out.
	r.Start = p.Addr().Next()
	r.End = LastAddr(p)
	if p.Addr().Is4() {
		r.End = r.End.Prev()
	}
	if rr.RangeStart != "" {
		a, err := parseAddrIn(field+".rangeStart", rr.RangeStart, p)
		if err != nil {
			return Range{}, err
		}
		r.Start = a
	}
	if rr.RangeEnd != "" {
		a, err := parseAddrIn(field+".rangeEnd", rr.RangeEnd, p)
		if err != nil {
			return Range{}, err
		}
		r.End = a
	}
	if r.Start.Compare(r.End) > 0 {
		return Range{}, invalid(field+".rangeStart", fmt.Sprintf("%s is after rangeEnd %s", r.Start, r.End))
	}
	if rr.Gateway != "" {
		a, err := parseAddrIn(field+".gateway", rr.Gateway, p)
		if err != nil {
			return Range{}, err
		}
		r.Gateway = a
	} else {
		// host-local's default: the first address of the subnet.
		r.Gateway = p.Addr().Next()
	}
	return r, nil
}

// CheckDataDir refuses, at ADD, a relative dataDir for berth-ipam (other
// IPAM plugins read their own). Only ADD, like Bridge.CheckPaths.
func (c *IPAM) CheckDataDir() error {
	if c.Type != IPAMType {
		return nil
	}
	return absolute("ipam.dataDir", c.DataDir, DefaultIPAMDataDir)
}

// absolute refuses a relative path. CNI plugins run in whatever directory
// the runtime is in (containerd's, or for podman the user's shell's), so
// a relative path would record in one place at ADD and look in another at
// DEL, leaking the container's addresses, rules and state.
func absolute(field, path, example string) error {
	if filepath.IsAbs(path) {
		return nil
	}
	return invalid(field, fmt.Sprintf("%q is not an absolute path: plugins run in the runtime's working directory, which changes between calls; write an absolute path such as %q", path, example))
}

// CheckAllocatable refuses, at ADD, a configured subnet no container
// address can come from. Only ADD: DEL and GC must still release what an
// older berth, which took such subnets, allocated from them.
func (c *IPAM) CheckAllocatable() error {
	for _, set := range c.RangeSets {
		for _, r := range set {
			if why := unusableSubnet(r.Subnet); why != "" && r.Field != "" {
				return invalid(r.Field+".subnet", fmt.Sprintf("%s is %s", r.Subnet, why))
			}
		}
	}
	return nil
}

// unusableSubnet says why containers cannot be given addresses of p, or
// "". The kernel refuses multicast and IPv4-mapped addresses on an
// interface half-way through ADD, and a link-local or loopback subnet
// cannot be routed, masqueraded or published.
func unusableSubnet(p netip.Prefix) string {
	a := p.Masked().Addr()
	switch {
	case a.Is4In6():
		return fmt.Sprintf("an IPv4-mapped IPv6 prefix: write the IPv4 subnet %s", netip.PrefixFrom(a.Unmap(), max(p.Bits()-96, 0)).Masked())
	case a.IsMulticast():
		return "a multicast prefix: use a unicast subnet such as fd00:88::/64 or 10.88.0.0/16"
	case a.IsLinkLocalUnicast() && a.Is6():
		return "link-local (fe80::/10): every interface has its own; use a unique local (fd00::/8) or global subnet such as fd00:88::/64"
	case a.IsLoopback():
		return "a loopback prefix: use a subnet such as 10.88.0.0/16 or fd00:88::/64"
	}
	return ""
}

func parseAddrIn(field, s string, p netip.Prefix) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, invalid(field, fmt.Sprintf("%q is not an IP address", s))
	}
	if !p.Contains(a) {
		return netip.Addr{}, invalid(field, fmt.Sprintf("%s is outside subnet %s", a, p))
	}
	return a, nil
}

// checkOverlaps refuses two ranges that share an address: host-local would
// hand the same address out twice.
func (c *IPAM) checkOverlaps() error {
	var all []Range
	for _, set := range c.RangeSets {
		all = append(all, set...)
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			a, b := all[i], all[j]
			if a.Start.BitLen() == b.Start.BitLen() && a.Start.Compare(b.End) <= 0 && b.Start.Compare(a.End) <= 0 {
				return invalid("ipam.ranges", fmt.Sprintf("range %s-%s overlaps range %s-%s", a.Start, a.End, b.Start, b.End))
			}
		}
	}
	return nil
}

// SetFor is the index of the range set a belongs to, or -1.
func (c *IPAM) SetFor(a netip.Addr) int {
	for i, set := range c.RangeSets {
		for _, r := range set {
			if r.Contains(a) {
				return i
			}
		}
	}
	return -1
}

func requestedIPs(src requestSources, cniArgs string) ([]netip.Addr, error) {
	raw := src.RuntimeConfig.IPs
	raw = append(raw, src.Args.CNI.IPs...)
	for _, kv := range strings.Split(cniArgs, ";") {
		if v, ok := strings.CutPrefix(kv, "IP="); ok {
			raw = append(raw, strings.Split(v, ",")...)
		}
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range raw {
		// The ips capability carries CIDRs ("10.1.0.5/24"); args carry bare addresses.
		if p, err := netip.ParsePrefix(s); err == nil {
			s = p.Addr().String()
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, invalid("ips", fmt.Sprintf("%q is not an IP address", s))
		}
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out, nil
}

// LastAddr is the highest address of p (the IPv4 broadcast address).
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		bit := i * 8
		if bit >= p.Bits() {
			b[i] = 0xff
		} else if bit+8 > p.Bits() {
			b[i] |= 0xff >> (p.Bits() - bit)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// IPNet converts a prefix with a host address to the *net.IPNet CNI results use.
func IPNet(addr netip.Addr, p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(p.Bits(), addr.BitLen())}
}

func invalid(field, why string) error {
	return fmt.Errorf("%w: %s: %s", cnierr.ErrInvalidConfig, field, why)
}

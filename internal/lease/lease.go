// Package lease is the node lease file: the only thing berth's CNI plugins
// learn from netd. netd writes one file per network (atomically, temp file +
// rename) and refreshes it while its etcd lease is alive; plugins read it on
// every call. Keeping this contract in one small package means the plugins
// never link the etcd client or GoBGP.
package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultDir is where netd writes lease files unless told otherwise.
const DefaultDir = "/run/berth"

// Modes a network can run in.
const (
	ModeVXLAN  = "vxlan"
	ModeHostGW = "hostgw"
	ModeBGP    = "bgp"
)

// Node is this node's share of a cluster network. A network has IPv4,
// IPv6 or both: each family has its cluster CIDR and this node's subnet
// of it. The IPv6 fields are separate ones so that plugins from before
// dual-stack read a dual-stack lease as the IPv4 one they know.
type Node struct {
	Network     string       `json:"network"`              // network name, also the CNI network name
	Mode        string       `json:"mode"`                 // vxlan | hostgw | bgp
	NetworkCIDR netip.Prefix `json:"networkCIDR,omitzero"` // the whole cluster network (IPv4)
	Subnet      netip.Prefix `json:"subnet,omitzero"`      // this node's block of NetworkCIDR
	// NetworkCIDRv6 and SubnetV6 are the same for IPv6.
	NetworkCIDRv6 netip.Prefix `json:"networkCIDRv6,omitzero"`
	SubnetV6      netip.Prefix `json:"subnetV6,omitzero"`
	MTU           int          `json:"mtu"`    // MTU for container interfaces
	IPMasq        bool         `json:"ipMasq"` // masquerade traffic leaving the cluster CIDRs
	NodeName      string       `json:"nodeName"`
	NodeIP        netip.Addr   `json:"nodeIP,omitzero"`   // IPv4 underlay address
	NodeIPv6      netip.Addr   `json:"nodeIPv6,omitzero"` // IPv6 underlay address
	// VNI is the network's VXLAN identifier (vxlan mode), which names
	// the node's VTEP (berth.<vni>, berth6.<vni> over an IPv6
	// underlay). The plugins do not need it: netd uninstall does, to
	// tell the network's VTEP from other networks' on the node. Lease
	// files of netd before it have none.
	VNI int `json:"vni,omitempty"`
	// Expires is when the lease stops being trustworthy unless netd
	// refreshes the file. Zero means it never expires.
	Expires time.Time `json:"expires,omitzero"`
}

// Path is the lease file of network in dir.
func Path(dir, network string) string {
	return filepath.Join(dir, network+".json")
}

// Networks are the networks with a lease file in dir.
func Networks(dir string) ([]string, error) {
	paths, err := filepath.Glob(Path(dir, "*"))
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".json"))
	}
	return names, err
}

// Others are the lease files in dir of the networks other than network,
// by network, whatever their expiry; files that cannot be read or
// trusted are left out.
func Others(dir, network string) map[string]*Node {
	names, _ := Networks(dir)
	out := map[string]*Node{}
	for _, name := range names {
		if name == network {
			continue
		}
		if l, err := Read(Path(dir, name), time.Time{}); err == nil {
			out[name] = l
		}
	}
	return out
}

// Subnets are this node's subnets: IPv4 first, then IPv6.
func (n *Node) Subnets() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{n.Subnet, n.SubnetV6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// CIDRs are the cluster network's prefixes: IPv4 first, then IPv6.
func (n *Node) CIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{n.NetworkCIDR, n.NetworkCIDRv6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// Gateway is the address containers on this node use as their gateway
// in subnet (one of Subnets): its first host address.
func Gateway(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

// ErrMissing means netd has not written a lease for the network yet.
var ErrMissing = errors.New("no node lease")

// ErrStale means the lease file exists but netd stopped refreshing it.
var ErrStale = errors.New("node lease expired")

// ErrInvalid means the lease file cannot be trusted.
var ErrInvalid = errors.New("invalid node lease")

// Read loads and validates the lease file at path. It reports ErrMissing,
// ErrStale or ErrInvalid (wrapped, with the path) so that plugins can map
// them to CNI error codes.
func Read(path string, now time.Time) (*Node, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s: is netd running for this network?", ErrMissing, path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading node lease %s: %w", path, err)
	}
	var n Node
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrInvalid, path, err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrInvalid, path, err)
	}
	if !n.Expires.IsZero() && now.After(n.Expires) {
		return nil, fmt.Errorf("%w at %s (expired %s ago): is netd running and connected to etcd?",
			ErrStale, path, now.Sub(n.Expires).Round(time.Second))
	}
	return &n, nil
}

// Validate checks the fields a plugin relies on.
func (n *Node) Validate() error {
	switch {
	case n.Network == "":
		return errors.New("network: empty")
	case n.Mode != ModeVXLAN && n.Mode != ModeHostGW && n.Mode != ModeBGP:
		return fmt.Errorf("mode: %q is not vxlan, hostgw or bgp", n.Mode)
	case !n.NetworkCIDR.IsValid() && !n.NetworkCIDRv6.IsValid():
		return errors.New("networkCIDR, networkCIDRv6: neither is set")
	case n.MTU < 576 || n.MTU > 65535:
		return fmt.Errorf("mtu: %d is outside 576..65535", n.MTU)
	case n.NetworkCIDRv6.IsValid() && n.MTU < 1280:
		return fmt.Errorf("mtu: %d is below IPv6's minimum of 1280", n.MTU)
	}
	if n.NetworkCIDR.IsValid() || n.Subnet.IsValid() {
		if err := checkFamily("networkCIDR", "subnet", n.NetworkCIDR, n.Subnet, false, 30); err != nil {
			return err
		}
	}
	if n.NetworkCIDRv6.IsValid() || n.SubnetV6.IsValid() {
		if err := checkFamily("networkCIDRv6", "subnetV6", n.NetworkCIDRv6, n.SubnetV6, true, 126); err != nil {
			return err
		}
	}
	return nil
}

// checkFamily checks one family's cluster CIDR and node subnet.
func checkFamily(cidrField, subnetField string, cidr, subnet netip.Prefix, v6 bool, longest int) error {
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	switch {
	case !cidr.IsValid() || cidr.Addr().Is6() != v6 || cidr.Addr().Is4In6():
		return fmt.Errorf("%s: %q is not an %s prefix", cidrField, cidr, family)
	case !subnet.IsValid() || subnet.Addr().Is6() != v6 || subnet.Addr().Is4In6():
		return fmt.Errorf("%s: %q is not an %s prefix", subnetField, subnet, family)
	case subnet.Bits() < cidr.Bits() || !cidr.Contains(subnet.Addr()):
		return fmt.Errorf("%s: %s is outside %s %s", subnetField, subnet, cidrField, cidr)
	case subnet.Bits() > longest:
		return fmt.Errorf("%s: %s is too small to hold a gateway and a container", subnetField, subnet)
	}
	return nil
}

// Write stores n at path atomically: readers see the old file or the new
// one, never a torn write, even if the writer is killed midway.
func Write(path string, n *Node) error {
	data, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding node lease: %w", err)
	}
	return WriteFileAtomic(path, append(data, '\n'), 0o644)
}

// WriteFileAtomic writes data to a temporary file in path's directory,
// syncs it and renames it over path.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("creating temporary file for %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("setting mode of %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}

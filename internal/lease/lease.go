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

// Node is this node's share of a cluster network.
type Node struct {
	Network     string       `json:"network"`     // network name, also the CNI network name
	Mode        string       `json:"mode"`        // vxlan | hostgw | bgp
	NetworkCIDR netip.Prefix `json:"networkCIDR"` // the whole cluster network
	Subnet      netip.Prefix `json:"subnet"`      // this node's block of NetworkCIDR
	MTU         int          `json:"mtu"`         // MTU for container interfaces
	IPMasq      bool         `json:"ipMasq"`      // masquerade traffic leaving NetworkCIDR
	NodeName    string       `json:"nodeName"`
	NodeIP      netip.Addr   `json:"nodeIP"`
	// Expires is when the lease stops being trustworthy unless netd
	// refreshes the file. Zero means it never expires.
	Expires time.Time `json:"expires,omitzero"`
}

// Path is the lease file of network in dir.
func Path(dir, network string) string {
	return filepath.Join(dir, network+".json")
}

// Gateway is the address containers on this node use as their gateway:
// the first host address of the node's subnet.
func (n *Node) Gateway() netip.Addr {
	return n.Subnet.Masked().Addr().Next()
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
	case !n.NetworkCIDR.IsValid() || !n.NetworkCIDR.Addr().Is4():
		return fmt.Errorf("networkCIDR: %q is not an IPv4 prefix", n.NetworkCIDR)
	case !n.Subnet.IsValid() || !n.Subnet.Addr().Is4():
		return fmt.Errorf("subnet: %q is not an IPv4 prefix", n.Subnet)
	case n.Subnet.Bits() < n.NetworkCIDR.Bits() || !n.NetworkCIDR.Contains(n.Subnet.Addr()):
		return fmt.Errorf("subnet: %s is outside networkCIDR %s", n.Subnet, n.NetworkCIDR)
	case n.Subnet.Bits() > 30:
		return fmt.Errorf("subnet: %s is too small to hold a gateway and a container", n.Subnet)
	case n.MTU < 576 || n.MTU > 65535:
		return fmt.Errorf("mtu: %d is outside 576..65535", n.MTU)
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

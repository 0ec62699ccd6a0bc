// Package nodebridge is who owns a berth network's bridge on a node, and
// its removal once the network no longer uses it. The plugins create or
// adopt the bridge at a network's first ADD and release it at its last
// DEL; netd releases it when the node leaves the network (netd leave).
// Both hold the bridge's lock, so they never decide on it at once.
//
// A bridge belongs to one berth network, marked in its alias
// (IFLA_IFALIAS) so that two networks never share it by accident:
// "berth:<network>" when berth created it, "berth:<network> (adopted)"
// when it existed before and berth only took it over.
package nodebridge

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/netnsdir"
)

const (
	markPrefix    = "berth:"
	adoptedSuffix = " (adopted)"
)

// HostVethPrefix starts the name of every host veth berth plugs into a
// bridge: one still plugged in is a container attached.
const HostVethPrefix = "bv"

// Mark is the alias that marks a bridge as network's: created by berth,
// or adopted.
func Mark(network string, adopted bool) string {
	if adopted {
		return markPrefix + network + adoptedSuffix
	}
	return markPrefix + network
}

// Owner is the network a bridge alias names, and whether berth adopted
// the bridge rather than created it; "" when it is not berth's.
func Owner(alias string) (network string, adopted bool) {
	rest, ok := strings.CutPrefix(alias, markPrefix)
	if !ok {
		return "", false
	}
	network, adopted = strings.CutSuffix(rest, adoptedSuffix)
	return network, adopted
}

// Lock takes the node-wide lock of a bridge name in the calling thread's
// network namespace: shared while an ADD uses the network's bridge and
// plugs its veth in, exclusive while an ADD creates or adopts it (the
// kernel does not take the alias with RTM_NEWLINK, so a bridge is briefly
// unmarked) and while Release decides whether to remove it.
func Lock(name string, shared bool) (*netnsdir.Lock, error) {
	return netnsdir.Acquire("bridge-"+name+".lock", shared)
}

// A bridge berth creates is marked only once it exists: the kernel takes
// no alias with RTM_NEWLINK. A plugin killed in between would leave a
// bridge that looks like somebody else's, which the next ADD would adopt
// and the last DEL keep for ever. So the MAC an ADD creates the bridge
// with is written down first, next to the bridge's lock, until the bridge
// is marked: an unmarked bridge with that MAC is one berth made.
func creatingFile(dir, name string) string { return filepath.Join(dir, "bridge-"+name+".creating") }

// Creating records the MAC the caller is about to create bridge name
// with. The caller holds the bridge's lock exclusively; dir is the lock's.
func Creating(dir, name string, mac net.HardwareAddr) error {
	path := creatingFile(dir, name)
	if err := os.WriteFile(path, []byte(mac.String()), 0o644); err != nil {
		return fmt.Errorf("%w: writing %s: %v", cnierr.ErrIO, path, err)
	}
	return nil
}

// MadeByBerth reports whether the unmarked bridge br is one an ADD
// created and was killed before marking.
func MadeByBerth(dir string, br netlink.Link) bool {
	data, err := os.ReadFile(creatingFile(dir, br.Attrs().Name))
	return err == nil && string(data) == br.Attrs().HardwareAddr.String()
}

// Marked forgets the MAC Creating recorded, once the bridge is marked.
func Marked(dir, name string) { os.Remove(creatingFile(dir, name)) }

// Containers lists the berth host veths plugged into network's bridge
// name: the containers attached to it. None when the bridge is missing or
// not network's.
func Containers(name, network string) ([]string, error) {
	br, err := networkBridge(name, network)
	if br == nil || err != nil {
		return nil, err
	}
	veths, _, err := ports(br)
	return veths, err
}

// Release removes network's bridge from the calling thread's network
// namespace once no container is plugged into it, with its gateway
// addresses and their subnet routes, so that a new network can reuse the
// bridge name and the subnet. It reports whether the bridge was removed:
//   - a bridge that is missing or not marked as network's: nothing to do;
//   - a berth host veth (bv...) still plugged in: in use, kept;
//   - other ports only (an uplink someone enslaved), or a bridge berth
//     adopted rather than created: kept, but no longer marked, so that
//     another network may use it;
//   - otherwise: deleted.
//
// It holds the bridge's lock exclusively, so an ADD either finds the
// bridge before the decision (and its veth keeps it) or creates it anew.
func Release(name, network string) (removed bool, err error) {
	lock, err := Lock(name, false)
	if err != nil {
		return false, err
	}
	defer lock.Release()
	br, err := networkBridge(name, network)
	if br == nil || err != nil {
		return false, err
	}
	veths, others, err := ports(br)
	switch {
	case err != nil:
		return false, err
	case len(veths) > 0:
		return false, nil
	case others > 0 || isAdopted(br):
		if err := netlink.LinkSetAlias(br, ""); err != nil {
			return false, fmt.Errorf("%w: unmarking bridge %s: %v", cnierr.ErrDatapath, name, err)
		}
		return false, nil
	}
	if err := netlink.LinkDel(br); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return false, fmt.Errorf("%w: deleting bridge %s: %v", cnierr.ErrDatapath, name, err)
	}
	return true, nil
}

// NameLock takes the node-wide lock of a network name, exclusively: held
// while an ADD marks a bridge as network's, so that two networks of one
// name (two configs with different bridges) cannot both mark theirs.
// Taken after the bridge's lock, never before it.
func NameLock(network string) (*netnsdir.Lock, error) {
	return netnsdir.Acquire("network-"+network+".lock", false)
}

// Other is another bridge of a network's name: see Others.
type Other struct {
	Name  string
	InUse bool // a berth host veth is plugged in: a container is attached
}

// Others lists the bridges of the calling thread's network namespace,
// other than name, that are marked as network's: another network of the
// same name on the node. CNI network names are unique, but configs that
// predate a runtime's check reuse one for two bridges.
func Others(name, network string) ([]Other, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("%w: listing links: %v", cnierr.ErrDatapath, err)
	}
	var out []Other
	byIndex := map[int]int{} // bridge ifindex -> its index in out
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); !ok || l.Attrs().Name == name {
			continue
		}
		if owner, _ := Owner(l.Attrs().Alias); owner == network {
			byIndex[l.Attrs().Index] = len(out)
			out = append(out, Other{Name: l.Attrs().Name})
		}
	}
	for _, l := range links {
		if i, ok := byIndex[l.Attrs().MasterIndex]; ok && l.Attrs().MasterIndex != 0 && strings.HasPrefix(l.Attrs().Name, HostVethPrefix) {
			out[i].InUse = true
		}
	}
	return out, nil
}

// networkBridge is the bridge called name if it is marked as network's;
// nil when there is none or it is not.
func networkBridge(name, network string) (netlink.Link, error) {
	br, err := netlinksafe.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: finding bridge %s: %v", cnierr.ErrDatapath, name, err)
	}
	if owner, _ := Owner(br.Attrs().Alias); owner != network {
		return nil, nil
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return nil, nil
	}
	return br, nil
}

func isAdopted(br netlink.Link) bool {
	_, adopted := Owner(br.Attrs().Alias)
	return adopted
}

// ports lists br's berth host veths and counts its other ports.
func ports(br netlink.Link) (veths []string, others int, err error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: listing links: %v", cnierr.ErrDatapath, err)
	}
	for _, l := range links {
		switch {
		case l.Attrs().MasterIndex != br.Attrs().Index:
		case strings.HasPrefix(l.Attrs().Name, HostVethPrefix):
			veths = append(veths, l.Attrs().Name)
		default:
			others++
		}
	}
	return veths, others, nil
}

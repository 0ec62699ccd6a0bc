package netd

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// The node bridge of a vxlan or hostgw network is made by the plugins
// (plugins/bridge) at the first ADD and marked with the alias
// "berth:<network>"; netd leave removes it once nothing is attached, so
// that the next network on the node (or the same one in another mode)
// can use it. Until plugins/bridge offers this itself, netd does it here.

// bridgeAlias is the plugins' owner mark on a network's bridge.
func bridgeAlias(network string) string { return "berth:" + network }

// networkBridge returns the bridge named name if it is network's; nil
// when there is none, or it belongs to something else.
func networkBridge(name, network string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok || l.Attrs().Alias != bridgeAlias(network) {
		return nil, nil
	}
	return l, nil
}

// bridgePorts lists the links plugged into network's bridge.
func bridgePorts(name, network string) ([]string, error) {
	br, err := networkBridge(name, network)
	if br == nil || err != nil {
		return nil, err
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	return ports, nil
}

// removeBridge deletes network's bridge (with its gateway address) when
// it has no port; a bridge of another network or another owner stays.
func removeBridge(name, network string) (bool, error) {
	br, err := networkBridge(name, network)
	if br == nil || err != nil {
		return false, err
	}
	if ports, err := bridgePorts(name, network); err != nil || len(ports) > 0 {
		return false, err // refuseAttached said so before
	}
	if err := netlink.LinkDel(br); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return false, fmt.Errorf("removing bridge %s: %w", name, err)
	}
	return true, nil
}

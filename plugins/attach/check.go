package attach

import (
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/cnierr"
)

// CheckContainerSide verifies the addresses and routes of prev on ifName;
// it runs inside the container namespace.
func CheckContainerSide(ifName string, prev *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("%w: interface %s in the container: %v", cnierr.ErrCheckFailed, ifName, err)
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("%w: listing addresses of %s: %v", cnierr.ErrDatapath, ifName, err)
	}
	for _, ipc := range prev.IPs {
		found := false
		for _, a := range addrs {
			found = found || (a.IP.Equal(ipc.Address.IP) && a.Mask.String() == ipc.Address.Mask.String())
		}
		if !found {
			return fmt.Errorf("%w: address %s missing from %s", cnierr.ErrCheckFailed, ipc.Address.String(), ifName)
		}
	}
	routes, err := netlinksafe.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("%w: listing routes of %s: %v", cnierr.ErrDatapath, ifName, err)
	}
	for _, want := range prev.Routes {
		if !hasRoute(routes, want.Dst, want.GW) {
			return fmt.Errorf("%w: route to %s missing from %s", cnierr.ErrCheckFailed, want.Dst.String(), ifName)
		}
	}
	return nil
}

func hasRoute(routes []netlink.Route, dst net.IPNet, gw net.IP) bool {
	for _, r := range routes {
		rdst := r.Dst
		if rdst == nil { // the kernel reports the default route without a Dst
			rdst = &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if dst.IP.To4() == nil {
				rdst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
		}
		if rdst.String() == dst.String() && (gw == nil || gw.Equal(r.Gw)) {
			return true
		}
	}
	return false
}

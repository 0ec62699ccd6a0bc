package bridge

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/utils/sysctl"

	"github.com/berthnet/berth/internal/cnierr"
)

// ipv6Forwarding is the node namespace's IPv6 routing switch. The plugin
// runs in the node's namespace, so this is the node's, never the
// machine's (unless the node is the machine).
const ipv6Forwarding = "net.ipv6.conf.all.forwarding"

// EnableIPv6Forwarding turns on IPv6 routing in the node's namespace,
// which a network with IPv6 needs to carry its containers' traffic to
// other nodes. The kernel then stops accepting router advertisements on
// interfaces with accept_ra=1: a node whose own IPv6 address comes from
// SLAAC needs accept_ra=2 on its uplink (as with any IPv6 router).
func EnableIPv6Forwarding() error {
	if v, _ := sysctl.Sysctl(ipv6Forwarding); v == "1" {
		return nil
	}
	if _, err := sysctl.Sysctl(ipv6Forwarding, "1"); err != nil {
		return fmt.Errorf("%w: setting %s=1: %v", cnierr.ErrDatapath, ipv6Forwarding, err)
	}
	return nil
}

// Package hostgw is the berth-hostgw plugin: the bridge datapath on the
// node's leased subnet, routed between L2-adjacent nodes by netd's host-gw
// backend (one kernel route per peer, no encapsulation).
package hostgw

import (
	"strings"

	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/plugins/attach"
	"github.com/berthnet/berth/plugins/bridge"
)

// Plugin is berth-hostgw.
var Plugin = cniplugin.Plugin{
	Name:  "berth-hostgw",
	About: "containers on the node's subnet, routed to other nodes by netd (host-gw)",
	Help:  strings.ReplaceAll(attach.LeasedHelp, "MODE", lease.ModeHostGW),
	Funcs: attach.LeasedFuncs(lease.ModeHostGW, bridge.Datapath),
}

// Package vxlan is the berth-vxlan plugin: the bridge datapath on the
// node's leased subnet. netd's vxlan backend carries the traffic between
// nodes through the VTEP; to the container it is the same as bridge mode.
package vxlan

import (
	"strings"

	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/plugins/attach"
	"github.com/berthnet/berth/plugins/bridge"
)

// Plugin is berth-vxlan.
var Plugin = cniplugin.Plugin{
	Name:  "berth-vxlan",
	About: "containers on the node's subnet of a VXLAN overlay run by netd",
	Help:  strings.ReplaceAll(attach.LeasedHelp, "MODE", lease.ModeVXLAN),
	Funcs: attach.LeasedFuncs(lease.ModeVXLAN, bridge.Datapath),
}

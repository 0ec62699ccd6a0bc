// Command berth-vxlan is the CNI plugin of berth's VXLAN mode.
package main

import (
	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/plugins/vxlan"
)

func main() { cniplugin.Main(vxlan.Plugin) }

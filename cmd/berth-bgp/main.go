// Command berth-bgp is the CNI plugin of berth's routed BGP mode.
package main

import (
	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/plugins/bgp"
)

func main() { cniplugin.Main(bgp.Plugin) }

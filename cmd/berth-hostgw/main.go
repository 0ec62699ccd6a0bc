// Command berth-hostgw is the CNI plugin of berth's host-gw mode.
package main

import (
	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/plugins/hostgw"
)

func main() { cniplugin.Main(hostgw.Plugin) }

// Command berth-bridge attaches containers to a Linux bridge on one node,
// with NAT, port mapping and isolation from other networks.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/plugins/bridge"
)

const help = `Configuration (a plugin in a conflist; every field but "type" and "ipam" optional):

  {"type": "berth-bridge",
   "bridge": "berth0",          bridge name; one bridge per network
   "isGateway": true,           put the gateway address on the bridge
   "isDefaultGateway": false,   also add a default route via the gateway
   "forceAddress": false,       replace another address of the same subnet on the bridge
   "ipMasq": true,              masquerade traffic leaving the network
   "mtu": 1500,                 container interface MTU (576..65535)
   "hairpinMode": true,         a container can reach its own published ports
   "promiscMode": false,        bridge in promiscuous mode
   "isolation": true,           no traffic to or from other berth networks on this node
   "stateDir": "/run/berth",    attachment records and their locks (the node's locks and
                                host port claims: /run/berth/netns/)
   "datapath": "iptables",      or "ebpf": TC programs carry container-to-container
                                traffic past the bridge and netfilter (IPv4 only:
                                IPv6 ranges are refused with error 7)
   "bpffs": "/sys/fs/bpf",      ebpf: BPF filesystem for the pinned maps and programs
   "ipam": {"type": "berth-ipam", "ranges": [[{"subnet": "10.88.0.0/16"}]]},
   "capabilities": {"portMappings": true, "ips": true, "mac": true}}

Any IPAM plugin works; berth-ipam is linked in and not exec'd. Dual-stack:
"ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64"}]], or an
IPv6 range alone (one range set per family, of one subnet: the rules cover
that subnet, so a second one is refused with error 7); masquerade, port
mapping, isolation and anti-spoofing then hold for IPv6 too (ip6tables;
IPv6 forwarding is turned on).
Port mappings: runtimeConfig.portMappings [{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}]
answer on every node address of each family and on 127.0.0.1; "hostIP" "0.0.0.0"
or "::" limits them to one family; "::1" cannot be published (IPv6 has no
route_localnet).`

func main() {
	cniplugin.Main(cniplugin.Plugin{
		Name:  "berth-bridge",
		About: "bridge networking with NAT, port mapping and isolation",
		Help:  help,
		Funcs: bridge.Datapath.Funcs(func(a *skel.CmdArgs, _ bool) (*conf.Bridge, error) { return bridge.Load(a) }),
	})
}

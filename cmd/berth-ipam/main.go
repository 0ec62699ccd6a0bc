// Command berth-ipam is berth's host-local compatible IPAM plugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/cniplugin"
	"github.com/berthnet/berth/ipam"
)

const help = `Configuration (the "ipam" object; host-local's, change only "type"):

  {"type": "berth-ipam",
   "ranges": [[{"subnet": "10.88.0.0/16", "rangeStart": "10.88.1.0",
                "rangeEnd": "10.88.1.254", "gateway": "10.88.0.1"}]],
   "routes": [{"dst": "0.0.0.0/0"}],
   "dataDir": "/var/lib/cni/networks"}

  ranges      one address is allocated from each inner list (e.g. IPv4 + IPv6)
  subnet      legacy single range (with rangeStart, rangeEnd, gateway)
  routes      returned to the calling plugin as-is
  dataDir     reservations live in <dataDir>/<network name>/ (default /var/lib/cni/networks;
              an absolute path: ADD refuses a relative one)

Specific addresses: the "ips" capability (runtimeConfig.ips), args.cni.ips,
or CNI_ARGS="IP=10.88.0.9". GC releases every address whose attachment is
not in cni.dev/valid-attachments.`

func main() {
	cniplugin.Main(cniplugin.Plugin{
		Name:  "berth-ipam",
		About: "host-local compatible IP address management",
		Help:  help,
		Funcs: skel.CNIFuncs{
			Add:    withRequest(add),
			Del:    withRequest(func(r *ipam.Request, _ *skel.CmdArgs, _ string) error { return ipam.Del(r) }),
			Check:  withRequest(func(r *ipam.Request, _ *skel.CmdArgs, _ string) error { return ipam.Check(r) }),
			GC:     withRequest(gc),
			Status: withRequest(func(r *ipam.Request, _ *skel.CmdArgs, _ string) error { return ipam.Status(r) }),
		},
	})
}

// withRequest parses the call's config before running op.
func withRequest(op func(req *ipam.Request, args *skel.CmdArgs, cniVersion string) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		req, version, err := ipam.NewRequest(args)
		if err != nil {
			return err
		}
		return op(req, args, version)
	}
}

func add(req *ipam.Request, _ *skel.CmdArgs, cniVersion string) error {
	res, err := ipam.Add(req)
	if err != nil {
		return err
	}
	return types.PrintResult(res, cniVersion)
}

func gc(req *ipam.Request, args *skel.CmdArgs, _ string) error {
	valid, err := ipam.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	return ipam.GC(req, ipam.Listed(valid))
}

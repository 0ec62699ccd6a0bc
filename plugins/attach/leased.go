package attach

import (
	"errors"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/lease"
)

// LoadLeased builds the config of berth-vxlan and berth-hostgw: the
// bridge fields from stdin, the addressing from the node lease netd wrote.
// When the lease is missing or stale, ADD and CHECK get error 11 naming
// netd and STATUS gets 50; DEL and GC work without it, because a runtime
// must be able to clean up while netd is down.
func LoadLeased(args *skel.CmdArgs, mode string, needLease bool) (*conf.Bridge, error) {
	c, err := conf.ParseBridge(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	var raw struct {
		IPAM struct {
			DataDir string `json:"dataDir"`
		} `json:"ipam"`
	}
	if err := conf.Decode(args.StdinData, &raw); err != nil {
		return nil, err
	}
	c.IPAMConf = &conf.IPAM{Type: conf.IPAMType, DataDir: raw.IPAM.DataDir}
	if c.IPAMConf.DataDir == "" {
		c.IPAMConf.DataDir = conf.DefaultIPAMDataDir
	}
	if c.LeaseDir == "" {
		c.LeaseDir = lease.DefaultDir
	}
	path := lease.Path(c.LeaseDir, c.Name)
	node, err := lease.Read(path, time.Now())
	if err != nil {
		if !needLease {
			return c, nil
		}
		return nil, fmt.Errorf("%w: network %s: %w", cnierr.ErrTryAgainLater, c.Name, err)
	}
	// DEL and GC still clean up what an attachment made before its
	// network gained IPv6.
	if needLease {
		if err := c.CheckLeasedFamilies(path, node.SubnetV6); err != nil {
			return nil, err
		}
	}
	if node.Mode != mode {
		return nil, fmt.Errorf("%w: network %s runs in %s mode (lease %s) but this is the %s plugin; use \"type\": \"berth-%s\"",
			cnierr.ErrInvalidConfig, c.Name, node.Mode, path, mode, node.Mode)
	}
	// One range set per family of the lease: a dual-stack network gives
	// each container an address of each.
	c.IPAMConf.RangeSets = nil
	for _, subnet := range node.Subnets() {
		gw := lease.Gateway(subnet)
		end := conf.LastAddr(subnet)
		if subnet.Addr().Is4() {
			end = end.Prev() // not the broadcast address
		}
		c.IPAMConf.RangeSets = append(c.IPAMConf.RangeSets, []conf.Range{{Subnet: subnet.Masked(), Start: gw.Next(), End: end, Gateway: gw}})
	}
	if err := c.IPAMConf.SetRequested(args.StdinData, args.Args); err != nil {
		return nil, err
	}
	c.Scope = node.NetworkCIDR.Masked()
	c.Scope6 = node.NetworkCIDRv6.Masked()
	c.MTU = node.MTU
	c.IPMasq = &node.IPMasq
	c.IsDefaultGateway = true
	return c, nil
}

// LeasedFuncs are the CNI operations of datapath d whose addressing comes
// from the node lease of mode.
func LeasedFuncs(mode string, d Datapath) skel.CNIFuncs {
	f := d.Funcs(func(args *skel.CmdArgs, needLease bool) (*conf.Bridge, error) {
		return LoadLeased(args, mode, needLease)
	})
	f.Status = func(args *skel.CmdArgs) error {
		c, err := LoadLeased(args, mode, true)
		if errors.Is(err, cnierr.ErrTryAgainLater) {
			return fmt.Errorf("%w: %w", cnierr.ErrUnavailable, err)
		}
		if err != nil {
			return err
		}
		return Status(args, c)
	}
	return f
}

// LeasedHelp is the configuration reference of berth-vxlan and berth-hostgw.
const LeasedHelp = `Configuration (netd writes this conflist into the CNI conf dir for you):

  {"type": "berth-MODE",
   "leaseDir": "/run/berth",    where netd writes the node lease <leaseDir>/<network name>.json
   "bridge": "berth0",          bridge name on the node
   "stateDir": "/run/berth",    attachment records and their locks (the node's locks and
                                host port claims: /run/berth/netns/)
   "isolation": true,           no traffic to or from other berth networks on this node
   "hairpinMode": true,
   "datapath": "iptables",      or "ebpf" (netd --datapath=ebpf writes it, with "bpffs");
                                IPv4 only: a lease with IPv6 is refused (error 7)
   "ipam": {"type": "berth-ipam", "dataDir": "/var/lib/cni/networks"},
   "capabilities": {"portMappings": true, "ips": true, "mac": true}}

The node's subnets (IPv4, IPv6 or both: a dual-stack network gives each
container an address of each family), gateways (each subnet's first address),
MTU and masquerade policy come from the lease; addresses are allocated
in-process by berth-ipam. Without a
lease (netd not running or not connected) ADD fails with error 11 and STATUS
with 50; DEL and GC still clean up.`

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/nodeinstall"
	"github.com/berthnet/berth/netd"
)

const installUsage = `netd install-cni: copy berth's CNI plugins (the berth-* files next to this
netd) into the node's CNI bin dir, each written under a temporary name and
renamed, so a runtime never execs half a plugin. Plugins already identical
are left alone. Berth's Kubernetes DaemonSet runs it as its init container.

Example:
  netd install-cni --cni-bin-dir=/opt/cni/bin

Flags:
`

const uninstallUsage = `netd uninstall: remove one berth network from this node, and berth with the
last one, for the uninstall DaemonSet (deploy/kubernetes/uninstall.yaml) or
by hand after stopping netd. It waits until netd no longer answers on
--metrics-address, removes the network's conflist (no new pod starts on
it), waits until no container is attached to the network any more (their
DEL needs the plugins: delete or drain the pods), then removes the
network's routes (protocol 73, inside its CIDRs), its VTEP (berth.<vni> or
berth6.<vni> of the VNI its lease file names) and VTEP guard, its bridge,
its eBPF datapath (its uplink programs and pins), the plugins' state and
IPAM data of the network and, last, its lease file (a failed run keeps it,
expired, for the next one). Other berth networks on the node keep their
VTEPs, routes, guards and pins; the berth-* plugins in --cni-bin-dir and
the shared directories go only when no other berth network has a
conflist, a lease file or attached containers on the node. With a lease
file from a netd that did not record the VNI, no VTEP is deleted: each one
that may be the network's is named in a warning with the command to delete
it. Paths come from the conflist netd wrote; running again after the
conflist is gone, give --lease-dir. It needs no datastore; with etcd, the
node's lease there expires after --lease-ttl (or release it with netd leave
before).

Example:
  netd uninstall --network-name=berth --cni-conf-dir=/etc/cni/net.d --cni-bin-dir=/opt/cni/bin

Flags:
`

// runNodeInstall runs `netd install-cni` and `netd uninstall`.
func runNodeInstall(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("netd "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	binDir := fs.String("cni-bin-dir", "/opt/cni/bin", "the node's CNI bin dir, where the runtime finds plugins")
	n := nodeinstall.Node{}
	var keepRunning bool
	usage := installUsage
	if cmd == "uninstall" {
		usage = uninstallUsage
		fs.StringVar(&n.Network, "network-name", conf.DefaultNetworkName, "the network to remove (netd's --network-name)")
		fs.StringVar(&n.CNIConfDir, "cni-conf-dir", netd.DefaultCNIConfDir, "where netd wrote the conflist")
		fs.StringVar(&n.MetricsAddr, "metrics-address", netd.DefaultMetricsAddr, "netd's; wait until nothing answers there (empty: do not wait)")
		fs.StringVar(&n.LeaseDir, "lease-dir", "", "netd's lease dir (default: the conflist's leaseDir)")
		fs.StringVar(&n.BPFFS, "bpffs", "", "eBPF datapath: the BPF filesystem of the network's pins (default: the conflist's bpffs, else "+conf.DefaultBPFFS+")")
		fs.DurationVar(&n.Wait, "wait", 0, "how long to wait for netd to stop and the network's containers to go (default 10m)")
		fs.BoolVar(&keepRunning, "keep-running", false, "after removing berth, run until stopped: the uninstall DaemonSet's pods stay up so that rollout status sees every node done")
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "see netd %s --help\n", cmd)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netd %s: unexpected arguments %q\n", cmd, fs.Args())
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if cmd == "install-cni" {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "netd install-cni: finding the plugins next to netd: %v\n", err)
			return 1
		}
		wrote, err := nodeinstall.Install(filepath.Dir(self), *binDir)
		if err != nil {
			fmt.Fprintf(stderr, "netd install-cni: %v\n", err)
			return 1
		}
		log.Info("CNI plugins installed", "dir", *binDir, "written", wrote)
		return 0
	}
	n.CNIBinDir = *binDir
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := nodeinstall.Uninstall(ctx, n, log); err != nil {
		fmt.Fprintf(stderr, "netd uninstall: %v\n", err)
		return 1
	}
	if keepRunning {
		<-ctx.Done()
	}
	return 0
}

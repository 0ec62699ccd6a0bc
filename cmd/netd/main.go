// Command netd is berth's node daemon; see package netd and `netd --help`.
//
// MPTCP stays off: Go uses it for listeners by default since 1.24, and an
// MPTCP socket refuses TCP_MD5SIG, which BGP passwords need.
//
//go:debug multipathtcp=0
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/berthnet/berth/netd"
)

const usage = `netd: berth's node daemon. It leases this node a subnet of a cluster network
in etcd, writes the node lease file and conflist for berth's CNI plugins, and
keeps routes (and the VTEP, neighbours and FDB in vxlan mode) to every other
node's subnet in the kernel.

Usage:
  netd [run] [flags]     run the daemon (SIGTERM stops it and leaves the
                         datapath and lease in place for the next start)
  netd status [flags]    print this node's lease, its peers and whether the
                         kernel matches (asks the daemon on --metrics-address);
                         exit 2 when something needs attention, 1 when netd
                         does not answer
  netd leave [flags]     give up this node's subnet on purpose (stop netd
                         first): release the lease in etcd, remove the routes,
                         VTEP, lease file and conflist
  netd install-cni       copy the berth-* plugins next to netd into the CNI
                         bin dir (the Kubernetes DaemonSet's init step)
  netd uninstall         remove everything berth put on this node, without
                         asking the datastore (netd uninstall --help)

Examples:
  netd --node-name=node1                          # embedded etcd, vxlan 10.244.0.0/16
  netd --node-name=node2 --etcd-endpoints=http://192.168.50.1:2379
  netd --node-name=w3 --etcd-endpoints=https://10.0.0.5:2379 \
       --etcd-cafile=ca.pem --etcd-certfile=w3.pem --etcd-keyfile=w3-key.pem \
       --network-name=pods --network-cidr=10.20.0.0/16 --mode=hostgw
  netd status --metrics-address=127.0.0.1:9472
  netd leave --node-name=node2 --etcd-endpoints=http://192.168.50.1:2379

Network flags (--network-cidr, --subnet-len, --mode, --vni, --vxlan-port, --mtu,
--ip-masq, --direct-routing) only matter to the netd that creates the network
in etcd; a netd joining it may leave them out, and is refused if it gives one
that differs from the stored network.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run", "status", "leave":
	case "install-cni", "uninstall":
		return runNodeInstall(cmd, args, stdout, stderr)
	case "help":
		cmd, args = "run", []string{"--help"}
	default:
		fmt.Fprintf(stderr, "netd: unknown command %q; use run, status, leave, install-cni or uninstall (netd --help)\n", cmd)
		return 2
	}
	fs := flag.NewFlagSet("netd "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg netd.Config
	finish := cfg.Flags(fs)
	var asJSON bool
	if cmd == "status" {
		fs.BoolVar(&asJSON, "json", false, "print /status as JSON, e.g. for jq")
	}
	fs.Usage = func() {} // the full text only on --help, on stdout
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "see netd --help\n")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netd %s: unexpected arguments %q\n", cmd, fs.Args())
		return 2
	}
	if err := finish(); err != nil {
		fmt.Fprintf(stderr, "netd %s: %v\n", cmd, err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintf(stderr, "netd: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	switch cmd {
	case "status":
		s, err := netd.FetchStatus(ctx, cfg.MetricsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "netd status: %v\n", err)
			return 1
		}
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(s)
		} else {
			s.Print(stdout, time.Now())
		}
		if !s.Healthy() {
			return 2
		}
		return 0
	case "leave":
		if err := netd.Leave(ctx, &cfg, log); err != nil {
			fmt.Fprintf(stderr, "netd leave: %v\n", err)
			return 1
		}
		return 0
	}
	err := netd.Run(ctx, &cfg, log)
	if err != nil && ctx.Err() == nil {
		log.Error("netd stopped", "err", err)
		return 1
	}
	return 0 // stopped by a signal, possibly while still starting
}

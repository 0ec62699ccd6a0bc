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

	"github.com/berthnet/berth/internal/version"
	"github.com/berthnet/berth/netd"
)

const usage = `netd: berth's node daemon. It leases this node a subnet of a cluster network
in etcd, writes the node lease file and conflist for berth's CNI plugins, and
keeps routes (and the VTEP, neighbours and FDB in vxlan mode) to every other
node's subnet in the kernel.

Usage (netd COMMAND --help: what it does and the flags it reads):
  netd [run] [flags]     run the daemon (SIGTERM stops it and leaves the
                         datapath and lease in place for the next start);
                         without --etcd-endpoints and before netd join, it
                         runs an embedded etcd (TLS, certificates it makes)
  netd join TOKEN        get this node's etcd certificates from the node that
                         runs the embedded etcd (TOKEN: netd token there);
                         netd then uses that etcd without --etcd-endpoints
  netd token [--rotate]  print the join token of this node's embedded etcd
                         (--rotate: a new one; the old one stops working)
  netd status [flags]    print this node's lease, its peers and whether the
                         kernel matches (asks the daemon on --metrics-address);
                         exit 2 when something needs attention or netd is
                         still starting, 1 when netd does not answer
  netd leave [flags]     give up this node's part of the network on purpose
                         (stop netd first; refused while containers are
                         attached): release the lease in etcd, remove the
                         routes, VTEP, bridge, lease file and conflist
  netd network show      print the network's config and leases in etcd
  netd network delete    remove the network's config from etcd (refused while
                         a node holds a lease): then a netd may create it
                         anew, e.g. in another --mode
  netd version           print the version (also netd --version)
  netd install-cni       copy the berth-* plugins next to netd into the CNI
                         bin dir (the Kubernetes DaemonSet's init step)
  netd uninstall         remove everything berth put on this node, without
                         asking the datastore (netd uninstall --help)

Examples:
  netd --node-name=node1                          # embedded etcd, vxlan 10.244.0.0/16
  netd token                                      # on node1: prints TOKEN
  netd join TOKEN --node-name=node2               # on node2, once
  netd --node-name=node2                          # uses node1's etcd
  netd --node-name=w3 --etcd-endpoints=https://10.0.0.5:2379 \
       --etcd-cafile=ca.pem --etcd-certfile=w3.pem --etcd-keyfile=w3-key.pem \
       --network-name=pods --network-cidr=10.20.0.0/16 --mode=hostgw
  netd --root-dir=/srv/berth/node4 --node-name=node4 --iface=eth1   # one of several nodes on a machine
  netd status --metrics-address=127.0.0.1:9472
  netd leave --node-name=node2

Network flags (--network-cidr, --subnet-len, --mode, --vni, --vxlan-port, --mtu,
--ip-masq, --direct-routing, --datapath) only matter to the netd that creates the network
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
	if cmd == "network" {
		if len(args) == 0 || (args[0] != "show" && args[0] != "delete") {
			fmt.Fprintf(stderr, "netd network: use show or delete (netd --help)\n")
			return 2
		}
		cmd, args = "network "+args[0], args[1:]
	}
	switch cmd {
	case "run", "status", "leave", "join", "token", "network show", "network delete":
	case "install-cni", "uninstall":
		return runNodeInstall(cmd, args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version.Line("netd"))
		return 0
	case "help":
		cmd, args = "run", []string{"--help"}
	default:
		fmt.Fprintf(stderr, "netd: unknown command %q; use run, join, token, status, leave, network, version, install-cni or uninstall (netd --help)\n", cmd)
		return 2
	}
	fs := flag.NewFlagSet("netd "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg netd.Config
	finish := cfg.Flags(fs)
	var asJSON, showVersion, rotate bool
	fs.BoolVar(&showVersion, "version", false, "print netd's version and exit")
	switch cmd {
	case "status":
		fs.BoolVar(&asJSON, "json", false, "print /status as JSON, e.g. for jq")
	case "token":
		fs.BoolVar(&rotate, "rotate", false, "token: make a new join token; the old one stops working (nodes that joined keep theirs)")
	}
	fs.Usage = func() {} // the help only on --help, on stdout
	parse := func(args []string) int {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printHelp(stdout, cmd, fs)
				return 0
			}
			fmt.Fprintf(stderr, "see netd --help\n")
			return 2
		}
		return -1
	}
	if code := parse(args); code >= 0 {
		return code
	}
	var token string
	if cmd == "join" && fs.NArg() > 0 { // netd join TOKEN [flags]
		token = fs.Arg(0)
		if code := parse(fs.Args()[1:]); code >= 0 {
			return code
		}
	}
	if showVersion {
		fmt.Fprintln(stdout, version.Line("netd"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netd %s: unexpected arguments %q\n", cmd, fs.Args())
		return 2
	}
	if cmd == "join" && token == "" {
		fmt.Fprintf(stderr, "netd join: give the join token: netd join TOKEN (netd token prints it on the node that runs the embedded etcd)\n")
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

	var err error
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
	case "join":
		err = netd.Join(ctx, &cfg, token, stdout)
	case "token":
		err = netd.PrintToken(&cfg, rotate, stdout)
	case "leave":
		err = netd.Leave(ctx, &cfg, log)
	case "network show":
		err = netd.ShowNetwork(ctx, &cfg, log, stdout)
	case "network delete":
		err = netd.DeleteNetwork(ctx, &cfg, log)
	default:
		err = netd.Run(ctx, &cfg, log)
		if err != nil && ctx.Err() == nil {
			log.Error("netd stopped", "err", err)
			return 1
		}
		return 0 // stopped by a signal, possibly while still starting
	}
	if err != nil {
		fmt.Fprintf(stderr, "netd %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

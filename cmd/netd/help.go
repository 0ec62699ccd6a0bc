package main

import (
	"flag"
	"fmt"
	"io"
)

// subcommand is what `netd <subcommand> --help` prints: what it does, its
// usage and an example, then only the flags its code path reads, so that
// they are not lost among the daemon's many. It still accepts every netd
// flag: scripts (and the test bed) give netd leave the flags netd ran with.
type subcommand struct {
	usage string
	flags []string // names of the flags it reads, in netd.Config.Flags or run
}

// etcdAccessFlags are what a one-off command reads to reach this node's
// etcd (netd.commandRegistry): the given endpoints, the ones it joined
// (--pki-dir), the ones its running netd uses (asked on
// --metrics-address), or else its embedded etcd, started for the command
// on the node's addresses.
var etcdAccessFlags = []string{
	"metrics-address", "node-name", "node-ip", "iface", "root-dir", "pki-dir",
	"etcd-endpoints", "etcd-cafile", "etcd-certfile", "etcd-keyfile", "etcd-prefix",
	"etcd-data-dir", "etcd-client-port", "etcd-peer-port", "etcd-plain-http",
}

// subcommands are the netd commands with a help of their own; run (and
// netd --help) prints the whole usage and every flag. Every command reads
// --config: finishing the flags applies it.
var subcommands = map[string]subcommand{
	"status": {statusUsage, []string{"config", "metrics-address", "json"}},
	"join":   {joinUsage, []string{"config", "node-name", "root-dir", "pki-dir"}},
	"token":  {tokenUsage, []string{"config", "root-dir", "pki-dir", "rotate"}},
	"leave": {leaveUsage, append([]string{"config", "log-level", "datastore", "network-name",
		"node-id-file", "lease-dir", "cni-conf-dir", "cni-state-dir", "ipam-data-dir", "bridge", "bpffs"},
		etcdAccessFlags...)},
	"network show":   {networkShowUsage, append([]string{"config", "log-level", "network-name"}, etcdAccessFlags...)},
	"network delete": {networkDeleteUsage, append([]string{"config", "log-level", "network-name"}, etcdAccessFlags...)},
}

// printHelp prints cmd's help on w: its own text and flags when it has
// them, else the whole usage and every flag of fs.
func printHelp(w io.Writer, cmd string, fs *flag.FlagSet) {
	sub, ok := subcommands[cmd]
	if !ok {
		fmt.Fprint(w, usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		return
	}
	fmt.Fprint(w, sub.usage)
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	for _, name := range sub.flags {
		f := fs.Lookup(name)
		shown.Var(f.Value, f.Name, f.Usage)
		// Var takes the default from the value, which flags given before
		// --help have changed already.
		shown.Lookup(name).DefValue = f.DefValue
	}
	shown.SetOutput(w)
	shown.PrintDefaults()
}

// flagsFooter ends each subcommand's text: the flags it reads follow.
const flagsFooter = `
Flags it reads (it accepts netd's other flags too; netd --help lists them):
`

const statusUsage = `netd status: print this node's lease, its peers and whether the kernel
matches (asks the daemon on --metrics-address); exit 2 when something needs
attention or netd is still starting, 1 when netd does not answer.

Usage:
  netd status [flags]

Example:
  netd status --metrics-address=127.0.0.1:9472
  netd status --json
` + flagsFooter

const joinUsage = `netd join: get this node's etcd certificates from the node that runs the
embedded etcd (TOKEN: netd token there) and keep them in --pki-dir; netd
then uses that etcd without --etcd-endpoints.

Usage:
  netd join TOKEN [flags]

Example:
  netd join TOKEN --node-name=node2    # on node2, once; TOKEN: netd token on node1
` + flagsFooter

const tokenUsage = `netd token: print the join token of this node's embedded etcd (--rotate: a
new one; the old one stops working); another node joins with netd join TOKEN.

Usage:
  netd token [--rotate] [flags]

Example:
  netd token             # on node1, which runs the embedded etcd: prints TOKEN
  netd token --rotate    # a new TOKEN; the old one stops working
` + flagsFooter

const leaveUsage = `netd leave: give up this node's part of the network on purpose (stop netd
first; refused while containers are attached): release the lease in etcd,
remove the routes, VTEP, bridge, lease file and conflist.

Usage:
  netd leave [flags]

Example:
  netd leave --node-name=node2
` + flagsFooter

const networkShowUsage = `netd network show: print the network's config and leases in etcd.

Usage:
  netd network show [flags]

Example:
  netd network show --network-name=pods
` + flagsFooter

const networkDeleteUsage = `netd network delete: remove the network's config from etcd (refused while a
node holds a lease): then a netd may create it anew, e.g. in another --mode.

Usage:
  netd network delete [flags]

Example:
  netd network delete --network-name=pods
` + flagsFooter

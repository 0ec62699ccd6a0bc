package netd

import (
	"flag"
	"fmt"
	"path/filepath"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
)

// DefaultStateRoot holds netd's own state when --root-dir is not given:
// the embedded etcd's data, its certificates and the node ID.
const DefaultStateRoot = "/var/lib/berth"

// pathFlag is one of the files or directories netd uses: where it is on
// a machine (system) and under --root-dir (rel).
type pathFlag struct {
	name   string
	p      func(*Config) *string
	system string
	rel    string
	usage  string
}

// pathFlags are every file and directory of a node; --root-dir moves
// them all, each flag still overrides its own.
var pathFlags = []pathFlag{
	{"etcd-data-dir", func(c *Config) *string { return &c.EtcdDataDir }, DefaultStateRoot + "/etcd", "etcd", "embedded etcd: data directory"},
	{"pki-dir", func(c *Config) *string { return &c.PKIDir }, DefaultStateRoot + "/pki", "pki", "etcd TLS: the embedded etcd's CA, certificates and join token (0700), or what netd join fetched"},
	{"node-id-file", func(c *Config) *string { return &c.NodeIDFile }, DefaultStateRoot + "/node-id", "node-id", "this node's ID, generated at first start and checked with its lease: keep it with the node, never copy it to another"},
	{"lease-dir", func(c *Config) *string { return &c.LeaseDir }, lease.DefaultDir, "leases", "where to write the node lease file for the plugins"},
	{"cni-conf-dir", func(c *Config) *string { return &c.CNIConfDir }, DefaultCNIConfDir, "net.d", "where to write the network's conflist"},
	{"cni-state-dir", func(c *Config) *string { return &c.CNIStateDir }, conf.DefaultStateDir, "state", "the plugins' stateDir written into the conflist"},
	{"ipam-data-dir", func(c *Config) *string { return &c.IPAMDataDir }, conf.DefaultIPAMDataDir, "ipam", "berth-ipam's dataDir written into the conflist"},
}

// pathFlagsOn registers --root-dir and the path flags on fs; the returned
// function fills the paths that were not given, after fs.Parse, and makes
// relative ones absolute: netd writes some into the conflist, and the
// plugins, which run in the runtime's working directory, refuse relative
// ones.
func (c *Config) pathFlagsOn(fs *flag.FlagSet) (resolve func()) {
	fs.StringVar(&c.RootDir, "root-dir", "", "put all of this node's files under this directory, e.g. /srv/berth/node2 for one of several nodes on a machine: "+rootLayout()+"; each flag below still overrides its own (default: the system paths named by each flag)")
	for _, f := range pathFlags {
		fs.StringVar(f.p(c), f.name, "", fmt.Sprintf("%s (default %s, or <root-dir>/%s)", f.usage, f.system, f.rel))
	}
	return func() {
		for _, f := range pathFlags {
			p := f.p(c)
			switch {
			case *p != "":
			case c.RootDir != "":
				*p = filepath.Join(c.RootDir, f.rel)
			default:
				*p = f.system
			}
			if abs, err := filepath.Abs(*p); err == nil { // fails only without a working directory
				*p = abs
			}
		}
	}
}

// rootLayout lists what goes where under --root-dir.
func rootLayout() string {
	s := ""
	for i, f := range pathFlags {
		if i > 0 {
			s += ", "
		}
		s += f.rel + " (--" + f.name + ")"
	}
	return s
}

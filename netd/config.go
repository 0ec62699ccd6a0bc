// Package netd is berth's node daemon. It leases this node a subnet of
// the cluster network in etcd, tells the CNI plugins about it through
// the node lease file and a conflist, and keeps the kernel connected to
// every other node's subnet (vxlan or hostgw backend) in a reconcile loop:
// desired state = the leases in etcd, actual state = the kernel.
package netd

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
	"github.com/berthnet/berth/netd/registry"
)

// Config is what netd is told on its command line (or config file).
type Config struct {
	NodeName string
	// NodeIPs are the node's underlay addresses as given (--node-ip): at
	// most one per family, the first preferred (VXLAN runs over its
	// family). A family not given is found on the underlay interface.
	NodeIPs []netip.Addr
	Iface   string // "": the interface holding NodeIPs, or the default route's

	// Datastore is where the leases live: DatastoreEtcd (default) or
	// DatastoreKubernetes (the Nodes' podCIDRs and annotations).
	Datastore  string
	Kubeconfig string // kubernetes: "" means in-cluster (the pod's service account)

	EtcdEndpoints []string // none: start an embedded etcd on this node
	EtcdCAFile    string
	EtcdCertFile  string
	EtcdKeyFile   string
	EtcdPrefix    string
	// Embedded etcd (only without EtcdEndpoints).
	EtcdDataDir    string
	EtcdClientPort int
	EtcdPeerPort   int
	EtcdPlainHTTP  bool // serve plain HTTP instead of TLS with client certificates
	JoinPort       int  // where other nodes get their certificates (netd join)

	// Network holds the network flags as given: zero fields were not
	// given and are taken from etcd (or defaulted by the first netd).
	Network conf.Network

	// RootDir is --root-dir: where the paths below default to ("": the
	// system paths); see pathFlags.
	RootDir    string
	PKIDir     string // etcd certificates and the join token
	NodeIDFile string // this node's identity (see identity.go)

	LeaseTTL       time.Duration
	LeaseDir       string
	CNIConfDir     string
	CNIStateDir    string
	IPAMDataDir    string
	Bridge         string // written into the conflist (vxlan, hostgw)
	CNIVersion     string // of the conflist
	BPFFS          string // eBPF datapath: this node's BPF filesystem (fastpath.go)
	MetricsAddr    string
	ResyncInterval time.Duration
	LogLevel       string

	// BGP configures this node's speaker in bgp mode.
	BGP backend.BGP

	nodeNameFromHost bool // --node-name not given: the host name
}

// Datastores.
const (
	DatastoreEtcd       = "etcd"
	DatastoreKubernetes = "kubernetes"
)

// Defaults.
const (
	DefaultLeaseTTL       = 5 * time.Minute
	DefaultCNIConfDir     = "/etc/cni/net.d"
	DefaultMetricsAddr    = "127.0.0.1:9472"
	DefaultResyncInterval = 30 * time.Second
)

// Flags registers every option on fs, with its default and an example.
// The returned function finishes parsing: call it after fs.Parse; it
// applies the config file (--config) and checks the values.
func (c *Config) Flags(fs *flag.FlagSet) (finish func() error) {
	host, _ := os.Hostname()
	var endpoints, nodeIP, cidr, configFile string
	fs.StringVar(&configFile, "config", "", "JSON file of options: flag names as keys, e.g. {\"etcd-endpoints\": \"https://10.0.0.5:2379\", \"mode\": \"hostgw\"}; flags on the command line win")
	fs.StringVar(&c.NodeName, "node-name", host, "this node's unique name in the network, e.g. worker-3")
	fs.StringVar(&nodeIP, "node-ip", "", "addresses other nodes reach this node at, one per family, comma-separated, the first preferred (VXLAN runs over its family), e.g. 192.168.50.3 or 192.168.50.3,fd00:50::3 (default: the addresses of --iface, or of the default route's interface; a family not given is found on that interface)")
	fs.StringVar(&c.Iface, "iface", "", "underlay interface, e.g. eth0 (default: the one holding --node-ip, or the default route's)")

	fs.StringVar(&c.Datastore, "datastore", DatastoreEtcd, "where node subnets live: etcd, or kubernetes (each node's subnet is its Node's spec.podCIDRs from kube-controller-manager --allocate-node-cidrs; what peers need is in the Node's annotation "+kubeLeaseAnnotation+"; the etcd flags are ignored)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubernetes datastore: kubeconfig file, e.g. /etc/kubernetes/netd.kubeconfig (default: in-cluster, the pod's service account, else $KUBECONFIG)")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs, e.g. https://10.0.0.5:2379,https://10.0.0.6:2379 (default: start an embedded single-member etcd on this node that other nodes can use)")
	fs.StringVar(&c.EtcdCAFile, "etcd-cafile", "", "CA bundle to verify etcd's certificate, e.g. /etc/berth/etcd-ca.pem")
	fs.StringVar(&c.EtcdCertFile, "etcd-certfile", "", "client certificate for etcd, e.g. /etc/berth/etcd-client.pem")
	fs.StringVar(&c.EtcdKeyFile, "etcd-keyfile", "", "client key for etcd, e.g. /etc/berth/etcd-client-key.pem")
	fs.StringVar(&c.EtcdPrefix, "etcd-prefix", registry.DefaultPrefix, "root of berth's keys in etcd, e.g. /berth/v1")
	fs.IntVar(&c.EtcdClientPort, "etcd-client-port", 2379, "embedded etcd: client port, served on the node's addresses (--node-ip, both families) and 127.0.0.1")
	fs.IntVar(&c.EtcdPeerPort, "etcd-peer-port", 2380, "embedded etcd: peer port, served on 127.0.0.1 (single member)")
	fs.BoolVar(&c.EtcdPlainHTTP, "etcd-plain-http", false, "embedded etcd: serve plain HTTP without certificates instead of TLS with client certificates; anyone who reaches the port can then rewrite every lease: for a machine of your own only")
	fs.IntVar(&c.JoinPort, "join-port", 2378, "embedded etcd: port on the preferred --node-ip where other nodes get their etcd certificates with netd join TOKEN, e.g. 2378")

	n := &c.Network
	fs.StringVar(&n.Name, "network-name", conf.DefaultNetworkName, "network name: the CNI network name and lease file <lease-dir>/<name>.json, e.g. pods")
	fs.StringVar(&cidr, "network-cidr", "", "cluster network: an IPv4 prefix, an IPv6 prefix, or one of each comma-separated for dual-stack, as Kubernetes' --cluster-cidr, e.g. 10.244.0.0/16,fd00:244::/56 (default 10.244.0.0/16 when this netd creates the network; giving an IPv6 prefix to an IPv4 network that has none adds it)")
	fs.IntVar(&n.SubnetLen, "subnet-len", 0, fmt.Sprintf("prefix length of each node's IPv4 subnet, e.g. 26 (default %d when creating)", conf.DefaultSubnetLen))
	fs.IntVar(&n.SubnetLenV6, "subnet-len-v6", 0, fmt.Sprintf("prefix length of each node's IPv6 subnet, e.g. 80 (default %d when the network gets IPv6); the IPv6 network must hold as many subnets as the IPv4 one", conf.DefaultSubnetLenV6))
	fs.StringVar(&n.Mode, "mode", "", "vxlan, hostgw or bgp, e.g. hostgw (default vxlan when creating)")
	fs.IntVar(&n.VNI, "vni", 0, fmt.Sprintf("vxlan: VXLAN network identifier, e.g. 42 (default %d when creating); each vxlan network on a node needs its own", conf.DefaultVNI))
	fs.IntVar(&n.Port, "vxlan-port", 0, fmt.Sprintf("vxlan: UDP port, e.g. 4789 (default %d when creating)", conf.DefaultVXLANPort))
	fs.IntVar(&n.MTU, "mtu", 0, "container MTU, e.g. 1400 (default: underlay MTU, minus 50 in vxlan mode)")
	fs.Var(optBool{&n.IPMasq}, "ip-masq", "masquerade traffic leaving the network, e.g. --ip-masq=false (default true when creating)")
	fs.Var(optBool{&n.DirectRouting}, "direct-routing", "vxlan: plain routes to nodes on the same L2 segment, VXLAN to the rest, e.g. --direct-routing (default false when creating)")
	fs.StringVar(&n.Datapath, "datapath", "", "iptables, or ebpf: TC programs carry the containers' traffic past the bridge and netfilter on every node, e.g. --datapath=ebpf (default iptables when creating); ebpf is IPv4 only: refused with an IPv6 --network-cidr")
	fs.StringVar(&c.BPFFS, "bpffs", conf.DefaultBPFFS, "ebpf datapath: the BPF filesystem where this node's maps and programs are pinned, e.g. /sys/fs/bpf")

	resolvePaths := c.pathFlagsOn(fs)
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", DefaultLeaseTTL, "how long a node's subnet stays reserved after its netd stops renewing it; peers drop its routes then, e.g. 10m")
	fs.StringVar(&c.Bridge, "bridge", "", "vxlan/hostgw: the node bridge containers attach to, written into the conflist, e.g. berth1 (default berth0; give each network on a node its own)")
	fs.StringVar(&c.CNIVersion, "cni-version", conf.DefaultCNIVersion, "cniVersion of the conflist, e.g. 1.1.0 for a runtime that calls GC and STATUS (podman 4 and containerd 1.6/1.7 refuse 1.1.0 results)")
	fs.StringVar(&c.MetricsAddr, "metrics-address", DefaultMetricsAddr, "address for /metrics, /healthz and /status, e.g. 0.0.0.0:9472 (empty: off)")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", DefaultResyncInterval, "full reconcile at least this often, besides reacting to etcd and kernel events, e.g. 10s")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")

	bgpFinish := c.bgpFlags(fs)

	return func() error {
		if configFile != "" {
			if err := applyConfigFile(fs, configFile); err != nil {
				return err
			}
		}
		resolvePaths()
		c.nodeNameFromHost = true
		fs.Visit(func(f *flag.Flag) { c.nodeNameFromHost = c.nodeNameFromHost && f.Name != "node-name" })
		if endpoints != "" {
			c.EtcdEndpoints = strings.Split(endpoints, ",")
		}
		ips, err := parseNodeIPs(nodeIP)
		if err != nil {
			return err
		}
		c.NodeIPs = ips
		if err := bgpFinish(); err != nil {
			return err
		}
		if err := parseCIDRs(cidr, &c.Network); err != nil {
			return err
		}
		return c.Validate()
	}
}

// parseCIDRs reads --network-cidr: one prefix, or one of each family.
func parseCIDRs(s string, n *conf.Network) error {
	if s == "" {
		return nil
	}
	for _, item := range strings.Split(s, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(item))
		if err != nil {
			return fmt.Errorf("--network-cidr: %q is not a prefix like 10.244.0.0/16 or fd00:244::/56", item)
		}
		field := &n.CIDR
		if p.Addr().Is6() {
			field = &n.CIDRv6
		}
		if field.IsValid() {
			return fmt.Errorf("--network-cidr: %s and %s are of the same family; give at most one IPv4 and one IPv6 prefix", *field, p)
		}
		*field = p
	}
	return nil
}

// parseNodeIPs reads --node-ip: one address per family, the first
// preferred.
func parseNodeIPs(s string) ([]netip.Addr, error) {
	if s == "" {
		return nil, nil
	}
	var out []netip.Addr
	for _, item := range strings.Split(s, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(item))
		switch {
		case err != nil || a.Zone() != "":
			return nil, fmt.Errorf("--node-ip: %q is not an IP address", item)
		case a.Is4In6():
			return nil, fmt.Errorf("--node-ip: %s is an IPv4-mapped address; give %s", a, a.Unmap())
		case !a.IsGlobalUnicast():
			return nil, fmt.Errorf("--node-ip: %s is not a unicast address other nodes can send to (link-local, loopback and multicast addresses are not)", a)
		case len(out) == 1 && out[0].Is4() == a.Is4():
			return nil, fmt.Errorf("--node-ip: %s and %s are of the same family; give one address per family", out[0], a)
		case len(out) == 2:
			return nil, fmt.Errorf("--node-ip: %q: give at most two addresses, one per family", s)
		}
		out = append(out, a)
	}
	return out, nil
}

// Validate checks the values Flags could not check one by one.
func (c *Config) Validate() error {
	switch {
	case c.Datastore != DatastoreEtcd && c.Datastore != DatastoreKubernetes:
		return fmt.Errorf("--datastore: %q: use etcd or kubernetes", c.Datastore)
	case c.Datastore == DatastoreKubernetes && OpenKubernetes == nil:
		return errors.New("--datastore=kubernetes: this netd was built without the Kubernetes datastore; use the netd of berth's image (make image), or build it with `go build -tags kubernetes ./cmd/netd`")
	case c.NodeName == "":
		return errors.New("--node-name: empty; give this node a unique name")
	case cluster.CheckNodeName(c.NodeName) != nil:
		return fmt.Errorf("--node-name: %v (peers would ignore this node's lease)", cluster.CheckNodeName(c.NodeName))
	case c.LeaseTTL < 2*time.Second:
		return fmt.Errorf("--lease-ttl: %s is shorter than etcd's minimum of 2s", c.LeaseTTL)
	case c.ResyncInterval < 100*time.Millisecond:
		return fmt.Errorf("--resync-interval: %s is too short", c.ResyncInterval)
	case (c.EtcdCertFile == "") != (c.EtcdKeyFile == ""):
		return errors.New("--etcd-certfile and --etcd-keyfile go together")
	case c.EtcdPlainHTTP && len(c.EtcdEndpoints) > 0:
		return errors.New("--etcd-plain-http is for the embedded etcd, which runs without --etcd-endpoints; give http:// endpoints to reach an etcd in plain HTTP")
	}
	for _, ep := range c.EtcdEndpoints {
		// Not a URL, another scheme: no waiting would make it work.
		if _, err := parseEndpoint(ep); err != nil {
			return fmt.Errorf("--etcd-endpoints: %w", err)
		}
	}
	if c.Bridge != "" {
		if err := conf.ValidIfName("--bridge", c.Bridge); err != nil {
			return err
		}
	}
	if c.CNIVersion != "" {
		if err := conf.ValidCNIVersion("--cni-version", c.CNIVersion); err != nil {
			return err
		}
	}
	if err := c.Network.Validate(); err != nil {
		return fmt.Errorf("network flags: %w", err)
	}
	return nil
}

// applyConfigFile sets the flags named in a JSON file that were not set on
// the command line.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var values map[string]json.RawMessage
	if err := json.Unmarshal(data, &values); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, raw := range values {
		f := fs.Lookup(name)
		if f == nil {
			return fmt.Errorf("--config %s: unknown option %q (use the flag names of netd --help)", path, name)
		}
		if given[name] {
			continue
		}
		if js, ok := f.Value.(jsonValue); ok { // structured, e.g. "bgp-peers": [{...}]
			if err := js.SetJSON(raw); err != nil {
				return fmt.Errorf("--config %s: %s: %w", path, name, err)
			}
			continue
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber() // 4200000000 stays 4200000000, not 4.2e+09
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("--config %s: %s: %w", path, name, err)
		}
		s := fmt.Sprint(v)
		if list, ok := v.([]any); ok { // "etcd-endpoints": ["a", "b"]
			var parts []string
			for _, p := range list {
				parts = append(parts, fmt.Sprint(p))
			}
			s = strings.Join(parts, ",")
		}
		if err := fs.Set(name, s); err != nil {
			return fmt.Errorf("--config %s: %s: %w", path, name, err)
		}
	}
	return nil
}

// jsonValue is a flag whose config file value may be structured JSON.
type jsonValue interface {
	SetJSON(raw json.RawMessage) error
}

// optBool is a boolean flag that remembers whether it was given.
type optBool struct{ p **bool }

func (o optBool) String() string {
	if o.p == nil || *o.p == nil {
		return ""
	}
	return strconv.FormatBool(**o.p)
}

func (o optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*o.p = &v
	return nil
}

func (o optBool) IsBoolFlag() bool { return true }

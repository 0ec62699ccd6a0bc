package netd

import (
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("netd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c Config
	finish := c.Flags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return &c, finish()
}

func TestFlags(t *testing.T) {
	c, err := parse(t, "--node-name", "n1", "--etcd-endpoints", "http://a:2379,http://b:2379", "--network-cidr", "10.9.0.0/16",
		"--mode", "hostgw", "--ip-masq=false", "--node-ip", "192.168.50.1")
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "n1" || len(c.EtcdEndpoints) != 2 || c.Network.CIDR != netip.MustParsePrefix("10.9.0.0/16") ||
		c.Network.Mode != "hostgw" || c.Network.IPMasq == nil || *c.Network.IPMasq || len(c.NodeIPs) != 1 || c.NodeIPs[0] != netip.MustParseAddr("192.168.50.1") {
		t.Fatalf("parsed %+v", c)
	}
	// Network flags not given stay unset: a joining node adopts them.
	if c.Network.SubnetLen != 0 || c.Network.DirectRouting != nil || c.Network.VNI != 0 {
		t.Fatalf("defaults leaked into the network flags: %+v", c.Network)
	}
	if c.LeaseTTL != DefaultLeaseTTL || c.MetricsAddr != DefaultMetricsAddr || c.EtcdPrefix != "/berth/v1" || c.LeaseDir != "/run/berth" {
		t.Fatalf("defaults: %+v", c)
	}
	// The conflist's version: one every runtime in use accepts, unless asked.
	if c.CNIVersion != "1.0.0" {
		t.Fatalf("--cni-version default %q, want 1.0.0", c.CNIVersion)
	}
	if c, err := parse(t, "--node-name", "n1", "--cni-version", "1.1.0"); err != nil || c.CNIVersion != "1.1.0" {
		t.Fatalf("--cni-version 1.1.0: %v", err)
	}
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--node-ip", "fe80::1"}, "--node-ip: fe80::1 is not a unicast address"},
		{[]string{"--node-ip", "10.0.0.1,10.0.0.2"}, "same family"},
		{[]string{"--node-ip", "10.0.0.1,fd00::1,fd00::2"}, "--node-ip"},
		{[]string{"--node-ip", "::ffff:10.0.0.1"}, "IPv4-mapped"},
		{[]string{"--node-ip", "node1"}, "not an IP address"},
		{[]string{"--network-cidr", "10.1.0.0/16,10.2.0.0/16"}, "same family"},
		{[]string{"--network-cidr", "fd00::1/64"}, "cidrV6: fd00::1/64 has host bits set"},
		{[]string{"--network-cidr", "10.1.0.0/16,fd00::/60", "--subnet-len", "24", "--subnet-len-v6", "64"}, "cidrV6: fd00::/60 holds 16 IPv6 node subnets of /64, fewer than the 256 IPv4 subnets"},
		{[]string{"--subnet-len-v6", "127"}, "subnetLenV6:"},
		{[]string{"--bgp-peers", "fd00::1:64600"}, "brackets"},
		{[]string{"--bgp-peers", "[fd00::1]64600"}, "[IPV6]:ASN"},
		{[]string{"--bgp-peers", "[fd00::1]:x"}, "not an AS number"},
		{[]string{"--network-cidr", "10.0.0.0"}, "--network-cidr"},
		{[]string{"--mode", "ipip"}, "mode:"},
		{[]string{"--subnet-len", "31"}, "subnetLen:"},
		{[]string{"--mode", "hostgw", "--vni", "3"}, "vni: only used in vxlan mode"},
		{[]string{"--lease-ttl", "1s"}, "--lease-ttl"},
		{[]string{"--etcd-certfile", "c.pem"}, "--etcd-keyfile"},
		// Endpoints that can never work are flag errors, not something
		// to wait for.
		{[]string{"--etcd-endpoints", "10.0.0.5:2379"}, `--etcd-endpoints: "10.0.0.5:2379" is not a URL like https://10.0.0.5:2379`},
		{[]string{"--etcd-endpoints", "ftp://10.0.0.5:2379"}, `--etcd-endpoints: ftp://10.0.0.5:2379: scheme "ftp"; use http:// or https://`},
		{[]string{"--etcd-endpoints", "https://10.0.0.5:2379,"}, `--etcd-endpoints: "" is not a URL`},
		{[]string{"--etcd-endpoints", "https://10.0.0.5:2379, https://10.0.0.6:2379"}, `--etcd-endpoints: " https://10.0.0.6:2379" is not a URL`},
		{[]string{"--node-name", ""}, "--node-name"},
		{[]string{"--cni-version", "2.0.0"}, "--cni-version"},
		{[]string{"--datapath", "ebpf", "--network-cidr", "10.1.0.0/16,fd00::/56"}, `datapath: "ebpf" handles IPv4 only, and the network has IPv6`},
		{[]string{"--datapath", "ebpf", "--network-cidr", "fd00::/56"}, `datapath: "ebpf" handles IPv4 only`},
		{[]string{"--datapath", "xdp"}, "datapath:"},
		{[]string{"--datastore", "consul"}, `--datastore: "consul": use etcd or kubernetes`},
		// The test binary, as cmd/netd without the kubernetes tag, lacks it.
		{[]string{"--datastore", "kubernetes"}, "built without the Kubernetes datastore"},
	}
	for _, tt := range tests {
		_, err := parse(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want an error about %s", tt.args, err, tt.want)
		}
	}
}

// The config file fills what the command line leaves out.
func TestConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netd.json")
	os.WriteFile(path, []byte(`{"node-name": "from-file", "mode": "hostgw", "etcd-endpoints": ["http://a:2379", "http://b:2379"],
		"lease-ttl": "1m", "direct-routing": false, "subnet-len": 26}`), 0o644)
	c, err := parse(t, "--config", path, "--node-name", "from-flag")
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "from-flag" || c.Network.Mode != "hostgw" || len(c.EtcdEndpoints) != 2 || c.LeaseTTL != time.Minute || c.Network.SubnetLen != 26 {
		t.Fatalf("parsed %+v", c)
	}
	os.WriteFile(path, []byte(`{"nodename": "x"}`), 0o644)
	if _, err := parse(t, "--config", path); err == nil || !strings.Contains(err.Error(), `unknown option "nodename"`) {
		t.Fatalf("unknown key: %v", err)
	}
}

// --root-dir moves every file of the node; each path flag still wins.
func TestRootDir(t *testing.T) {
	c, err := parse(t, "--root-dir", "/srv/n2", "--cni-conf-dir", "/etc/cni/net.d")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{"etcd": c.EtcdDataDir, "pki": c.PKIDir, "id": c.NodeIDFile, "lease": c.LeaseDir,
		"conf": c.CNIConfDir, "state": c.CNIStateDir, "ipam": c.IPAMDataDir}
	want := map[string]string{"etcd": "/srv/n2/etcd", "pki": "/srv/n2/pki", "id": "/srv/n2/node-id", "lease": "/srv/n2/leases",
		"conf": "/etc/cni/net.d", "state": "/srv/n2/state", "ipam": "/srv/n2/ipam"}
	for k := range want {
		if got[k] != want[k] {
			t.Errorf("%s: %q, want %q", k, got[k], want[k])
		}
	}
	// Relative paths are the working directory's: the conflist gets them
	// absolute, as the plugins want them.
	c, err = parse(t, "--root-dir", "n2", "--ipam-data-dir", "./ipam")
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if c.CNIStateDir != filepath.Join(wd, "n2/state") || c.LeaseDir != filepath.Join(wd, "n2/leases") || c.IPAMDataDir != filepath.Join(wd, "ipam") {
		t.Errorf("relative paths: stateDir %q, leaseDir %q, ipam dataDir %q, want them under %s", c.CNIStateDir, c.LeaseDir, c.IPAMDataDir, wd)
	}
	c, err = parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdDataDir != "/var/lib/berth/etcd" || c.PKIDir != "/var/lib/berth/pki" || c.NodeIDFile != "/var/lib/berth/node-id" ||
		c.LeaseDir != "/run/berth" || c.CNIConfDir != "/etc/cni/net.d" || c.CNIStateDir != "/run/berth" || c.IPAMDataDir != "/var/lib/cni/networks" {
		t.Errorf("system defaults: %+v", c)
	}
}

// --network-cidr and --node-ip take one value per family, as Kubernetes'
// --cluster-cidr and kubelet's --node-ip do; --bgp-peers takes IPv6
// routers in brackets.
func TestDualStackFlags(t *testing.T) {
	c, err := parse(t, "--network-cidr", "10.244.0.0/16,fd00:244::/56", "--subnet-len-v6", "80", "--node-ip", "fd00:50::3,192.168.50.3",
		"--bgp-peers", "192.168.50.254:64600,[fd00:50::254]:64601:pw")
	if err != nil {
		t.Fatal(err)
	}
	n := c.Network
	if n.CIDR != netip.MustParsePrefix("10.244.0.0/16") || n.CIDRv6 != netip.MustParsePrefix("fd00:244::/56") || n.SubnetLenV6 != 80 || n.SubnetLen != 0 {
		t.Errorf("network %+v", n)
	}
	if len(c.NodeIPs) != 2 || c.NodeIPs[0] != netip.MustParseAddr("fd00:50::3") || c.NodeIPs[1] != netip.MustParseAddr("192.168.50.3") {
		t.Errorf("node IPs %v", c.NodeIPs)
	}
	p := c.BGP.Peers
	if len(p) != 2 || p[1].Address != netip.MustParseAddr("fd00:50::254") || p[1].ASN != 64601 || p[1].Password != "pw" || p[0].ASN != 64600 {
		t.Errorf("bgp peers %+v", p)
	}
	c, err = parse(t, "--network-cidr", "fd00:244::/48")
	if err != nil || c.Network.CIDR.IsValid() || c.Network.CIDRv6 != netip.MustParsePrefix("fd00:244::/48") {
		t.Fatalf("IPv6-only: %+v %v", c, err)
	}
	if n := c.Network.WithDefaults(); n.CIDR.IsValid() || n.SubnetLenV6 != 64 || n.SubnetLen != 0 {
		t.Errorf("IPv6-only defaults %+v", n)
	}
}

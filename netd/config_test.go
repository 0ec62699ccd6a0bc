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
		c.Network.Mode != "hostgw" || c.Network.IPMasq == nil || *c.Network.IPMasq || c.NodeIP != netip.MustParseAddr("192.168.50.1") {
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
		{[]string{"--node-ip", "fd00::1"}, "--node-ip"},
		{[]string{"--network-cidr", "10.0.0.0"}, "--network-cidr"},
		{[]string{"--mode", "ipip"}, "mode:"},
		{[]string{"--subnet-len", "31"}, "subnetLen:"},
		{[]string{"--mode", "hostgw", "--vni", "3"}, "vni: only used in vxlan mode"},
		{[]string{"--lease-ttl", "1s"}, "--lease-ttl"},
		{[]string{"--etcd-certfile", "c.pem"}, "--etcd-keyfile"},
		{[]string{"--node-name", ""}, "--node-name"},
		{[]string{"--cni-version", "2.0.0"}, "--cni-version"},
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
	c, err = parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdDataDir != "/var/lib/berth/etcd" || c.PKIDir != "/var/lib/berth/pki" || c.NodeIDFile != "/var/lib/berth/node-id" ||
		c.LeaseDir != "/run/berth" || c.CNIConfDir != "/etc/cni/net.d" || c.CNIStateDir != "/run/berth" || c.IPAMDataDir != "/var/lib/cni/networks" {
		t.Errorf("system defaults: %+v", c)
	}
}

package bgp_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/internal/testenv"
)

const nodeIP, outsideIP = "192.0.2.2", "192.0.2.1"

func TestRoutedAttachment(t *testing.T) {
	testenv.BinDir(t, "berth-bgp")
	node, outside := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, node, "eth0", nodeIP+"/24", outside, "eth0", outsideIP+"/24")
	leaseDir, stateDir, dataDir := t.TempDir(), t.TempDir(), t.TempDir()
	datapath, bpffs := "", ""
	if testenv.Datapath() == "ebpf" {
		bpffs = testenv.BPFFS(t)
		datapath = fmt.Sprintf(`"datapath":"ebpf","bpffs":%q,`, bpffs)
	}
	list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"bgp","plugins":[{"type":"berth-bgp","leaseDir":%q,
		"stateDir":%q,%s"ipam":{"type":"berth-ipam","dataDir":%q},"capabilities":{"portMappings":true}}]}`, leaseDir, stateDir, datapath, dataDir)
	rt := testenv.NewRuntime(t, node, list)
	snapshot := func() string { return testenv.Snapshot(t, node, stateDir, dataDir, bpffs) }

	c1 := &testenv.Attachment{ID: "b1", Netns: testenv.NewNS(t),
		Caps: map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}}
	c2 := &testenv.Attachment{ID: "b2", Netns: testenv.NewNS(t)}
	var ce *types.Error
	if _, err := rt.Add(c1); !errors.As(err, &ce) || ce.Code != 11 {
		t.Fatalf("ADD without lease: %v, want 11", err)
	}
	before := snapshot()
	err := lease.Write(lease.Path(leaseDir, "bgp"), &lease.Node{Network: "bgp", Mode: lease.ModeBGP,
		NetworkCIDR: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.0/24"),
		MTU: 1500, IPMasq: true, NodeName: "n1", NodeIP: netip.MustParseAddr(nodeIP), Expires: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
	ip1, ip2 := r1.IPs[0].Address.IP.String(), r2.IPs[0].Address.IP.String()
	if ones, _ := r1.IPs[0].Address.Mask.Size(); ones != 32 || !strings.HasPrefix(ip1, "10.244.3.") {
		t.Errorf("address %s, want a /32 of the node block", r1.IPs[0].Address.String())
	}
	out, _ := testenv.InNS(c1.Netns, "ip", "route")
	if !strings.Contains(string(out), "default via 169.254.1.1 dev eth0") {
		t.Errorf("container routes:\n%s", out)
	}
	out, _ = testenv.InNS(node, "ip", "route")
	if !strings.Contains(string(out), ip1+" dev bv") {
		t.Errorf("node has no /32 route to the container:\n%s", out)
	}
	if links, _ := testenv.InNS(node, "ip", "-o", "link", "show", "type", "bridge"); len(links) != 0 {
		t.Errorf("routed mode made a bridge: %s", links)
	}

	if err := testenv.Ping(c1.Netns, ip2); err != nil {
		t.Errorf("container to container through the node: %v", err)
	}
	testenv.Serve(t, outside, outsideIP+":9000")
	if src, err := testenv.Dial(c2.Netns, outsideIP+":9000"); err != nil || src != nodeIP {
		t.Errorf("leaving the cluster: seen as %q, %v; want %s", src, err, nodeIP)
	}
	testenv.Serve(t, c1.Netns, "0.0.0.0:80")
	for _, from := range []struct {
		name string
		src  ns.NetNS
	}{{"outside", outside}, {"localhost", node}, {"hairpin", c1.Netns}} {
		addr := nodeIP + ":8080"
		if from.name == "localhost" {
			addr = "127.0.0.1:8080"
		}
		if _, err := testenv.Dial(from.src, addr); err != nil {
			t.Errorf("published port from %s: %v", from.name, err)
		}
	}
	if err := rt.Check(c1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	testenv.InNS(node, "ip", "route", "del", ip1+"/32")
	if err := rt.Check(c1); !errors.As(err, &ce) || ce.Code != 104 {
		t.Errorf("CHECK with the node route gone: %v, want 104", err)
	}
	for _, c := range []*testenv.Attachment{c1, c2, c1} {
		if err := rt.Del(c); err != nil {
			t.Fatalf("DEL %s: %v", c.ID, err)
		}
	}
	if after := snapshot(); after != before {
		t.Errorf("leftovers:\n%s\nvs\n%s", after, before)
	}
}

package attach_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

// The reference portmap plugin chained after berth-bridge takes berth's
// result as its prevResult and publishes the port itself.
func TestInteropReferencePortmapAfterBerthBridge(t *testing.T) {
	testenv.ReferenceCNIDir(t, "portmap")
	n := newNode(t)
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"interop","plugins":[
		{"type":"berth-bridge","isDefaultGateway":true,"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.80.0.0/24"}]]}},
		{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`, n.stateDir, n.dataDir)
	rt := testenv.NewRuntime(t, n.ns, list)
	c := container(t, "pm1", port(8088, 80, "tcp"))
	if _, err := rt.Add(c); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	testenv.Serve(t, c.Netns, "0.0.0.0:80")
	if _, err := testenv.Dial(n.outside, nodeIP+":8088"); err != nil {
		out, _ := testenv.InNS(n.ns, "iptables-save")
		t.Errorf("port published by reference portmap: %v\n%s", err, out)
	}
	if err := rt.Del(c); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestStatus(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("status", "berth0", "10.82.0.0/24", ""))
	if err := rt.Status(); err != nil {
		t.Fatalf("STATUS of a usable network: %v", err)
	}
	// An IPAM store that cannot be written: STATUS says the plugin is unavailable.
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	n.dataDir = filepath.Join(blocker, "ipam")
	broken := testenv.NewRuntime(t, n.ns, n.conflist("status", "berth0", "10.82.0.0/24", ""))
	err := broken.Status()
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != 50 {
		t.Errorf("STATUS with a broken store: %v, want code 50", err)
	}
}

// The reference bandwidth plugin chained after berth-bridge, as the
// conflists of Calico and of many clusters have it (berth itself
// declaring no bandwidth capability): its egress limit takes the host
// veth's `ingress` qdisc and redirects what the pod sends to an ifb
// device. On the iptables datapath with "guardHook": "tcx" that works
// beside berth's source guard, both limits hold, and the guard still
// drops a shaped pod's forged packets (it runs before the redirect: the
// ifb hands packets back past every ingress hook). With the default
// guard, a tc filter, and on the eBPF datapath (whose fast path would
// skip the plugin's qdiscs), the plugin's ADD fails (README).
func TestInteropReferenceBandwidthAfterBerthBridge(t *testing.T) {
	testenv.ReferenceCNIDir(t, "bandwidth")
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 not installed")
	}
	n := newNode(t)
	conflist := func(name, subnet, hook string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[
		{"type":"berth-bridge","bridge":%q,"isDefaultGateway":true,"stateDir":%q,%s%s"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":%q}]]}},
		{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`, name, "br-"+name, n.stateDir, n.datapath(), hook, n.dataDir, subnet)
	}
	before := n.snapshot(t)
	const ingress, egress = 20e6, 10e6
	// A burst of its own: the plugin overflows on the 4294967295 that
	// stands for none (its tbf would pass nothing).
	limits := map[string]any{"ingressRate": ingress, "ingressBurst": 2e6, "egressRate": egress, "egressBurst": 2e6}

	// The plugin's ADD fails beside a clsact qdisc.
	refused := testenv.NewRuntime(t, n.ns, conflist("bwtc", "10.84.0.0/24", ""))
	probe := pod(t, "probe", limits)
	if _, err := refused.Add(probe); err == nil || !strings.Contains(err.Error(), "create ingress qdisc") {
		t.Errorf("ADD with the guard on tc: %v, want the bandwidth plugin's create ingress qdisc error", err)
	}
	if err := refused.Del(probe); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if d := diffIgnoringBridge(before, n.snapshot(t)); d != "" {
		t.Errorf("left after DEL:\n%s", d)
	}
	if n.bpffs != "" {
		return
	}

	rt := testenv.NewRuntime(t, n.ns, conflist("bwref", "10.83.0.0/24", `"guardHook":"tcx",`))
	before = n.snapshot(t)
	shaped := pod(t, "shaped", limits)
	res, err := rt.Add(shaped)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	victim := pod(t, "victim", nil)
	vres, err := rt.Add(victim)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if err := rt.Check(shaped); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	ip := ipOf(t, res)
	iperfServer(t, shaped.Netns)
	for _, m := range []struct {
		what    string
		reverse bool
		limit   float64
	}{{"into the pod", false, ingress}, {"out of the pod", true, egress}} {
		// Shaped, and flowing: the accuracy of tbf is the plugin's
		// (berth's own is measured in TestBandwidthShaping); unshaped,
		// a stream runs at Gbit/s.
		// The first stream into the pod sometimes carries nothing
		// (0.0 Mbit/s, twice in about ten runs; not understood yet):
		// the limit must show within 3 tries, as in
		// TestBandwidthShaping. Without shaping every try runs at
		// Gbit/s; without traffic, every try shows 0.
		var got float64
		for try := 0; try < 3; try++ {
			if got = iperf(t, n.ns, ip, m.reverse); got <= 1.5*m.limit && got >= 0.3*m.limit {
				break
			}
			t.Logf("%s: %.1f Mbit/s, off the limit %.0f; again", m.what, got/1e6, m.limit/1e6)
		}
		if got > 1.5*m.limit || got < 0.3*m.limit {
			t.Errorf("%s: %.1f Mbit/s, want about the limit %.0f", m.what, got/1e6, m.limit/1e6)
		}
		t.Logf("%s: %.1f Mbit/s (limit %.0f)", m.what, got/1e6, m.limit/1e6)
	}

	// A shaped pod's packets with the victim's address as source must
	// not arrive: the guard judges them before the ifb takes them.
	var mac, vmac net.HardwareAddr
	mac, _ = net.ParseMAC(containerIf(res).Mac)
	vmac, _ = net.ParseMAC(containerIf(vres).Mac)
	own, vip := netip.MustParseAddr(ip), netip.MustParseAddr(ipOf(t, vres))
	rx, _ := rawSocket(t, victim.Netns)
	// Both must know each other's MAC for the own packet to be taken.
	if err := testenv.Ping(shaped.Netns, vip.String()); err != nil {
		t.Fatal(err)
	}
	sendFrame(t, shaped.Netns, ethFrame(vmac, mac, unix.ETH_P_IP, udp4(vip, vip, "m-forged")))
	sendFrame(t, shaped.Netns, ethFrame(vmac, mac, unix.ETH_P_IP, udp4(own, vip, "m-own")))
	got := received(rx, 500*time.Millisecond, []string{"m-forged", "m-own"})
	if got["m-forged"] || !got["m-own"] {
		t.Errorf("from the shaped pod: the forged packet arrived %v (want false), its own %v (want true)", got["m-forged"], got["m-own"])
	}

	for _, p := range []*testenv.Attachment{shaped, victim} {
		if err := rt.Del(p); err != nil {
			t.Errorf("DEL %s: %v", p.ID, err)
		}
	}
	if d := diffIgnoringBridge(before, n.snapshot(t)); d != "" {
		t.Errorf("left after DEL:\n%s", d)
	}
}

// Any IPAM plugin but berth-ipam is exec'd the CNI way: the reference
// host-local gives the container its address, CHECK asks it too, and DEL
// gives the address back to it (its reservation file goes), leaving the
// node as it was.
func TestInteropReferenceHostLocalIPAM(t *testing.T) {
	testenv.ReferenceCNIDir(t, "host-local")
	n := newNode(t)
	hostLocalDir := t.TempDir()
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"hostlocal","plugins":[
		{"type":"berth-bridge","bridge":"br-hl","isDefaultGateway":true,"stateDir":%q,%s
		 "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.85.0.0/24"}]]},
		 "capabilities":{"portMappings":true}}]}`, n.stateDir, n.datapath(), hostLocalDir)
	rt := testenv.NewRuntime(t, n.ns, list)
	before := n.snapshot(t)
	c := container(t, "hl1", port(8089, 80, "tcp"))
	res, err := rt.Add(c)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := ipOf(t, res)
	reservation := filepath.Join(hostLocalDir, "hostlocal", ip)
	if !strings.HasPrefix(ip, "10.85.0.") {
		t.Errorf("address %s, want one of host-local's range 10.85.0.0/24", ip)
	}
	if _, err := os.Stat(reservation); err != nil {
		t.Errorf("host-local has no reservation of %s: %v", ip, err)
	}
	if err := testenv.Ping(c.Netns, "10.85.0.1"); err != nil {
		t.Errorf("container to its gateway: %v", err)
	}
	if err := rt.Check(c); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := rt.Del(c); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := os.Stat(reservation); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after DEL, host-local's reservation of %s: %v, want it gone", ip, err)
	}
	if d := diffIgnoringBridge(before, n.snapshot(t)); d != "" {
		t.Errorf("left after DEL:\n%s", d)
	}
}

package attach_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/bpfattach"
	"github.com/berthnet/berth/internal/srcguard"
	"github.com/berthnet/berth/internal/testenv"
)

// node is a network namespace standing in for a machine, linked to an
// "outside" namespace 192.0.2.1 that plays the rest of the world.
type node struct {
	ns, outside ns.NetNS
	stateDir    string
	dataDir     string
	bpffs       string // the node's BPF filesystem, when the tests run on the eBPF datapath
}

const nodeIP, outsideIP = "192.0.2.2", "192.0.2.1"

func newNode(t *testing.T) *node {
	t.Helper()
	testenv.BinDir(t, "berth-bridge", "berth-ipam")
	n := &node{ns: testenv.NewNS(t), outside: testenv.NewNS(t), stateDir: t.TempDir(), dataDir: t.TempDir()}
	testenv.Link(t, n.ns, "eth0", nodeIP+"/24", n.outside, "eth0", outsideIP+"/24")
	if testenv.Datapath() == "ebpf" {
		n.bpffs = testenv.BPFFS(t)
	}
	return n
}

// datapath is the plugin fields of the datapath under test.
func (n *node) datapath() string {
	if n.bpffs == "" {
		return ""
	}
	return fmt.Sprintf(`"datapath":"ebpf","bpffs":%q,`, n.bpffs)
}

// conflist is a berth-bridge network; extra is spliced into the plugin.
func (n *node) conflist(name, bridge, subnet, extra string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"berth-bridge","bridge":%q,
		"isDefaultGateway":true,"stateDir":%q,%s%s
		"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":%q}]]},
		"capabilities":{"portMappings":true,"ips":true,"mac":true}}]}`,
		name, bridge, n.stateDir, n.datapath(), extra, n.dataDir, subnet)
}

// conflistPlugin is the same network as one plugin config, for direct exec.
func (n *node) conflistPlugin(name, bridge, subnet string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"berth-bridge","bridge":%q,"stateDir":%q,%s
		"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":%q}]]}}`, name, bridge, n.stateDir, n.datapath(), n.dataDir, subnet)
}

func (n *node) snapshot(t *testing.T) string {
	return testenv.Snapshot(t, n.ns, n.stateDir, n.dataDir, n.bpffs)
}

// checkNothingLeft fails t when the node differs from before other than
// by the network's bridge, which DEL leaves in place.
func (n *node) checkNothingLeft(t *testing.T, before, bridge string) {
	t.Helper()
	if after := strings.Replace(n.snapshot(t), "link "+bridge+"\n", "", 1); after != before {
		t.Errorf("leftovers:\n%s", testenv.Diff(before, after))
	}
}

func container(t *testing.T, id string, ports ...map[string]any) *testenv.Attachment {
	a := &testenv.Attachment{ID: id, Netns: testenv.NewNS(t)}
	if len(ports) > 0 {
		a.Caps = map[string]any{"portMappings": ports}
	}
	return a
}

func port(host, cont int, proto string) map[string]any {
	return map[string]any{"hostPort": host, "containerPort": cont, "protocol": proto}
}

func ipOf(t *testing.T, res *current.Result) string {
	t.Helper()
	if len(res.IPs) == 0 {
		t.Fatalf("result has no IP: %+v", res)
	}
	return res.IPs[0].Address.IP.String()
}

func TestBridgeEndToEnd(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("e2e", "berth0", "10.10.0.0/24", ""))
	before := n.snapshot(t)

	c1 := container(t, "c1", port(8080, 80, "tcp"))
	c2 := container(t, "c2")
	r1, r2 := rt.MustAdd(t, c1), rt.MustAdd(t, c2)
	ip1, ip2 := ipOf(t, r1), ipOf(t, r2)
	if len(r1.Interfaces) != 3 || r1.Interfaces[2].Sandbox != c1.Netns.Path() {
		t.Errorf("interfaces = %+v", r1.Interfaces)
	}
	testenv.Serve(t, c1.Netns, "0.0.0.0:80")
	testenv.Serve(t, n.outside, outsideIP+":9000")

	t.Run("containers reach each other and the gateway", func(t *testing.T) {
		for _, c := range []struct {
			from ns.NetNS
			to   string
		}{{c1.Netns, ip2}, {c2.Netns, ip1}, {c1.Netns, "10.10.0.1"}} {
			if err := testenv.Ping(c.from, c.to); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("outbound traffic leaves masqueraded with the node address", func(t *testing.T) {
		src, err := testenv.Dial(c2.Netns, outsideIP+":9000")
		if err != nil || src != nodeIP {
			t.Errorf("outside saw %q, %v; want %s", src, err, nodeIP)
		}
	})
	t.Run("published port answers on the node address", func(t *testing.T) {
		src, err := testenv.Dial(n.outside, nodeIP+":8080")
		if err != nil || src != outsideIP {
			t.Errorf("container saw %q, %v; want the client %s unchanged", src, err, outsideIP)
		}
	})
	t.Run("published port answers on localhost", func(t *testing.T) {
		if _, err := testenv.Dial(n.ns, "127.0.0.1:8080"); err != nil {
			t.Error(err)
		}
	})
	t.Run("hairpin: a container reaches its own published port", func(t *testing.T) {
		if _, err := testenv.Dial(c1.Netns, nodeIP+":8080"); err != nil {
			t.Error(err)
		}
		if _, err := testenv.Dial(c2.Netns, nodeIP+":8080"); err != nil {
			t.Errorf("neighbour via published port: %v", err)
		}
	})
	t.Run("CHECK passes on an intact attachment", func(t *testing.T) {
		if err := rt.Check(c1); err != nil {
			t.Error(err)
		}
	})
	t.Run("a second ADD is refused and keeps the first", func(t *testing.T) {
		_, err := rt.Add(c2)
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != 103 {
			t.Errorf("second ADD: %v, want code 103", err)
		}
		if err := rt.Check(c2); err != nil {
			t.Errorf("first ADD damaged: %v", err)
		}
	})
	t.Run("DEL leaves nothing behind and is idempotent", func(t *testing.T) {
		for _, c := range []*testenv.Attachment{c1, c2, c1} {
			if err := rt.Del(c); err != nil {
				t.Fatalf("DEL %s: %v", c.ID, err)
			}
		}
		// The bridge goes with the network's last container: its address
		// and subnet route would block a new network reusing either.
		if after := n.snapshot(t); after != before {
			t.Errorf("leftovers:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

func TestDelAfterNetnsGone(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("gone", "berth0", "10.11.0.0/24", ""))
	before := n.snapshot(t)
	c := container(t, "c1", port(8081, 80, "udp"))
	if _, err := rt.Add(c); err != nil {
		t.Fatal(err)
	}
	c.Netns.Close()
	if err := rt.Del(c); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("leftovers:\n%s\nvs\n%s", after, before)
	}
}

func TestIsolationBetweenNetworks(t *testing.T) {
	n := newNode(t)
	a := testenv.NewRuntime(t, n.ns, n.conflist("net-a", "berth-a", "10.20.0.0/24", ""))
	b := testenv.NewRuntime(t, n.ns, n.conflist("net-b", "berth-b", "10.21.0.0/24", ""))
	open := testenv.NewRuntime(t, n.ns, n.conflist("net-c", "berth-c", "10.22.0.0/24", `"isolation":false,`))
	ca, cb, cc := container(t, "a1"), container(t, "b1"), container(t, "c1")
	ra, err := a.Add(ca)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Add(cb)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open.Add(cc); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, cb.Netns, "0.0.0.0:80")
	testenv.Serve(t, ca.Netns, "0.0.0.0:80")
	if _, err := testenv.Dial(ca.Netns, ipOf(t, rb)+":80"); err == nil {
		t.Error("container on net-a reached net-b")
	}
	if _, err := testenv.Dial(cb.Netns, ipOf(t, ra)+":80"); err == nil {
		t.Error("container on net-b reached net-a")
	}
	if _, err := testenv.Dial(cc.Netns, ipOf(t, ra)+":80"); err == nil {
		t.Error("a non-isolated network reached an isolated one")
	}
	testenv.Serve(t, n.outside, outsideIP+":9000")
	if _, err := testenv.Dial(ca.Netns, outsideIP+":9000"); err != nil {
		t.Errorf("isolated network cannot reach the outside: %v", err)
	}
	for _, c := range []struct {
		rt *testenv.Runtime
		a  *testenv.Attachment
	}{{a, ca}, {b, cb}, {open, cc}} {
		if err := c.rt.Del(c.a); err != nil {
			t.Error(err)
		}
	}
}

func TestCheckDetectsTampering(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("chk", "berth0", "10.30.0.0/24", ""))
	tests := []struct {
		name   string
		tamper func(t *testing.T, c *testenv.Attachment, res *current.Result)
	}{
		{"address removed", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			mustRun(t, c.Netns, "ip", "addr", "del", res.IPs[0].Address.String(), "dev", "eth0")
		}},
		{"route removed", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			mustRun(t, c.Netns, "ip", "route", "del", "default")
		}},
		// The source guard (iptables datapath) or from_container (eBPF).
		{"anti-spoofing program removed", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			if n.bpffs != "" {
				mustRun(t, n.ns, "tc", "filter", "del", "dev", res.Interfaces[1].Name, "ingress", "pref", "1")
				return
			}
			removeGuard(t, n.ns, res.Interfaces[1].Name)
		}},
		// The bridge's layer, which drops frames that skipped it
		// (srcguard.Require).
		{"anti-spoofing program of another build", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			removeGuard(t, n.ns, res.Interfaces[1].Name)
			passAllGuard(t, n.ns, res.Interfaces[1].Name, true)
		}},
		{"host veth out of the guarded group", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			mustRun(t, n.ns, "ip", "link", "set", res.Interfaces[1].Name, "group", "0")
		}},
		{"bridge learning from link-local frames", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			mustRun(t, n.ns, "ip", "link", "set", "berth0", "type", "bridge", "no_linklocal_learn", "0")
		}},
		{"host veth's own IPv4 open", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			mustRun(t, n.ns, "sysctl", "-qw", "net.ipv4.conf."+res.Interfaces[1].Name+".rp_filter=0")
		}},
		{"bridge table deleted", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			err := n.ns.Do(func(ns.NetNS) error {
				nc, err := nftables.New()
				if err != nil {
					return err
				}
				nc.DelTable(&nftables.Table{Name: srcguard.BridgeTable, Family: nftables.TableFamilyBridge})
				return nc.Flush()
			})
			if err != nil {
				t.Fatal(err)
			}
		}},
		{"host veth removed", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			mustRun(t, n.ns, "ip", "link", "del", res.Interfaces[1].Name)
		}},
		{"masquerade rule removed", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			out, _ := testenv.InNS(n.ns, "iptables-save", "-t", "nat")
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "-j MASQUERADE") && strings.HasPrefix(l, "-A BERTH-NAT-") && !strings.Contains(l, "ctstate") {
					mustRun(t, n.ns, "sh", "-c", "iptables -t nat "+strings.Replace(l, "-A ", "-D ", 1))
					return
				}
			}
			t.Fatal("no masquerade rule found")
		}},
		{"port mapping removed", func(t *testing.T, c *testenv.Attachment, res *current.Result) {
			out, _ := testenv.InNS(n.ns, "iptables-save", "-t", "nat")
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "-A BERTH-DN-") {
					mustRun(t, n.ns, "sh", "-c", "iptables -t nat "+strings.Replace(l, "-A ", "-D ", 1))
					return
				}
			}
			t.Fatal("no DNAT rule found")
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := container(t, fmt.Sprintf("chk%d", i), port(9100+i, 80, "tcp"))
			res, err := rt.Add(c)
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Del(c)
			if err := rt.Check(c); err != nil {
				t.Fatalf("CHECK before tampering: %v", err)
			}
			tt.tamper(t, c, res)
			err = rt.Check(c)
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code != 104 {
				t.Errorf("CHECK after %s: %v, want code 104", tt.name, err)
			}
			if n := strings.Count(err.Error(), "DEL and ADD"); n > 1 {
				t.Errorf("CHECK after %s names its fix %d times: %v", tt.name, n, err)
			}
		})
	}
}

// A container attached by an earlier berth has no source guard, and its
// network none of the rules closing the node's 127/8 (both came later):
// CHECK by this build, after an upgrade, passes for it as before, while
// one that this build attached must have them (TestCheckDetectsTampering).
// One attached by an earlier release has its guard as a classic BPF tc
// filter, or as that release's eBPF program (which does not mark what it
// lets through, and the bridge does not ask it to), or as an earlier
// build's marking one, with the bridge's layer: CHECK asks for that
// filter, or for a program of the guard's name (and for the layer).
func TestCheckAcceptsAnEarlierBerthsAttachment(t *testing.T) {
	if testenv.Datapath() == "ebpf" {
		t.Skip("the eBPF datapath has no source guard filter: from_container checks the sources")
	}
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("old", "berth0", "10.31.0.0/24", ""))
	for i, tc := range []struct {
		name   string
		guards string // the record's, as that release wrote it
		guard  string // the veth's guard from that release: classic BPF, eBPF, eBPF marking, this build's
	}{
		{"no guard", "", ""},
		{"classic BPF guard", `,"guards":1`, "classic"},
		{"eBPF guard without the mark", `,"guards":2`, "ebpf"},
		{"eBPF guard of an earlier build, marking", `,"guards":3`, "marking"},
		{"this build's eBPF guard, port a possible multicast router", `,"guards":4`, "current"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := container(t, fmt.Sprintf("old%d", i))
			res, err := rt.Add(c)
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Del(c)
			veth := res.Interfaces[1].Name
			// Before guardsV5 a port could become a multicast router port.
			mustRun(t, n.ns, "bridge", "link", "set", "dev", veth, "mcast_router", "1")
			if tc.guard != "current" {
				removeGuard(t, n.ns, veth)
			}
			if tc.guard != "marking" && tc.guard != "current" { // the bridge's layer came with it
				forgetVeth(t, n.ns, veth)
			}
			switch tc.guard {
			case "classic":
				// Any classic program will do: CHECK does not compare it.
				mustRun(t, n.ns, "tc", "filter", "add", "dev", veth, "ingress", "pref", "1", "handle", "1",
					"protocol", "all", "bpf", "bytecode", "1,6 0 0 4294967295,", "da")
			case "ebpf", "marking":
				// Any program of the guard's name will do, here one that
				// lets everything through, marked or not.
				passAllGuard(t, n.ns, veth, tc.guard == "marking")
			}
			rewriteRecord(t, n.stateDir, "old", c.ID, `,"guards":5`, tc.guards)
			for _, tool := range []string{"iptables", "ip6tables"} {
				out, _ := testenv.InNS(n.ns, tool+"-save", "-t", "filter")
				for _, l := range strings.Split(string(out), "\n") {
					if chain, ok := strings.CutPrefix(l, ":BERTH-IN-"); ok && tc.guards == "" {
						mustRun(t, n.ns, tool, "-F", "BERTH-IN-"+strings.Fields(chain)[0])
					}
				}
			}
			if err := rt.Check(c); err != nil {
				t.Errorf("CHECK of an earlier berth's attachment: %v", err)
			}
			if tc.guard != "" {
				// Its traffic flows: the bridge does not ask its frames
				// for the mark, or they have it.
				if err := testenv.Ping(c.Netns, outsideIP); err != nil {
					t.Errorf("from an earlier berth's container to the outside: %v", err)
				}
				mustRun(t, n.ns, "tc", "filter", "del", "dev", veth, "ingress", "pref", "1")
				var ce *types.Error
				if err := rt.Check(c); !errors.As(err, &ce) || ce.Code != 104 {
					t.Errorf("CHECK without the guard: %v, want code 104", err)
				}
			}
		})
	}
}

// After a downgrade, CHECK of a container a later berth attached (its
// record's guards of a generation this build does not know) fails with
// 104 saying so, rather than calling its guards tampered with or passing
// them unchecked; DEL still removes it.
func TestCheckOfALaterBerthsAttachment(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("later", "berth0", "10.32.0.0/24", ""))
	c := container(t, "later")
	res, err := rt.Add(c)
	if err != nil {
		t.Fatal(err)
	}
	rewriteRecord(t, n.stateDir, "later", c.ID, `,"guards":5`, `,"guards":6`)
	var ce *types.Error
	if err := rt.Check(c); !errors.As(err, &ce) || ce.Code != 104 || !strings.Contains(ce.Details, "attached by a later berth") {
		t.Errorf("CHECK of a later berth's attachment: %v, want code 104 naming the later berth", err)
	}
	if err := rt.Del(c); err != nil {
		t.Fatalf("DEL of a later berth's attachment: %v", err)
	}
	veth := res.Interfaces[1].Name
	if n.ns.Do(func(ns.NetNS) error { _, err := netlink.LinkByName(veth); return err }) == nil {
		t.Errorf("host veth %s left after DEL", veth)
	}
}

// removeGuard removes the source guard from veth's ingress in node, on
// TCX or as a tc filter (guardHook).
func removeGuard(t *testing.T, node ns.NetNS, veth string) {
	t.Helper()
	var onTCX bool
	err := node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		ids, err := bpfattach.TCXPrograms(l.Attrs().Index)
		if err != nil {
			return err
		}
		guards, err := bpfattach.Named(ids, "berth_guard")
		if err != nil || len(guards) == 0 {
			return err
		}
		onTCX = true
		return bpfattach.DetachTCX(l.Attrs().Index, guards[0])
	})
	if err != nil {
		t.Fatal(err)
	}
	if !onTCX {
		mustRun(t, node, "tc", "filter", "del", "dev", veth, "ingress", "pref", "1")
	}
}

// forgetVeth puts veth back in device group 0, where an earlier berth
// left it: the bridge does not ask its frames for the guard's mark.
func forgetVeth(t *testing.T, node ns.NetNS, veth string) {
	t.Helper()
	mustRun(t, node, "ip", "link", "set", veth, "group", "0")
}

// passAllGuard puts a program named as the source guard that lets every
// frame through, marked as the guard marks it with mark, on veth's
// ingress in node as a tc filter at the guard's priority.
func passAllGuard(t *testing.T, node ns.NetNS, veth string, mark bool) {
	t.Helper()
	var insns asm.Instructions
	if mark {
		// skb->mark (struct __sk_buff, offset 8) |= PassedMark
		insns = asm.Instructions{asm.LoadMem(asm.R2, asm.R1, 8, asm.Word), asm.Or.Imm32(asm.R2, srcguard.PassedMark),
			asm.StoreMem(asm.R1, 8, asm.R2, asm.Word)}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "berth_guard", Type: ebpf.SchedCLS, License: "MIT",
		Instructions: append(insns, asm.Mov.Imm(asm.R0, -1), asm.Return())})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	err = node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		return bpfattach.AttachFilter(l.Attrs().Index, prog, bpfattach.Filter{Priority: srcguard.Priority, Name: "berth_guard"})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rewriteRecord replaces old by new in the record of the attachment of
// container id on network.
func rewriteRecord(t *testing.T, stateDir, network, id, old, new string) {
	t.Helper()
	records, _ := filepath.Glob(filepath.Join(stateDir, "networks", network, "*.json"))
	for _, r := range records {
		data, err := os.ReadFile(r)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), `"`+id+`"`) {
			continue
		}
		changed := strings.Replace(string(data), old, new, 1)
		if changed == string(data) {
			t.Fatalf("the record has no %s: %s", old, data)
		}
		if err := os.WriteFile(r, []byte(changed), 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no record of %s in %v", id, records)
}

func mustRun(t *testing.T, n ns.NetNS, name string, args ...string) {
	t.Helper()
	if out, err := testenv.InNS(n, name, args...); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

func TestGCRemovesStaleAttachments(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("gc", "berth0", "10.40.0.0/24", ""))
	keep := container(t, "keep", port(7001, 80, "tcp"))
	if _, err := rt.Add(keep); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	stale := container(t, "stale", port(7002, 80, "tcp"))
	if _, err := rt.Add(stale); err != nil {
		t.Fatal(err)
	}
	if err := rt.GC(keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("GC left the stale attachment:\n%s\nvs\n%s", after, before)
	}
	if err := rt.Check(keep); err != nil {
		t.Errorf("GC damaged a valid attachment: %v", err)
	}
	// The freed host port can be published again.
	again := container(t, "again", port(7002, 80, "tcp"))
	if _, err := rt.Add(again); err != nil {
		t.Errorf("port freed by GC: %v", err)
	}
	rt.Del(again)
	rt.Del(keep)
}

func TestParallelChurnNoDuplicatesNoLeaks(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("churn", "berth0", "10.50.0.0/24", ""))
	warm := container(t, "warm")
	if _, err := rt.Add(warm); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	const workers, perWorker = 8, 25 // 200 ADD/DEL pairs
	var mu sync.Mutex
	live := map[string]string{}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				c := &testenv.Attachment{ID: fmt.Sprintf("w%d-%d", w, i), Netns: testenv.NewNS(t),
					Caps: map[string]any{"portMappings": []map[string]any{port(20000+w*100+i, 80, "tcp")}}}
				res, err := rt.Add(c)
				if err != nil {
					t.Errorf("ADD %s: %v", c.ID, err)
					return
				}
				ip := ipOf(t, res)
				mu.Lock()
				if other, dup := live[ip]; dup {
					t.Errorf("%s given to %s while %s holds it", ip, c.ID, other)
				}
				live[ip] = c.ID
				mu.Unlock()
				if err := rt.Del(c); err != nil {
					t.Errorf("DEL %s: %v", c.ID, err)
				}
				mu.Lock()
				delete(live, ip)
				mu.Unlock()
				c.Netns.Close()
			}
		}(w)
	}
	wg.Wait()
	if after := n.snapshot(t); after != before {
		t.Errorf("leak after churn:\n%s", testenv.Diff(before, after))
	}
	rt.Del(warm)
}

func TestHostPortConflict(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("ports", "berth0", "10.60.0.0/24", ""))
	first := container(t, "first", port(8080, 80, "tcp"))
	if _, err := rt.Add(first); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	claims := filepath.Join(testenv.NetnsDir(t, n.ns), "ports")
	claimed := func() []string {
		entries, _ := os.ReadDir(claims)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	second := container(t, "second", port(8085, 80, "tcp"), port(8080, 81, "tcp"))
	_, err := rt.Add(second)
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != 102 {
		t.Fatalf("second publish of 8080: %v, want code 102", err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("failed ADD left:\n%s\nvs\n%s", after, before)
	}
	// Not even an empty claim directory for 8085, claimed and given back.
	if got := claimed(); len(got) != 1 || got[0] != "tcp-8080" {
		t.Errorf("port claims after a refused ADD: %v, want only tcp-8080", got)
	}
	// Another protocol on the same number is fine.
	udp := container(t, "udp", port(8080, 80, "udp"))
	if _, err := rt.Add(udp); err != nil {
		t.Errorf("udp/8080 beside tcp/8080: %v", err)
	}
	// A process listening on the node's port does not block publishing
	// it, as with the reference portmap: podman's conmon holds the host
	// ports of its containers open itself. The mapping wins.
	var l net.Listener
	n.ns.Do(func(ns.NetNS) error { l, err = net.Listen("tcp4", "0.0.0.0:8090"); return err })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := container(t, "busy", port(8090, 80, "tcp"))
	res, err := rt.Add(busy)
	if err != nil {
		t.Fatalf("port with a listener on the node: %v, want it published", err)
	}
	testenv.Serve(t, busy.Netns, "0.0.0.0:80")
	if src, err := testenv.Dial(n.outside, nodeIP+":8090"); err != nil || src != outsideIP {
		t.Errorf("published port with a listener on the node: %q, %v; want the container (%s) to answer", src, err, ipOf(t, res))
	}
	for _, c := range []*testenv.Attachment{busy, udp, first} {
		if err := rt.Del(c); err != nil {
			t.Error(err)
		}
	}
	if got := claimed(); len(got) != 0 {
		t.Errorf("port claims left after DEL: %v", got)
	}
}

// One container on two networks (podman network connect) publishes its
// ports on both; another container still cannot take them.
func TestHostPortsOfOneContainerOnTwoNetworks(t *testing.T) {
	n := newNode(t)
	a := testenv.NewRuntime(t, n.ns, n.conflist("twoa", "berth-a", "10.61.0.0/24", ""))
	b := testenv.NewRuntime(t, n.ns, n.conflist("twob", "berth-b", "10.62.0.0/24", ""))
	before := n.snapshot(t)
	onA := container(t, "multi", port(8080, 80, "tcp"))
	onB := &testenv.Attachment{ID: "multi", IfName: "eth1", Netns: onA.Netns, Caps: onA.Caps}
	if _, err := a.Add(onA); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Add(onB); err != nil {
		t.Fatalf("the same container's port on its second network: %v", err)
	}
	testenv.Serve(t, onA.Netns, "0.0.0.0:80")
	other := container(t, "other", port(8080, 80, "tcp"))
	var ce *types.Error
	if _, err := b.Add(other); !errors.As(err, &ce) || ce.Code != 102 {
		t.Errorf("another container on 8080: %v, want 102", err)
	}
	// Leaving one network keeps the port published through the other.
	if err := a.Del(onA); err != nil {
		t.Fatal(err)
	}
	if _, err := testenv.Dial(n.outside, nodeIP+":8080"); err != nil {
		t.Errorf("port after leaving one network: %v", err)
	}
	if err := b.Del(onB); err != nil {
		t.Fatal(err)
	}
	if after := n.snapshot(t); after != before {
		t.Errorf("left:\n%s", testenv.Diff(before, after))
	}
}

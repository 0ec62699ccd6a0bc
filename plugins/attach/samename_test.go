package attach_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/testenv"
)

// Two configs of one network name with different bridges and subnets:
// against the CNI spec, but configs written years ago do it. berth keeps a
// network's iptables chains, state, addresses and eBPF maps by name, so
// the second one's ADD is refused (error 7 naming "name" and the first
// one's bridge), and nothing the refused config's DEL or GC does may
// touch the first network. stateB is the second config's state dir: the
// same as the first's (both left at the default), or its own.

// sameName is the two runtimes of network "dup": a on bridge berth-a,
// b on berth-b; subnets are the two configs' range sets.
func sameName(t *testing.T, n *node, ownState bool, subnetsA, subnetsB []string) (a, b *testenv.Runtime, stateB string) {
	t.Helper()
	stateB = n.stateDir
	if ownState {
		stateB = t.TempDir()
	}
	confB := strings.Replace(n.conflistRanges("dup", "berth-b", subnetsB, n.datapath()), n.stateDir, stateB, 1)
	return testenv.NewRuntime(t, n.ns, n.conflistRanges("dup", "berth-a", subnetsA, n.datapath())),
		testenv.NewRuntime(t, n.ns, confB), stateB
}

// talks fails t unless UDP from a (address aIP) reaches b at bIP and
// back: on the eBPF datapath a container whose endpoint is lost has its
// packets dropped as spoofed.
func talks(t *testing.T, what string, a, b *testenv.Attachment, aIP, bIP string, port int) {
	t.Helper()
	if !udpArrives(t, a.Netns, aIP, b.Netns, bIP, port) || !udpArrives(t, b.Netns, bIP, a.Netns, aIP, port+1) {
		t.Errorf("%s: %s (%s) and %s (%s) no longer talk", what, a.ID, aIP, b.ID, bIP)
	}
}

// checks fails t unless CHECK passes for every container of rt.
func checks(t *testing.T, what string, rt *testenv.Runtime, cs ...*testenv.Attachment) {
	t.Helper()
	for _, c := range cs {
		if err := rt.Check(c); err != nil {
			t.Errorf("%s: CHECK %s: %v", what, c.ID, err)
		}
	}
}

// refusedForName fails t unless err is error 7 naming the field and the
// bridge that has the name.
func refusedForName(t *testing.T, err error, bridge string) {
	t.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig ||
		!strings.Contains(err.Error(), "name:") || !strings.Contains(err.Error(), `"`+bridge+`"`) {
		t.Errorf("ADD of the second network of the name: %v, want error 7 naming \"name\" and bridge %s", err, bridge)
	}
}

func stateEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir + "/networks/dup")
	for _, e := range entries {
		t.Errorf("left in %s: %s", dir, e.Name())
	}
}

// subnetsOf is one or two range sets: dual-stack on the iptables
// datapath, IPv4 on the eBPF one (which refuses IPv6).
func (n *node) subnetsOf(v4, v6 string) []string {
	if n.bpffs != "" {
		return []string{v4}
	}
	return []string{v4, v6}
}

func TestSameNameSecondNetworkRefused(t *testing.T) { sameNameRefused(t, newDualNode(t)) }

func TestEBPFSameNameSecondNetworkRefused(t *testing.T) { sameNameRefused(t, ebpfNode(t)) }

func sameNameRefused(t *testing.T, n *node) {
	for _, ownState := range []bool{false, true} {
		t.Run(fmt.Sprintf("own state dir %v", ownState), func(t *testing.T) {
			a, b, stateB := sameName(t, n, ownState, n.subnetsOf("10.61.0.0/24", "fd00:61::/64"), n.subnetsOf("10.62.0.0/24", "fd00:62::/64"))
			before := n.snapshot(t)
			a1, a2, b1 := container(t, "a1", port(24601, 80, "tcp")), container(t, "a2"), container(t, "b1")
			ra1, ra2 := a.MustAdd(t, a1), a.MustAdd(t, a2)
			ip1, ip2 := ipOf(t, ra1), ipOf(t, ra2)
			testenv.Serve(t, n.outside, outsideIP+":9000")
			testenv.Serve(t, a1.Netns, "[::]:80")
			intact := func(what string) {
				t.Helper()
				checks(t, what, a, a1, a2)
				talks(t, what, a1, a2, ip1, ip2, 5100)
				if src, err := testenv.Dial(a1.Netns, outsideIP+":9000"); err != nil || src != nodeIP {
					t.Errorf("%s: a1 to the outside: seen as %q, %v; want masqueraded to %s", what, src, err, nodeIP)
				}
				if _, err := testenv.Dial(n.outside, nodeIP+":24601"); err != nil {
					t.Errorf("%s: a1's published port: %v", what, err)
				}
				if v6 := testenv.IPv6Of(ra1); v6 != nil {
					if err := testenv.Ping(a2.Netns, v6.String()); err != nil {
						t.Errorf("%s: a2 to a1 over IPv6: %v", what, err)
					}
					if _, err := testenv.Dial(n.outside, hostPort(nodeIP6, 24601)); err != nil {
						t.Errorf("%s: a1's published port over IPv6: %v", what, err)
					}
				}
			}

			_, err := b.Add(b1)
			refusedForName(t, err, "berth-a")
			if _, err := testenv.InNS(n.ns, "ip", "link", "show", "berth-b"); err == nil {
				t.Error("the refused ADD left bridge berth-b")
			}
			intact("after the refused ADD")
			// A runtime DELs after a failed ADD, and GCs the network it
			// knows, with none of its containers left.
			if err := b.Del(b1); err != nil {
				t.Errorf("DEL after the refused ADD: %v", err)
			}
			if err := b.GC(); err != nil {
				t.Errorf("GC of the refused config: %v", err)
			}
			intact("after the refused config's DEL and GC")
			if err := a.GC(a1, a2); err != nil {
				t.Errorf("GC of the first config: %v", err)
			}
			intact("after the first config's GC")

			for _, c := range []*testenv.Attachment{a1, a2} {
				if err := a.Del(c); err != nil {
					t.Errorf("DEL %s: %v", c.ID, err)
				}
			}
			n.checkNothingLeft(t, before, "")
			stateEmpty(t, stateB)
			// Once the first network has left, the name is free.
			b.MustAdd(t, b1)
			checks(t, "the second config once the name is free", b, b1)
			if err := b.Del(b1); err != nil {
				t.Errorf("DEL %s: %v", b1.ID, err)
			}
			n.checkNothingLeft(t, before, "")
		})
	}
}

// setAlias sets bridge br's alias in n ("" removes it).
func setAlias(t *testing.T, n ns.NetNS, br, alias string) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(br)
		if err != nil {
			return err
		}
		return netlink.LinkSetAlias(l, alias)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSameNameMadeBeforeTheCheck(t *testing.T) { sameNameMadeBefore(t, newNode(t)) }

func TestEBPFSameNameMadeBeforeTheCheck(t *testing.T) { sameNameMadeBefore(t, ebpfNode(t)) }

// Two networks of one name that an earlier berth let in, both with
// containers: the outside tester's case. GC of one (the runtime lists
// only its containers) removed the other's containers (one state dir)
// or, on the eBPF datapath, its endpoints (two state dirs), and the last
// DEL of one removed the rules the other still used. Each network's GC
// and DEL now remove only its own, and once both have left nothing is
// left.
func sameNameMadeBefore(t *testing.T, n *node) {
	for _, ownState := range []bool{false, true} {
		t.Run(fmt.Sprintf("own state dir %v", ownState), func(t *testing.T) {
			a, b, stateB := sameName(t, n, ownState, []string{"10.63.0.0/24"}, []string{"10.64.0.0/24"})
			before := n.snapshot(t)
			a1, a2, b1, b2 := container(t, "a1"), container(t, "a2"), container(t, "b1"), container(t, "b2")
			ipA1, ipA2 := ipOf(t, a.MustAdd(t, a1)), ipOf(t, a.MustAdd(t, a2))
			// An earlier berth did not look for another bridge of the
			// name: hide berth-a's mark while b's ADDs run.
			setAlias(t, n.ns, "berth-a", "")
			ipB1, ipB2 := ipOf(t, b.MustAdd(t, b1)), ipOf(t, b.MustAdd(t, b2))
			setAlias(t, n.ns, "berth-a", "berth:dup")

			if err := a.GC(a1, a2); err != nil {
				t.Errorf("GC of a: %v", err)
			}
			checks(t, "b after a's GC", b, b1, b2)
			talks(t, "b after a's GC", b1, b2, ipB1, ipB2, 5200)
			if err := b.GC(b1, b2); err != nil {
				t.Errorf("GC of b: %v", err)
			}
			talks(t, "a after b's GC", a1, a2, ipA1, ipA2, 5300)
			checks(t, "b after its own GC", b, b1, b2)

			for _, c := range []*testenv.Attachment{a1, a2} {
				if err := a.Del(c); err != nil {
					t.Errorf("DEL %s: %v", c.ID, err)
				}
			}
			checks(t, "b after a's last DEL", b, b1, b2)
			talks(t, "b after a's last DEL", b1, b2, ipB1, ipB2, 5400)
			for _, c := range []*testenv.Attachment{b1, b2} {
				if err := b.Del(c); err != nil {
					t.Errorf("DEL %s: %v", c.ID, err)
				}
			}
			// In one state dir a's last DEL saw b's records and kept its
			// bridge and the rules; the runtimes' next GCs remove them.
			for _, rt := range []*testenv.Runtime{a, b} {
				if err := rt.GC(); err != nil {
					t.Errorf("GC after every container left: %v", err)
				}
			}
			n.checkNothingLeft(t, before, "")
			stateEmpty(t, stateB)
		})
	}
}

func TestSameNameConcurrentNetworks(t *testing.T) { sameNameConcurrent(t, newDualNode(t)) }

func TestEBPFSameNameConcurrentNetworks(t *testing.T) { sameNameConcurrent(t, ebpfNode(t)) }

// The first ADDs of two configs of one name at once, with each config's
// GC (listing its own containers) among them: one network has the name,
// every ADD of the other is refused (7), the first one's containers pass
// CHECK and talk, and once everybody has DELeted (the refused ones too,
// as runtimes do) nothing is left.
func sameNameConcurrent(t *testing.T, n *node) {
	for _, ownState := range []bool{false, true} {
		t.Run(fmt.Sprintf("own state dir %v", ownState), func(t *testing.T) {
			a, b, stateB := sameName(t, n, ownState, n.subnetsOf("10.65.0.0/24", "fd00:65::/64"), n.subnetsOf("10.66.0.0/24", "fd00:66::/64"))
			rts := []*testenv.Runtime{a, b}
			before := n.snapshot(t)
			const per = 3
			for r := range 3 {
				cs := [2][]*testenv.Attachment{}
				ips := [2][]string{make([]string, per), make([]string, per)}
				for net := range 2 {
					for i := range per {
						cs[net] = append(cs[net], container(t, fmt.Sprintf("c%d-%d-%d", r, net, i)))
					}
				}
				errs := parallel(2*per+2, func(i int) error {
					if i >= 2*per {
						net := i - 2*per
						return rts[net].GC(cs[net]...)
					}
					net, j := i%2, i/2
					res, err := rts[net].Add(cs[net][j])
					if err == nil {
						ips[net][j] = ipOf(t, res)
					}
					return err
				})
				noErrors(t, "GC", errs[2*per:])
				won := [2]int{}
				for i, err := range errs[:2*per] {
					var ce *types.Error
					switch {
					case err == nil:
						won[i%2]++
					case !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "name:"):
						t.Errorf("round %d: ADD %s: %v, want success or error 7 naming \"name\"", r, cs[i%2][i/2].ID, err)
					}
				}
				winner := 0
				if won[1] > 0 {
					winner = 1
				}
				if won[winner] != per || won[1-winner] != 0 {
					t.Errorf("round %d: ADDs passed %v of %d per config, want all of one config and none of the other", r, won, per)
				}
				if won[winner] == per {
					checks(t, fmt.Sprintf("round %d", r), rts[winner], cs[winner]...)
					talks(t, fmt.Sprintf("round %d", r), cs[winner][0], cs[winner][1], ips[winner][0], ips[winner][1], 5500)
				}
				var all []func() error
				for net := range 2 {
					for _, c := range cs[net] {
						all = append(all, func() error { return rts[net].Del(c) })
					}
					all = append(all, func() error { return rts[net].GC() })
				}
				noErrors(t, "DEL and GC", parallel(len(all), func(i int) error { return all[i]() }))
				if after := n.snapshot(t); after != before {
					t.Fatalf("round %d: left after every container left:\n%s", r, testenv.Diff(before, after))
				}
				stateEmpty(t, stateB)
			}
		})
	}
}

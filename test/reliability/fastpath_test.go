package reliability

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// What the eBPF datapath's suites look at beyond the kernel's state: the
// network's pins on a node (endpoints, counters) and the programs on its
// uplinks.

// withPins calls f with the network's pins on node n, holding the node's
// fastpath lock as the plugins and netd do (no ADD or DEL changes the
// endpoints meanwhile). Nothing pinned is an error.
func withPins(n *testbed.Node, network string, f func(*fastpath.Network) error) error {
	lock, err := fastpath.Acquire(n.BPFFSDir())
	if err != nil {
		return fmt.Errorf("%s: %w", n.Host, err)
	}
	defer lock.Release()
	p, err := fastpath.OpenExisting(n.BPFFSDir(), network)
	if err == nil && p == nil {
		err = fmt.Errorf("nothing pinned in %s", fastpath.Dir(n.BPFFSDir(), network))
	}
	if err != nil {
		return fmt.Errorf("%s: eBPF datapath of %s: %w", n.Host, network, err)
	}
	defer p.Close()
	return f(p)
}

// fastStats reads the programs' counters on node n.
func fastStats(t *testing.T, n *testbed.Node, network string) fastpath.Stats {
	t.Helper()
	var s fastpath.Stats
	err := withPins(n, network, func(p *fastpath.Network) (err error) {
		s, err = p.Stats()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sent is how many packets the programs sent to other nodes.
func sent(s fastpath.Stats) uint64 { return s.FIB + s.Neigh }

// endpointIPs lists the addresses in the network's endpoints map on node
// n, sorted.
func endpointIPs(t *testing.T, n *testbed.Node, network string) []string {
	t.Helper()
	var ips []string
	err := withPins(n, network, func(p *fastpath.Network) error {
		eps, err := p.Endpoints()
		for _, e := range eps {
			ips = append(ips, e.IP.String())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ips)
	return ips
}

// uplinkPrograms checks that node n's uplink and VTEP each carry exactly
// one TCX ingress program, the network's pinned from_uplink: a netd that
// attached it again at each start would pile copies up, one that lost it
// would leave the other nodes' traffic to the kernel.
func uplinkPrograms(n *testbed.Node, network string) error {
	return withPins(n, network, func(p *fastpath.Network) error {
		return n.Do(func() error {
			var errs []string
			for _, dev := range []string{n.Iface, vtepName} {
				l, err := netlink.LinkByName(dev)
				if err != nil {
					return err
				}
				names, err := testenv.TCXIngressNames(l.Attrs().Index)
				if err != nil {
					return err
				}
				current, err := p.UplinkCurrent(l.Attrs().Index)
				if err != nil {
					return err
				}
				if len(names) != 1 || !strings.HasPrefix(names[0], "from_uplink") || !current {
					errs = append(errs, fmt.Sprintf("%s has TCX ingress programs %v (the pinned from_uplink among them: %v), want the pinned from_uplink once", dev, names, current))
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("%s: %s", n.Host, strings.Join(errs, "; "))
			}
			return nil
		})
	})
}

// checkLeftEBPF checks that a node that left (netd leave) keeps no
// program on its uplink and no pins of the network.
func checkLeftEBPF(t *testing.T, n *testbed.Node, network string) {
	t.Helper()
	err := n.Do(func() error {
		l, err := netlink.LinkByName(n.Iface)
		if err != nil {
			return err
		}
		names, err := testenv.TCXIngressNames(l.Attrs().Index)
		if err == nil && len(names) > 0 {
			err = fmt.Errorf("TCX ingress programs on %s: %v", n.Iface, names)
		}
		return err
	})
	if err != nil {
		t.Errorf("%s after leaving: %v", n.Host, err)
	}
	dir := fastpath.Dir(n.BPFFSDir(), network)
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s after leaving: the network's pins are still in %s", n.Host, dir)
	} else if !os.IsNotExist(err) {
		t.Errorf("%s after leaving: %v", n.Host, err)
	}
}

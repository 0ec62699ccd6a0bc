package runtimes

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
)

// datapath is the berth-bridge datapath a runtime test runs on: the
// default (iptables) or eBPF, whose pins live in a private BPF
// filesystem of the test (README "eBPF datapath").
type datapath struct {
	name  string // "iptables" or "ebpf", also the subtest's name
	bpffs string // eBPF only
}

func (d datapath) ebpf() bool { return d.name == "ebpf" }

// forEachDatapath runs test once per datapath, as subtests named after
// it: the runtimes must work on both, and make test-runtimes runs both.
func forEachDatapath(t *testing.T, test func(t *testing.T, dp datapath)) {
	for _, name := range []string{"iptables", "ebpf"} {
		t.Run(name, func(t *testing.T) {
			dp := datapath{name: name}
			if dp.ebpf() {
				// Mounted before the test makes its sandbox, which gets a
				// copy of the test's mounts: the plugins pin there and the
				// test reads the same pins from its own mount.
				dp.bpffs = testenv.BPFFS(t)
			}
			test(t, dp)
		})
	}
}

// config is what a berth-bridge plugin config gets for the datapath,
// to append after one of its fields: nothing for the default.
func (d datapath) config() string {
	if !d.ebpf() {
		return ""
	}
	return fmt.Sprintf(`,"datapath":"ebpf","bpffs":%q`, d.bpffs)
}

// dirs is what a leak on the datapath would leave files in: the eBPF
// datapath's pins (the network's last DEL removes them).
func (d datapath) dirs() []string {
	if !d.ebpf() {
		return nil
	}
	return []string{d.bpffs}
}

// stats reads the fast path's counters of network. The node's lock is
// held only while the pins are opened, so that an ADD is never seen
// half way through pinning them (and no ADD waits for the test).
func (d datapath) stats(t *testing.T, network string) fastpath.Stats {
	t.Helper()
	lock, err := fastpath.Acquire(d.bpffs)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := fastpath.OpenExisting(d.bpffs, network)
	lock.Release()
	if err != nil {
		t.Fatalf("the eBPF pins of network %s: %v", network, err)
	}
	if fp == nil {
		t.Fatalf("network %s has no eBPF pins in %s: is it on the eBPF datapath?", network, d.bpffs)
	}
	defer fp.Close()
	s, err := fp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fromContainerFilters counts the programs named from_container that tc
// shows on the ingress of the host veth whose index is hostIndex, in the
// node's namespace: berth attaches exactly one per veth.
func fromContainerFilters(t *testing.T, node ns.NetNS, hostIndex int) (string, int) {
	t.Helper()
	var name string
	err := node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(hostIndex)
		if err == nil {
			name = l.Attrs().Name
		}
		return err
	})
	if err != nil {
		t.Fatalf("the host veth (index %d): %v", hostIndex, err)
	}
	out, err := testenv.InNS(node, "tc", "filter", "show", "dev", name, "ingress")
	if err != nil {
		t.Fatalf("tc filter show dev %s ingress: %v\n%s", name, err, out)
	}
	// One line per filter; tc names the program twice in it (the
	// filter's name, the program's name).
	filters := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "from_container") {
			filters++
		}
	}
	return name + ":\n" + string(out), filters
}

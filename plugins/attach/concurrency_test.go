package attach_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/iptables"
	"github.com/berthnet/berth/internal/testenv"
)

// parallel runs f(i) for i in [0, n) at once and returns the errors.
func parallel(n int, f func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errs
}

func noErrors(t *testing.T, what string, errs []error) {
	t.Helper()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Two DELs at once each asked "am I the last?" before removing their own
// record, so neither removed the network's chains (5 runs of 5 before the
// fix). Whatever the number of DELs at once, the network's last container
// leaving takes every rule, the bridge and its subnet route with it.
func TestParallelDelsLeaveNothing(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("pdel", "berth0", "10.52.0.0/24", ""))
	before := n.snapshot(t)
	for _, round := range []struct {
		name              string
		containers, times int
	}{
		{"2 DELs at once", 2, 5},
		{"64 DELs at once", 64, 1},
	} {
		t.Run(round.name, func(t *testing.T) {
			for r := range round.times {
				cs := make([]*testenv.Attachment, round.containers)
				for i := range cs {
					cs[i] = container(t, fmt.Sprintf("pd%d-%d", r, i), port(21000+i, 80, "tcp"))
				}
				noErrors(t, "ADD", parallel(len(cs), func(i int) error { _, err := rt.Add(cs[i]); return err }))
				noErrors(t, "DEL", parallel(len(cs), func(i int) error { return rt.Del(cs[i]) }))
				if after := n.snapshot(t); after != before {
					t.Fatalf("round %d: left after every container left:\n%s", r, testenv.Diff(before, after))
				}
				for _, c := range cs {
					c.Netns.Close()
				}
			}
		})
	}
}

// ADD, DEL and GC of one network at once, in any order: once every
// container has left, nothing of the network is left, and no call failed.
func TestMixedAddDelGCLeaveNothing(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("mixed", "berth0", "10.53.0.0/24", ""))
	before := n.snapshot(t)
	const rounds, workers = 4, 6
	for r := range rounds {
		// Stale attachments GC is to remove while the others come and go.
		stale := []*testenv.Attachment{container(t, fmt.Sprintf("st%d-0", r)), container(t, fmt.Sprintf("st%d-1", r), port(22100+r, 80, "tcp"))}
		for _, c := range stale {
			if _, err := rt.Add(c); err != nil {
				t.Fatal(err)
			}
		}
		live := make([]*testenv.Attachment, workers)
		for i := range live {
			live[i] = container(t, fmt.Sprintf("mx%d-%d", r, i), port(22000+i, 80, "tcp"))
		}
		errs := parallel(workers+2, func(i int) error {
			switch {
			case i == workers: // GC keeps every container of the round but the stale ones
				return rt.GC(live...)
			case i == workers+1:
				return rt.Del(stale[0])
			}
			if _, err := rt.Add(live[i]); err != nil {
				return fmt.Errorf("ADD %s: %w", live[i].ID, err)
			}
			if i%2 == 0 {
				return rt.GC(live...)
			}
			return nil
		})
		noErrors(t, fmt.Sprintf("round %d", r), errs)
		noErrors(t, "DEL", parallel(workers, func(i int) error { return rt.Del(live[i]) }))
		for _, c := range stale {
			rt.Del(c) // GC may have been first, or not: both must be fine
		}
		if after := n.snapshot(t); after != before {
			t.Fatalf("round %d: left after every container left:\n%s", r, testenv.Diff(before, after))
		}
	}
}

// Two networks with different stateDirs on one node share its iptables:
// their first ADDs at once used to clear each other's BERTH-HOSTPORTS and
// duplicate or lose builtin jumps, the last DEL then failed with 105, and
// one host port could be published by both.
func TestTwoStateDirsOneNamespace(t *testing.T) {
	n := newNode(t)
	stateB := t.TempDir()
	a := testenv.NewRuntime(t, n.ns, n.conflist("sda", "berth-a", "10.54.0.0/24", ""))
	b := testenv.NewRuntime(t, n.ns, strings.Replace(n.conflist("sdb", "berth-b", "10.55.0.0/24", ""), n.stateDir, stateB, 1))
	before := n.snapshot(t)
	const perNet = 3
	for r := range 4 {
		var cs []*testenv.Attachment
		var rts []*testenv.Runtime
		for i := range 2 * perNet {
			cs = append(cs, container(t, fmt.Sprintf("sd%d-%d", r, i), port(23000+i, 80, "tcp")))
			rts = append(rts, map[bool]*testenv.Runtime{true: a, false: b}[i%2 == 0])
		}
		noErrors(t, "first ADDs", parallel(len(cs), func(i int) error { _, err := rts[i].Add(cs[i]); return err }))

		out, err := testenv.InNS(n.ns, "iptables-save")
		if err != nil {
			t.Fatal(err)
		}
		tables, err := iptables.Parse(out)
		if err != nil {
			t.Fatal(err)
		}
		nat, filter := tables.Get("nat"), tables.Get("filter")
		for _, j := range []struct {
			t             *iptables.Table
			chain, target string
		}{
			{nat, "PREROUTING", "BERTH-HOSTPORTS"}, {nat, "OUTPUT", "BERTH-HOSTPORTS"},
			{nat, "POSTROUTING", "BERTH-POSTROUTING"}, {filter, "FORWARD", "BERTH-FORWARD"},
			{filter, "BERTH-FORWARD", "BERTH-ISOLATION"},
		} {
			if got := jumps(j.t, j.chain, j.target); got != 1 {
				t.Errorf("round %d: %s %s has %d jumps to %s, want 1", r, j.t.Name, j.chain, got, j.target)
			}
		}
		if got := len(nat.Rules("BERTH-HOSTPORTS")); got != len(cs) {
			t.Errorf("round %d: BERTH-HOSTPORTS has %d jumps, want one per container (%d):\n%s", r, got, len(cs), out)
		}
		if got := len(nat.Rules("BERTH-POSTROUTING")); got != 2 {
			t.Errorf("round %d: BERTH-POSTROUTING has %d jumps, want one per network", r, got)
		}
		// A host port is the node's: the other network cannot publish it.
		taken := container(t, fmt.Sprintf("taken%d", r), port(23000, 81, "tcp"))
		var ce *types.Error
		if _, err := b.Add(taken); !errors.As(err, &ce) || ce.Code != 102 {
			t.Errorf("round %d: host port 23000 of network sda published again by sdb: %v, want code 102", r, err)
			b.Del(taken)
		}
		noErrors(t, "DELs", parallel(len(cs), func(i int) error { return rts[i].Del(cs[i]) }))
		if after := n.snapshot(t); after != before {
			t.Fatalf("round %d: left after every container left:\n%s", r, testenv.Diff(before, after))
		}
	}
}

func jumps(t *iptables.Table, chain, target string) int {
	n := 0
	for _, r := range t.Rules(chain) {
		if iptables.JumpTarget(r) == target {
			n++
		}
	}
	return n
}

// Rules a network kept after its containers left (an older berth's
// parallel DELs, a record lost with its state dir) go with the next GC
// that finds no container on it.
func TestGCRemovesRulesOfAnEmptyNetwork(t *testing.T) {
	n := newNode(t)
	rt := testenv.NewRuntime(t, n.ns, n.conflist("gcempty", "berth0", "10.57.0.0/24", ""))
	c := container(t, "lost", port(24500, 80, "tcp"))
	res, err := rt.Add(c)
	if err != nil {
		t.Fatal(err)
	}
	// The container's link and record are gone; its rules and the bridge are not.
	mustRun(t, n.ns, "ip", "link", "del", res.Interfaces[1].Name)
	mustRun(t, n.ns, "sh", "-c", "rm -r "+n.stateDir+"/networks/gcempty")
	// A runtime that restarted: libcni's cache is empty too, so its GC
	// sends no DEL of its own, only the plugin's GC.
	restarted := testenv.NewRuntime(t, n.ns, n.conflist("gcempty", "berth0", "10.57.0.0/24", ""))
	if err := restarted.GC(); err != nil {
		t.Fatalf("GC: %v", err)
	}
	// The port mapping chain of the lost container cannot be found
	// without its record; the network's own rules and the bridge go.
	out, _ := testenv.InNS(n.ns, "iptables-save")
	tables, _ := iptables.Parse(out)
	if got := tables.Get("filter").Chains("BERTH-"); len(got) != 0 {
		t.Errorf("filter chains left: %v", got)
	}
	if got := tables.Get("nat").Chains("BERTH-NAT-"); len(got) != 0 {
		t.Errorf("nat chains of the network left: %v", got)
	}
	if _, err := testenv.InNS(n.ns, "ip", "link", "show", "berth0"); err == nil {
		t.Error("bridge left")
	}
}

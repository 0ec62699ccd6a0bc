package iptables

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/netnsdir"
	"github.com/berthnet/berth/internal/testenv"
)

// begin starts a cycle in n, on the nf_tables backend (the one with a
// generation), skipping the test where there is none.
func begin(t *testing.T, n ns.NetNS) (c *Cycle) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		b, err := Open()
		if err != nil {
			return err
		}
		if b.Name != NFTables {
			t.Skipf("the namespace's backend is %s: nothing is cached", b.Name)
		}
		c = b.Begin()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// inNS runs f in n, failing the test on error.
func inNS(t *testing.T, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// sameRules fails unless known holds exactly the chains and rules that
// iptables-save prints for f in n (built-in chains berth never touched
// may be missing from known: they have no rules).
func sameRules(t *testing.T, n ns.NetNS, f Family, known Tables) {
	t.Helper()
	out, err := testenv.InNS(n, f.String()+"-nft-save")
	if err != nil {
		t.Fatalf("%s-nft-save: %v: %s", f, err, out)
	}
	real, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	for name, rt := range real {
		kt := known.Get(name)
		for chain, rules := range rt.chains {
			if !kt.HasChain(chain) && len(rules) == 0 {
				continue
			}
			if !kt.HasChain(chain) || !slices.Equal(kt.Rules(chain), rules) {
				t.Errorf("%s %s %s: cached %q, kernel %q", f, name, chain, kt.Rules(chain), rules)
			}
		}
	}
	for name, kt := range known {
		for chain := range kt.chains {
			if !real.Get(name).HasChain(chain) {
				t.Errorf("%s %s: cached chain %s is not in the kernel", f, name, chain)
			}
		}
	}
}

// A cycle's commits are remembered exactly for the next one, which then
// reads no rules at all; a change by anyone else, before or during a
// cycle, makes the next one read the kernel's rules again.
func TestCycle(t *testing.T) {
	n := testenv.NewNS(t)
	steps := []func(Family, Tables) []*Batch{
		func(f Family, ts Tables) []*Batch {
			nat, filter := NewBatch("nat"), NewBatch("filter")
			nat.Chain("BERTH-A")
			nat.Append("BERTH-A", "-j RETURN")
			nat.Append("POSTROUTING", "-j BERTH-A")
			filter.Chain("BERTH-F")
			filter.Append("BERTH-F", "-j ACCEPT")
			filter.Append("FORWARD", "-j BERTH-F")
			filter.Insert("FORWARD", "-p tcp -j ACCEPT")
			return []*Batch{nat, filter}
		},
		func(f Family, ts Tables) []*Batch {
			nat, raw := NewBatch("nat"), NewBatch("raw")
			nat.Owned(ts.Get("nat"), "BERTH-A", []string{"-p tcp -m tcp --dport 80 -j RETURN", "-j RETURN"})
			nat.DeleteJumps(ts.Get("nat"), "POSTROUTING", "BERTH-A")
			nat.Insert("POSTROUTING", "-j BERTH-A")
			raw.Chain("BERTH-R")
			raw.Append("PREROUTING", "-j BERTH-R")
			return []*Batch{nat, raw, NewBatch("filter")} // an empty batch commits nothing
		},
		func(f Family, ts Tables) []*Batch {
			filter := NewBatch("filter")
			filter.DeleteJumps(ts.Get("filter"), "FORWARD", "BERTH-F")
			filter.DeleteChain(ts.Get("filter"), "BERTH-F")
			return []*Batch{filter}
		},
	}
	for i, step := range steps {
		c := begin(t, n)
		if i > 0 && len(c.known) != 2 {
			t.Fatalf("step %d: the cycle knows %d families, want both from the last cycle", i, len(c.known))
		}
		inNS(t, n, func() error {
			defer c.Close()
			for _, f := range []Family{IPv4, IPv6} {
				ts, err := c.Save(f)
				if err != nil {
					return err
				}
				if err := c.Apply(f, step(f, ts)...); err != nil {
					return err
				}
			}
			return nil
		})
		c = begin(t, n)
		for _, f := range []Family{IPv4, IPv6} {
			ts, ok := c.known[f]
			if !ok {
				t.Fatalf("step %d: %s not remembered", i, f)
			}
			sameRules(t, n, f, ts)
		}
	}

	// A change by someone else: the next cycle reads the rules.
	testenv.InNS(n, "ip6tables-nft", "-t", "nat", "-F", "BERTH-A")
	if c := begin(t, n); len(c.known) != 0 {
		t.Fatalf("after ip6tables -F the cycle still trusts its tables: %v", c.known)
	}
	c := begin(t, n)
	inNS(t, n, func() error {
		defer c.Close()
		ts, err := c.Save(IPv6)
		if err != nil {
			return err
		}
		if rules := ts.Get("nat").Rules("BERTH-A"); len(rules) != 0 {
			return fmt.Errorf("the cycle read %q, not the kernel's empty chain", rules)
		}
		return nil
	})
	// It read IPv4 too, which berth has rules in: the next cycle on
	// IPv4 alone does not pay for the change to IPv6.
	c = begin(t, n)
	if len(c.known) != 2 {
		t.Fatalf("a cycle that only needed IPv6 after someone else's change remembers %d families, want both", len(c.known))
	}
	for _, f := range []Family{IPv4, IPv6} {
		sameRules(t, n, f, c.known[f])
	}

	// Someone else commits during a cycle: the generation moves by one
	// more than the cycle committed, and nothing is remembered.
	c = begin(t, n)
	inNS(t, n, func() error {
		defer c.Close()
		if _, err := c.Save(IPv4); err != nil {
			return err
		}
		testenv.InNS(n, "iptables-nft", "-t", "nat", "-A", "BERTH-A", "-j", "ACCEPT")
		b := NewBatch("filter")
		b.Chain("BERTH-G")
		return c.Apply(IPv4, b)
	})
	if c := begin(t, n); len(c.known) != 0 {
		t.Fatalf("a commit by someone else during a cycle went unnoticed: %v", c.known)
	}

	// A failed commit: nothing is remembered either.
	c = begin(t, n)
	inNS(t, n, func() error {
		defer c.Close()
		bad := NewBatch("filter")
		bad.Append("BERTH-NONE", "-j ACCEPT")
		if c.Apply(IPv4, bad) == nil {
			return fmt.Errorf("a rule in a missing chain was applied")
		}
		return nil
	})
	var dir string
	inNS(t, n, func() (err error) { dir, err = netnsdir.Current(); return err })
	if _, err := os.Stat(filepath.Join(dir, cacheFile)); !os.IsNotExist(err) {
		t.Errorf("after a failed commit the cache is still there: %v", err)
	}

	// A cycle killed while writing the file leaves it half-written: the
	// next cycle trusts nothing of it, and writes it whole again.
	c = begin(t, n)
	inNS(t, n, func() error {
		defer c.Close()
		_, err := c.Save(IPv4)
		return err
	})
	data, err := os.ReadFile(filepath.Join(dir, cacheFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, cacheFile), data[:len(data)-1], 0o644); err != nil {
		t.Fatal(err)
	}
	c = begin(t, n)
	if len(c.known) != 0 {
		t.Fatalf("the cycle trusts a half-written file: %v", c.known)
	}
	inNS(t, n, func() error {
		defer c.Close()
		_, err := c.Save(IPv4)
		return err
	})
	if c := begin(t, n); len(c.known) != 1 {
		t.Fatalf("after a cycle that read IPv4 the file holds %d families, want 1", len(c.known))
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), cacheFile) && e.Name() != cacheFile {
			t.Errorf("%s left next to %s", e.Name(), cacheFile)
		}
	}
}

func TestTablesApply(t *testing.T) {
	ts, _ := Parse([]byte(saved))
	b := NewBatch("nat")
	b.Owned(ts.Get("nat"), "BERTH-NAT-x", []string{"-j MASQUERADE"})
	b.Insert("PREROUTING", "-j BERTH-NAT-x")
	b.DeleteJumps(ts.Get("nat"), "BERTH-HOSTPORTS", "BERTH-DN-abc")
	b.DeleteChain(ts.Get("nat"), "BERTH-DN-abc")
	m := NewBatch("mangle")
	m.Chain("BERTH-M")
	ts.apply(b)
	ts.apply(m)
	nat := ts.Get("nat")
	if got := nat.Rules("PREROUTING"); !slices.Equal(got, []string{"-j BERTH-NAT-x", "-m addrtype --dst-type LOCAL -j BERTH-HOSTPORTS"}) {
		t.Errorf("PREROUTING: %q", got)
	}
	if nat.HasChain("BERTH-DN-abc") || len(nat.Rules("BERTH-HOSTPORTS")) != 0 || !slices.Equal(nat.Rules("BERTH-NAT-x"), []string{"-j MASQUERADE"}) {
		t.Errorf("nat after apply: %v", nat.chains)
	}
	if !ts.Get("mangle").HasChain("BERTH-M") {
		t.Error("a table the snapshot lacked was not added")
	}
}

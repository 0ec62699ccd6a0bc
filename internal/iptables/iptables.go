// Package iptables applies berth's rules in batches: one iptables-save and
// one iptables-restore --noflush per table for a whole change, instead of
// one exec per rule. On the nf_tables backend every iptables exec re-reads
// the ruleset, so batching is what keeps a CNI ADD in the millisecond range.
//
// Every rule berth owns lives in a chain whose name starts with BERTH-.
// Rules in chains berth does not own (PREROUTING, FORWARD ...) and in chains
// berth shares between networks are always jumps to an owned chain, so that
// "is it there?" is answered by looking for the jump target by name, which
// does not depend on how iptables-save normalises a rule.
//
// Both families go through the one backend (nf_tables or legacy) the
// namespace's rules already use: see Backend.
package iptables

import (
	"fmt"
	"slices"
	"strings"

	"github.com/berthnet/berth/internal/netnsdir"
)

// Prefix starts every chain berth owns.
const Prefix = "BERTH-"

// Table is a snapshot of one table: its chains and their rules in order.
type Table struct {
	Name   string
	chains map[string][]string // chain → rule specs without "-A CHAIN "
}

// HasChain reports whether chain exists.
func (t *Table) HasChain(chain string) bool {
	_, ok := t.chains[chain]
	return ok
}

// Rules returns chain's rule specs.
func (t *Table) Rules(chain string) []string { return t.chains[chain] }

// Chains lists the chains whose names start with prefix.
func (t *Table) Chains(prefix string) []string {
	var out []string
	for c := range t.chains {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// Jumps reports whether chain holds a rule jumping to target.
func (t *Table) Jumps(chain, target string) bool {
	for _, r := range t.chains[chain] {
		if JumpTarget(r) == target {
			return true
		}
	}
	return false
}

// JumpTarget is the -j target of a rule spec, or "".
func JumpTarget(spec string) string {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "--jump" {
			return f[i+1]
		}
	}
	return ""
}

// Tables is a snapshot of every table.
type Tables map[string]*Table

// Get returns the named table, empty when the snapshot has none.
func (ts Tables) Get(name string) *Table {
	if t, ok := ts[name]; ok {
		return t
	}
	return &Table{Name: name, chains: map[string][]string{}}
}

// Family is an IP family's set of tables: iptables for IPv4, ip6tables
// for IPv6. Each has its own tables and tools (on the namespace's one
// Backend); one Lock covers both.
type Family int

const (
	IPv4 Family = iota
	IPv6
)

// String is the family's tool: "iptables" or "ip6tables".
func (f Family) String() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// Parse reads iptables-save output.
func Parse(out []byte) (Tables, error) {
	ts := Tables{}
	var t *Table
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, "*"):
			t = &Table{Name: line[1:], chains: map[string][]string{}}
			ts[t.Name] = t
		case t == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := t.chains[name]; !ok {
				t.chains[name] = nil
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			t.chains[chain] = append(t.chains[chain], spec)
		}
	}
	return ts, nil
}

// Batch collects the changes to one table, applied by Apply.
type Batch struct {
	table   string
	lines   []string
	deleted map[string]bool // "chain spec" already deleted in this batch
}

// NewBatch starts a change to table.
func NewBatch(table string) *Batch { return &Batch{table: table, deleted: map[string]bool{}} }

// Empty reports whether the batch changes nothing.
func (b *Batch) Empty() bool { return len(b.lines) == 0 }

// Chain creates chain, or flushes it when it exists: the rules that follow
// are then its whole content.
func (b *Batch) Chain(chain string) { b.lines = append(b.lines, ":"+chain+" - [0:0]") }

// Owned makes chain hold exactly rules, given in iptables-save's form.
// When t shows it already does, nothing is written: the common ADD on a
// network that exists costs no kernel transaction for it.
func (b *Batch) Owned(t *Table, chain string, rules []string) {
	if t.HasChain(chain) && slices.Equal(t.Rules(chain), rules) {
		return
	}
	b.Chain(chain)
	for _, r := range rules {
		b.Append(chain, r)
	}
}

// Append adds a rule at the end of chain.
func (b *Batch) Append(chain, spec string) { b.lines = append(b.lines, "-A "+chain+" "+spec) }

// Insert adds a rule at the top of chain.
func (b *Batch) Insert(chain, spec string) { b.lines = append(b.lines, "-I "+chain+" 1 "+spec) }

// Delete removes a rule given exactly as the snapshot shows it.
func (b *Batch) Delete(chain, spec string) {
	if b.deleted[chain+" "+spec] {
		return
	}
	b.deleted[chain+" "+spec] = true
	b.lines = append(b.lines, "-D "+chain+" "+spec)
}

// DeleteChain empties and removes chain as t shows it; jumps to it must be
// deleted first in the same batch. It deletes the rules one by one rather
// than with -F: iptables-nft (1.8.9) fails the whole transaction when -F
// meets a rule already deleted earlier in it.
func (b *Batch) DeleteChain(t *Table, chain string) {
	for _, r := range t.Rules(chain) {
		b.Delete(chain, r)
	}
	b.lines = append(b.lines, "-X "+chain)
}

// DeleteJumps removes every rule of chain in t that jumps to target.
func (b *Batch) DeleteJumps(t *Table, chain, target string) {
	for _, r := range t.Rules(chain) {
		if JumpTarget(r) == target {
			b.Delete(chain, r)
		}
	}
}

// Restore renders the batches as iptables-restore input: one COMMIT per
// table that changes, "" when none does.
func Restore(batches ...*Batch) string {
	var in strings.Builder
	for _, b := range batches {
		if !b.Empty() {
			fmt.Fprintf(&in, "*%s\n%s\nCOMMIT\n", b.table, strings.Join(b.lines, "\n"))
		}
	}
	return in.String()
}

// Lock serialises berth's read-modify-write cycles (Save, then Apply) on
// the rules of the calling thread's network namespace, both families,
// whichever network or stateDir the caller serves: iptables' own xtables
// lock covers single execs only.
func Lock() (*netnsdir.Lock, error) { return netnsdir.Acquire("iptables.lock", false) }

// SharedLock is Lock for a reader (CHECK): readers run side by side, and
// never while a read-modify-write cycle commits.
func SharedLock() (*netnsdir.Lock, error) { return netnsdir.Acquire("iptables.lock", true) }

package iptables

import (
	byteorder "encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/netnsdir"
)

// cacheFile holds, in a namespace's netnsdir directory, the tables of
// every family as berth last saw or wrote them, with the nf_tables
// generation they are of.
const cacheFile = "iptables-rules.json"

// Cycle is one read-modify-write of a namespace's rules under Lock: Save
// reads a family's tables, Apply commits batches to it, Close remembers
// the result. With the nf_tables backend it saves the iptables-save exec:
// the kernel numbers every committed transaction of the namespace (its
// generation, all families and tables together), so tables berth wrote at
// generation g are still exact while the generation is g. A cycle whose
// commits were the only ones between its start and its end (the
// generation moved by exactly the number of transactions it committed)
// leaves the tables it knows for the next cycle; any other change, by
// anyone, moves the generation further and the next cycle saves afresh.
// Save and Apply may run side by side for different families.
type Cycle struct {
	backend Backend
	path    string // "" when nothing is cached (legacy backend, no netnsdir)

	mu      sync.Mutex
	start   uint32            // generation when the cycle began
	known   map[Family]Tables // exact as of start plus this cycle's commits
	commits uint32            // transactions this cycle committed
	broken  bool              // a commit failed: the outcome is unknown
	// reread are the families whose berth rules the cache held when it
	// was found stale: Close reads those the cycle did not need.
	reread []Family
}

// cached is cacheFile's content.
type cached struct {
	Generation uint32 `json:"generation"`
	// Families maps "iptables"/"ip6tables" to table → chain → rules.
	Families map[string]map[string]map[string][]string `json:"families"`
}

// Begin starts a cycle in the calling thread's namespace. The caller holds
// Lock until Close.
func (b Backend) Begin() *Cycle {
	c := &Cycle{backend: b, known: map[Family]Tables{}}
	if b.Name != NFTables {
		return c // legacy tables have no generation: always saved
	}
	dir, err := netnsdir.Current()
	if err != nil {
		return c
	}
	gen, err := generation()
	if err != nil {
		return c
	}
	c.path, c.start = filepath.Join(dir, cacheFile), gen
	data, err := os.ReadFile(c.path)
	var f cached
	if err != nil || json.Unmarshal(data, &f) != nil {
		return c
	}
	for _, fam := range []Family{IPv4, IPv6} {
		tables, ok := f.Families[fam.String()]
		switch {
		case !ok:
		case f.Generation == gen:
			c.known[fam] = fromJSON(tables)
		case holdsBerth(fromJSON(tables)):
			c.reread = append(c.reread, fam)
		}
	}
	return c
}

// Save returns family f's tables: as the cycle knows them, else read with
// iptables-save.
func (c *Cycle) Save(f Family) (Tables, error) {
	c.mu.Lock()
	ts, ok := c.known[f]
	c.mu.Unlock()
	if ok {
		return ts, nil
	}
	ts, err := c.backend.Save(f)
	if err != nil {
		return nil, err
	}
	// Exact as of start if nobody else commits during the cycle (Close
	// checks): the cycle's own commits to f come after this save, and
	// those to the other family do not touch f's tables.
	c.mu.Lock()
	c.known[f] = ts
	c.mu.Unlock()
	return ts, nil
}

// Known returns family f's tables if the cycle has them without asking
// the kernel: from the last cycle, or saved or committed in this one.
func (c *Cycle) Known(f Family) (Tables, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts, ok := c.known[f]
	return ts, ok
}

// Apply commits the batches to family f (Backend.Apply) and, once they
// are in, to the tables the cycle knows of f.
func (c *Cycle) Apply(f Family, batches ...*Batch) error {
	c.mu.Lock()
	ts, ok := c.known[f]
	c.mu.Unlock()
	commits, err := c.commit(f, ts, ok, batches)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.broken = true
		return err
	}
	c.commits += uint32(commits)
	for _, b := range batches {
		if ok && !b.Empty() {
			ts.apply(b)
		}
	}
	return nil
}

// commit writes the batches to family f, whose tables are known as ts
// when ok, and returns the number of transactions that took: one when
// nf_tables' netlink API can take them directly (see directWrite), else
// one per table iptables-restore changes. Each moves the generation by
// one: each batch changes something, computed from the exact tables.
func (c *Cycle) commit(f Family, ts Tables, ok bool, batches []*Batch) (int, error) {
	if ok && c.backend.writesDirect() {
		if w, can := planDirect(f, ts, batches); can {
			err := w.commit()
			if !errors.Is(err, errNotApplied) {
				return 1, err
			}
			// Nothing was applied: iptables-restore tries, and names
			// the rule at fault if it fails too.
		}
	}
	n := 0
	for _, b := range batches {
		if !b.Empty() {
			n++
		}
	}
	return n, c.backend.Apply(f, batches...)
}

// Close remembers the tables the cycle knows for the next one, if the
// generation says they are exact; otherwise it forgets them all.
func (c *Cycle) Close() {
	if c.path == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	gen, err := generation()
	// Nothing of berth's left (the last network went): nothing to
	// remember, and nothing left behind in the namespace's directory.
	if err != nil || c.broken || gen != c.start+c.commits || !c.holdsBerth() {
		os.Remove(c.path)
		return
	}
	// Somebody else changed the rules since the cache was written, and
	// this cycle only read the families it changes. The others are read
	// now, while the lock is held anyway: otherwise the next cycle on
	// the other family pays for the read, and with one network per
	// family on a node where anything else writes rules (the reference
	// plugins, kube-proxy), the dual-stack network's cycles paid for an
	// ip6tables-save after almost every change of the IPv4 network's.
	// (Not when the cycle's own tables are stale already: then the
	// read would be thrown away.)
	read := false
	for _, f := range c.reread {
		if _, ok := c.known[f]; ok {
			continue
		}
		if ts, err := c.backend.Save(f); err == nil {
			c.known[f], read = ts, true
		}
	}
	// A read is an exec: the tables are exact only if nobody else
	// committed meanwhile.
	if read {
		if gen, err = generation(); err != nil || gen != c.start+c.commits {
			os.Remove(c.path)
			return
		}
	}
	f := cached{Generation: gen, Families: map[string]map[string]map[string][]string{}}
	for fam, ts := range c.known {
		f.Families[fam.String()] = toJSON(ts)
	}
	data, err := json.Marshal(f)
	if err != nil {
		os.Remove(c.path)
		return
	}
	// Written in place, not through a temporary file, which a plugin
	// killed before the rename would leave behind for good: only cycles
	// read the file, under the same lock, and what a killed writer leaves
	// half-written is not JSON, so the next cycle saves afresh.
	if os.WriteFile(c.path, data, 0o644) != nil {
		os.Remove(c.path)
	}
}

// holdsBerth reports whether a table the cycle knows has a chain of
// berth's.
func (c *Cycle) holdsBerth() bool {
	for _, ts := range c.known {
		if holdsBerth(ts) {
			return true
		}
	}
	return false
}

func holdsBerth(ts Tables) bool {
	for _, t := range ts {
		if len(t.Chains(Prefix)) > 0 {
			return true
		}
	}
	return false
}

func toJSON(ts Tables) map[string]map[string][]string {
	out := map[string]map[string][]string{}
	for name, t := range ts {
		out[name] = t.chains
	}
	return out
}

func fromJSON(in map[string]map[string][]string) Tables {
	ts := Tables{}
	for name, chains := range in {
		if chains == nil {
			chains = map[string][]string{}
		}
		ts[name] = &Table{Name: name, chains: chains}
	}
	return ts
}

// apply changes ts as iptables-restore applies b to the kernel's tables.
func (ts Tables) apply(b *Batch) {
	t, ok := ts[b.table]
	if !ok {
		t = &Table{Name: b.table, chains: map[string][]string{}}
		ts[b.table] = t
	}
	for _, line := range b.lines {
		op, rest, _ := strings.Cut(line, " ")
		chain, spec, _ := strings.Cut(rest, " ")
		switch {
		case strings.HasPrefix(op, ":"): // create or flush
			t.chains[op[1:]] = nil
		case op == "-A":
			t.chains[chain] = append(t.chains[chain], spec)
		case op == "-I": // "-I CHAIN 1 spec": Batch inserts at the top only
			_, spec, _ = strings.Cut(spec, " ")
			t.chains[chain] = append([]string{spec}, t.chains[chain]...)
		case op == "-D":
			rules := t.chains[chain]
			for i, r := range rules {
				if r == spec {
					t.chains[chain] = append(rules[:i:i], rules[i+1:]...)
					break
				}
			}
		case op == "-X":
			delete(t.chains, chain)
		}
	}
}

// generation asks nf_tables for the calling thread's namespace's
// generation (NFT_MSG_GETGEN), which every committed transaction moves.
func generation() (uint32, error) {
	var gen uint32
	req := nfMessage(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, 0, nil)
	_, err := query(req, func(m syscall.NetlinkMessage) (bool, error) {
		if m.Header.Type == unix.NLMSG_ERROR {
			return true, errors.New("nf_tables: NFT_MSG_GETGEN refused")
		}
		if len(m.Data) >= 4 {
			for _, a := range attrs(m.Data[4:]) { // after nfgenmsg
				if a.typ == unix.NFTA_GEN_ID && len(a.data) >= 4 {
					gen = byteorder.BigEndian.Uint32(a.data)
					return true, nil
				}
			}
		}
		return true, errors.New("nf_tables: no generation in the answer")
	})
	return gen, err
}

// Package ipam is berth's address allocator: host-local compatible
// configuration and disk layout, O(1) amortised allocation and release, and
// crash safety (see store.go). The berth-ipam binary wraps it, and berth's
// plugins link it in-process when their ipam type is berth-ipam.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
)

// Pool allocates addresses of one network.
type Pool struct {
	conf  *conf.IPAM
	store *store
}

// Allocation is one address handed to an attachment.
type Allocation struct {
	Addr  netip.Addr
	Range conf.Range
}

// Open opens the store of network as configured by c.
func Open(network string, c *conf.IPAM) (*Pool, error) {
	s, err := openStore(c.DataDir, network)
	if err != nil {
		return nil, err
	}
	return &Pool{conf: c, store: s}, nil
}

// Close releases the store's file handle.
func (p *Pool) Close() error { return p.store.close() }

// Allocate gives att one address from each range set (the requested ones
// where asked). Calling it again for the same attachment returns the same
// addresses, as host-local does.
func (p *Pool) Allocate(att Attachment) ([]Allocation, error) {
	var out []Allocation
	err := p.store.withLock(func() error {
		rec, err := p.store.readRecord(att)
		if err != nil {
			return err
		}
		if rec != nil && rec.Pending {
			// An earlier ADD was killed midway: free what it reserved and start over.
			if err := p.releaseLocked(att, rec); err != nil {
				return err
			}
			rec = nil
		}
		if rec != nil {
			if allocs, ok := p.matchSets(rec.Addrs); ok {
				out = allocs
				return nil
			}
			if err := p.releaseLocked(att, rec); err != nil {
				return err
			}
		}
		out, err = p.allocateLocked(att)
		return err
	})
	return out, err
}

func (p *Pool) allocateLocked(att Attachment) (allocs []Allocation, err error) {
	if err := p.store.writeRecord(&record{Attachment: att, Pending: true}); err != nil {
		return nil, err
	}
	r, err := p.store.newReserver(att)
	if err != nil {
		p.store.removeRecord(att)
		return nil, err
	}
	defer r.done()
	defer func() {
		if err != nil { // roll back: nothing of a failed ADD stays reserved
			for _, a := range allocs {
				p.store.release(a.Addr, att)
			}
			p.store.removeRecord(att)
			allocs = nil
		}
	}()
	for set := range p.conf.RangeSets {
		a, err := p.allocateFromSet(r, set, att)
		if err != nil {
			return allocs, err
		}
		allocs = append(allocs, a)
	}
	rec := &record{Attachment: att}
	for _, a := range allocs {
		rec.Addrs = append(rec.Addrs, a.Addr)
	}
	return allocs, p.store.writeRecord(rec)
}

func (p *Pool) allocateFromSet(r *reserver, set int, att Attachment) (Allocation, error) {
	ranges := p.conf.RangeSets[set]
	for _, want := range p.conf.Requested {
		if p.conf.SetFor(want) != set {
			continue
		}
		rg := rangeOf(ranges, want)
		if want == rg.Gateway {
			return Allocation{}, fmt.Errorf("%w: %s is the gateway of %s", cnierr.ErrAddressInUse, want, rg.Subnet)
		}
		ok, err := r.reserve(want)
		if err != nil {
			return Allocation{}, err
		}
		if !ok {
			holder, _ := p.store.owner(want)
			if holder != att {
				return Allocation{}, fmt.Errorf("%w: %s is held by container %s (%s)", cnierr.ErrAddressInUse, want, holder.ContainerID, holder.IfName)
			}
		}
		return Allocation{Addr: want, Range: rg}, nil
	}

	// Round robin from the address after the last one handed out, like
	// host-local, so a released address is not reused at once (stale ARP
	// and conntrack entries would point at the new container).
	it := newIterator(ranges, p.store.cursor(set))
	for a, rg, ok := it.next(); ok; a, rg, ok = it.next() {
		if a == rg.Gateway {
			continue
		}
		got, err := r.reserve(a)
		if err != nil {
			return Allocation{}, err
		}
		if got {
			if err := p.store.setCursor(set, a); err != nil {
				p.store.release(a, att)
				return Allocation{}, fmt.Errorf("%w: saving allocation cursor: %v", cnierr.ErrIO, err)
			}
			return Allocation{Addr: a, Range: rg}, nil
		}
	}
	return Allocation{}, fmt.Errorf("%w: no free address in %s", cnierr.ErrAddressExhausted, describe(ranges))
}

// matchSets maps addrs back to the configured range sets; ok is false when
// the configuration changed and they no longer fit one per set.
func (p *Pool) matchSets(addrs []netip.Addr) ([]Allocation, bool) {
	out := make([]Allocation, len(p.conf.RangeSets))
	found := 0
	for _, a := range addrs {
		set := p.conf.SetFor(a)
		if set < 0 || out[set].Addr.IsValid() {
			return nil, false
		}
		out[set] = Allocation{Addr: a, Range: rangeOf(p.conf.RangeSets[set], a)}
		found++
	}
	return out, found == len(p.conf.RangeSets)
}

// Release frees att's addresses. Releasing an unknown attachment is not an
// error: DEL must be idempotent.
func (p *Pool) Release(att Attachment) error {
	return p.store.withLock(func() error {
		rec, err := p.store.readRecord(att)
		if err != nil {
			return err
		}
		if rec == nil {
			// Killed before its pending record was in place: nothing was
			// reserved, only temp files may be left.
			return p.store.removeRecord(att)
		}
		return p.releaseLocked(att, rec)
	})
}

func (p *Pool) releaseLocked(att Attachment, rec *record) error {
	addrs := rec.Addrs
	if rec.Pending {
		var err error
		if addrs, err = p.store.ownedBy(att); err != nil {
			return err
		}
	}
	for _, a := range addrs {
		if err := p.store.release(a, att); err != nil {
			return err
		}
	}
	return p.store.removeRecord(att)
}

// Addresses returns what att holds, checking each reservation on disk.
func (p *Pool) Addresses(att Attachment) ([]netip.Addr, error) {
	var out []netip.Addr
	err := p.store.withLock(func() error {
		rec, err := p.store.readRecord(att)
		if err != nil {
			return err
		}
		if rec == nil || rec.Pending {
			return fmt.Errorf("%w: container %s (%s) holds no address in %s", cnierr.ErrCheckFailed, att.ContainerID, att.IfName, p.store.dir)
		}
		for _, a := range rec.Addrs {
			holder, err := p.store.owner(a)
			if err != nil || holder != att {
				return fmt.Errorf("%w: reservation of %s for container %s is missing", cnierr.ErrCheckFailed, a, att.ContainerID)
			}
		}
		out = rec.Addrs
		return nil
	})
	return out, err
}

// GC releases every reservation whose attachment keep refuses and
// returns how many addresses it freed. keep runs under the store's lock:
// what it reads cannot change under an allocation meanwhile.
func (p *Pool) GC(keep func(Attachment) bool) (int, error) {
	freed := 0
	err := p.store.withLock(func() error {
		p.store.removeTemps()
		all, err := p.store.scan()
		if err != nil {
			return err
		}
		for a, att := range all {
			if keep(att) {
				continue
			}
			if err := os.Remove(p.store.path(a)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: releasing %s: %v", cnierr.ErrIO, a, err)
			}
			freed++
		}
		recs, err := p.store.records()
		if err != nil {
			return err
		}
		for _, r := range recs {
			if !keep(r.Attachment) {
				if err := p.store.removeRecord(r.Attachment); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return freed, err
}

// Status reports whether the store can take a new allocation.
func (p *Pool) Status() error {
	probe := p.store.dir
	f, err := os.CreateTemp(probe, tmpPrefix)
	if err != nil {
		return fmt.Errorf("%w: IPAM store %s is not writable: %v", cnierr.ErrUnavailable, probe, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

func rangeOf(ranges []conf.Range, a netip.Addr) conf.Range {
	for _, r := range ranges {
		if r.Contains(a) {
			return r
		}
	}
	return conf.Range{}
}

func describe(ranges []conf.Range) string {
	s := ""
	for i, r := range ranges {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s-%s", r.Start, r.End)
	}
	return s
}

// iterator walks the addresses of a range set once, starting after cursor
// and wrapping around, like host-local's RangeIter.
type iterator struct {
	ranges       []conf.Range
	ri           int
	cur          netip.Addr
	startRange   int
	start        netip.Addr
	started, end bool
}

func newIterator(ranges []conf.Range, cursor netip.Addr) *iterator {
	it := &iterator{ranges: ranges}
	for i, r := range ranges {
		if cursor.IsValid() && r.Contains(cursor) {
			it.ri, it.cur = i, cursor
			it.advance()
			it.startRange, it.start = it.ri, it.cur
			return it
		}
	}
	it.ri, it.cur = 0, ranges[0].Start
	it.startRange, it.start = 0, it.cur
	return it
}

func (it *iterator) advance() {
	if it.cur == it.ranges[it.ri].End {
		it.ri = (it.ri + 1) % len(it.ranges)
		it.cur = it.ranges[it.ri].Start
		return
	}
	it.cur = it.cur.Next()
}

func (it *iterator) next() (netip.Addr, conf.Range, bool) {
	if it.end {
		return netip.Addr{}, conf.Range{}, false
	}
	if it.started && it.ri == it.startRange && it.cur == it.start {
		it.end = true
		return netip.Addr{}, conf.Range{}, false
	}
	it.started = true
	a, r := it.cur, it.ranges[it.ri]
	it.advance()
	return a, r, true
}

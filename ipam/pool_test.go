package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
)

func newPool(t *testing.T, ipamJSON string) *Pool {
	t.Helper()
	c, err := conf.ParseIPAM([]byte(`{"ipam":`+ipamJSON+`}`), "")
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = t.TempDir()
	p, err := Open("net", c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func att(i int) Attachment { return Attachment{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func TestAllocateRoundRobinSkipsGateway(t *testing.T) {
	p := newPool(t, `{"subnet":"10.0.0.0/29"}`) // .1 gateway, .2-.6 allocatable
	alloc := func(i int) string {
		t.Helper()
		a, err := p.Allocate(att(i))
		if err != nil {
			t.Fatal(err)
		}
		return a[0].Addr.String()
	}
	release := func(i int) {
		t.Helper()
		if err := p.Release(att(i)); err != nil {
			t.Fatal(err)
		}
	}
	// A freed address is not handed out again while the cursor has
	// fresh ones ahead: .2 freed, the next is .4, not .2.
	if a, b := alloc(0), alloc(1); a != "10.0.0.2" || b != "10.0.0.3" {
		t.Fatalf("first two: %s %s", a, b)
	}
	release(0)
	if got := alloc(2); got != "10.0.0.4" {
		t.Fatalf("after releasing .2: got %s, want 10.0.0.4 (round robin, not the lowest free)", got)
	}
	var got []string
	for i := 3; i <= 5; i++ {
		got = append(got, alloc(i))
	}
	// The cursor wraps round past the gateway to the freed .2.
	if want := "[10.0.0.5 10.0.0.6 10.0.0.2]"; fmt.Sprint(got) != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, err := p.Allocate(att(9)); !errors.Is(err, cnierr.ErrAddressExhausted) {
		t.Fatalf("full pool: err = %v, want exhausted", err)
	}
	// Freed .5 then .3: the cursor (at .2) reaches .3 first.
	release(4)
	release(1)
	if got := alloc(10); got != "10.0.0.3" {
		t.Fatalf("after releasing .5 and .3: got %s, want 10.0.0.3", got)
	}
}

// The cursor lives in the store (host-local's last_reserved_ip.0): a
// new Pool on the same data dir, as the next plugin exec is, continues
// after the last address handed out.
func TestRoundRobinSurvivesReopen(t *testing.T) {
	c, err := conf.ParseIPAM([]byte(`{"ipam":{"subnet":"10.0.0.0/29"}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = t.TempDir()
	next := func(i int) string {
		t.Helper()
		p, err := Open("net", c)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		a, err := p.Allocate(att(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := p.Release(att(i)); err != nil {
				t.Fatal(err)
			}
		}
		return a[0].Addr.String()
	}
	if a, b := next(0), next(1); a != "10.0.0.2" || b != "10.0.0.3" {
		t.Fatalf("got %s then %s (the first released), want 10.0.0.2 then 10.0.0.3", a, b)
	}
	if data, err := os.ReadFile(filepath.Join(c.DataDir, "net", "last_reserved_ip.0")); err != nil || string(data) != "10.0.0.3" {
		t.Fatalf("last_reserved_ip.0: %q %v", data, err)
	}
}

func TestAllocateIsIdempotentPerAttachment(t *testing.T) {
	p := newPool(t, `{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd01::/120"}]]}`)
	a1, err := p.Allocate(att(1))
	if err != nil {
		t.Fatal(err)
	}
	a2, err := p.Allocate(att(1))
	if err != nil {
		t.Fatal(err)
	}
	if len(a1) != 2 || a1[0].Addr != a2[0].Addr || a1[1].Addr != a2[1].Addr {
		t.Fatalf("first %v, second %v", a1, a2)
	}
}

func TestRequestedAddress(t *testing.T) {
	c, err := conf.ParseIPAM([]byte(`{"ipam":{"subnet":"10.2.0.0/24"}}`), "IP=10.2.0.50")
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = t.TempDir()
	p, _ := Open("net", c)
	defer p.Close()
	a, err := p.Allocate(att(1))
	if err != nil || a[0].Addr != netip.MustParseAddr("10.2.0.50") {
		t.Fatalf("got %v, %v", a, err)
	}
	if _, err := p.Allocate(att(2)); !errors.Is(err, cnierr.ErrAddressInUse) {
		t.Fatalf("second claim: err = %v, want in use", err)
	}
	// The failed claim left nothing behind.
	if rec, _ := p.store.readRecord(att(2)); rec != nil {
		t.Fatalf("record of failed ADD left: %+v", rec)
	}
	c.Requested = []netip.Addr{netip.MustParseAddr("10.2.0.1")}
	if _, err := p.Allocate(att(3)); !errors.Is(err, cnierr.ErrAddressInUse) {
		t.Fatalf("gateway claim: err = %v", err)
	}
}

func TestMultipleRangesInSet(t *testing.T) {
	p := newPool(t, `{"ranges":[[{"subnet":"10.3.0.0/30"},{"subnet":"10.3.1.0/30"}]]}`)
	var got []string
	for i := 0; i < 2; i++ {
		a, err := p.Allocate(att(i))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a[0].Addr.String())
	}
	if fmt.Sprint(got) != "[10.3.0.2 10.3.1.2]" {
		t.Fatalf("got %v", got)
	}
}

func TestReleaseUnknownAndGC(t *testing.T) {
	p := newPool(t, `{"subnet":"10.4.0.0/24"}`)
	if err := p.Release(att(42)); err != nil {
		t.Fatalf("release unknown: %v", err)
	}
	for i := 0; i < 5; i++ {
		if _, err := p.Allocate(att(i)); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := p.GC(func(a Attachment) bool { return a == att(0) || a == att(3) })
	if err != nil || freed != 3 {
		t.Fatalf("GC freed %d, %v", freed, err)
	}
	if _, err := p.Addresses(att(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Addresses(att(1)); !errors.Is(err, cnierr.ErrCheckFailed) {
		t.Fatalf("collected attachment: %v", err)
	}
}

// TestInterruptedAdd simulates a plugin killed between reserving an address
// and completing its record: DEL must still find and free the address.
func TestInterruptedAdd(t *testing.T) {
	p := newPool(t, `{"subnet":"10.5.0.0/24"}`)
	a := att(1)
	if err := p.store.writeRecord(&record{Attachment: a, Pending: true}); err != nil {
		t.Fatal(err)
	}
	r, _ := p.store.newReserver(a)
	r.reserve(netip.MustParseAddr("10.5.0.9")) // killed here: the temp file stays too
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.store.dir, "10.5.0.9")); !os.IsNotExist(err) {
		t.Fatalf("reservation survived DEL: %v", err)
	}
	if _, err := p.GC(func(Attachment) bool { return false }); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(p.store.dir)
	for _, e := range entries {
		if e.Name() != lockFile && e.Name() != indexMarker && e.Name() != attachDir {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// TestHostLocalMigration: a directory written by host-local gets indexed,
// so DEL frees its reservations without a scan.
func TestHostLocalMigration(t *testing.T) {
	p := newPool(t, `{"subnet":"10.6.0.0/24"}`)
	os.Remove(filepath.Join(p.store.dir, indexMarker))
	os.WriteFile(filepath.Join(p.store.dir, "10.6.0.7"), []byte("old\r\neth0"), 0o644)
	if err := p.Release(Attachment{"old", "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.store.dir, "10.6.0.7")); !os.IsNotExist(err) {
		t.Fatal("host-local reservation not released")
	}
}

func TestConcurrentAllocateNoDuplicates(t *testing.T) {
	p := newPool(t, `{"subnet":"10.7.0.0/24"}`)
	var mu sync.Mutex
	seen := map[netip.Addr]int{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			// Each worker opens its own pool, as separate plugin processes would.
			q, err := Open("net", p.conf)
			if err != nil {
				t.Error(err)
				return
			}
			defer q.Close()
			for i := 0; i < 25; i++ {
				a, err := q.Allocate(att(w*100 + i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[a[0].Addr]++
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	for a, n := range seen {
		if n > 1 {
			t.Errorf("%s handed out %d times", a, n)
		}
	}
	if len(seen) != 200 {
		t.Errorf("allocated %d distinct addresses, want 200", len(seen))
	}
}

// berth-ipam on its own refuses, at ADD, a subnet no address can come
// from (code 7 naming it), and still releases at DEL what an older berth
// allocated from one.
func TestAddRefusesUnusableSubnet(t *testing.T) {
	c, err := conf.ParseIPAM([]byte(`{"ipam":{"ranges":[[{"subnet":"10.5.0.0/24"}],[{"subnet":"fe80::/64"}]]}}`), "")
	if err != nil {
		t.Fatalf("DEL and GC must parse it: %v", err)
	}
	c.DataDir = t.TempDir()
	req := &Request{Network: "net", Conf: c, Attachment: att(1)}
	if _, err := Add(req); !errors.Is(err, cnierr.ErrInvalidConfig) || !strings.Contains(err.Error(), "ipam.ranges[1][0].subnet: fe80::/64 is link-local") {
		t.Errorf("ADD: %v, want code 7 naming ipam.ranges[1][0].subnet", err)
	}
	p, err := Open("net", c)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Allocate(att(2)); err != nil { // as an older berth did
		t.Fatal(err)
	}
	if err := Del(&Request{Network: "net", Conf: c, Attachment: att(2)}); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if _, err := p.Addresses(att(2)); !errors.Is(err, cnierr.ErrCheckFailed) {
		t.Errorf("DEL left the addresses: %v", err)
	}
}

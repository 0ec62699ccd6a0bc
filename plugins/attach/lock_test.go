package attach

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/cnierr"
)

// Calls on one attachment that has no record: each one's unlock removes
// the lock file, while others have it open and wait for its flock. Two of
// them must never hold the lock at once, and no file may be left.
func TestAttachmentLockExcludesAcrossRemovals(t *testing.T) {
	dir := t.TempDir()
	r := &record{Network: "n", ContainerID: "c", IfName: "eth0"}
	const callers, calls = 6, 200
	var holders atomic.Int32
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range calls {
				l, err := lockAttachment(dir, r, "DEL", 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if n := holders.Add(1); n != 1 {
					t.Errorf("%d calls hold the lock of one attachment", n)
				}
				holders.Add(-1)
				l.unlock()
			}
		})
	}
	wg.Wait()
	if left, _ := os.ReadDir(networkDir(dir, "n")); len(left) != 0 {
		t.Errorf("left in the state dir: %v", left)
	}
}

// A call that waits longer than its bound gets error 11 naming the call
// that holds the lock; the lock's file stays while the attachment has a
// record, and goes with it.
func TestAttachmentLockWaitIsBounded(t *testing.T) {
	dir := t.TempDir()
	r := &record{Network: "n", ContainerID: "c", IfName: "eth0"}
	held, err := lockAttachment(dir, r, "ADD", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockAttachment(dir, r, "DEL", 50*time.Millisecond)
	if !errors.Is(err, cnierr.ErrTryAgainLater) || !strings.Contains(err.Error(), fmt.Sprintf("ADD by pid %d", os.Getpid())) {
		t.Errorf("waiting for a held lock: %v, want error 11 naming the ADD that holds it", err)
	}
	if l, err := tryLockAttachment(dir, r, "GC"); l != nil || err != nil {
		t.Errorf("GC took a held lock (%v)", err)
	}
	if err := saveRecord(dir, r); err != nil {
		t.Fatal(err)
	}
	held.unlock()
	if !exists(lockPath(dir, r)) {
		t.Errorf("the lock file of an attachment with a record was removed")
	}
	l, err := lockAttachment(dir, r, "DEL", 50*time.Millisecond)
	if err != nil {
		t.Fatalf("lock free again: %v", err)
	}
	removeRecord(dir, r)
	l.unlock()
	if exists(lockPath(dir, r)) {
		t.Errorf("the lock file outlived the record")
	}
}

// A call killed after it took the lock and before it wrote a record
// leaves a free lock file: GC removes it, and leaves alone a held one and
// one whose attachment has a record.
func TestGCRemovesLockFilesOfKilledCalls(t *testing.T) {
	dir := t.TempDir()
	killed := &record{Network: "n", ContainerID: "killed", IfName: "eth0"}
	running := &record{Network: "n", ContainerID: "running", IfName: "eth0"}
	recorded := &record{Network: "n", ContainerID: "recorded", IfName: "eth0"}
	for _, r := range []*record{killed, recorded} {
		l, err := lockAttachment(dir, r, "ADD", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		l.f.Close() // the kernel drops a dead process's flock; its file stays
	}
	if err := saveRecord(dir, recorded); err != nil {
		t.Fatal(err)
	}
	held, err := lockAttachment(dir, running, "ADD", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.unlock()
	removeStaleLocks(networkDir(dir, "n"))
	for _, c := range []struct {
		r    *record
		want bool
	}{{killed, false}, {running, true}, {recorded, true}} {
		if got := exists(lockPath(dir, c.r)); got != c.want {
			t.Errorf("lock file of %s there: %v, want %v", c.r.ContainerID, got, c.want)
		}
	}
}

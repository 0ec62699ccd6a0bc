package attach

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// GC sweeps the temp files of dead writers (their flock is free) while
// ADDs and DELs save records: a sweep that falls between a writer's open
// and its flock must not make the writer's rename fail.
func TestSaveRecordWhileGCSweeps(t *testing.T) {
	dir := t.TempDir()
	const writers, saves = 4, 300
	done := make(chan struct{})
	var sweeps sync.WaitGroup
	sweeps.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := records(dir, "net"); err != nil {
				t.Error(err)
				return
			}
		}
	})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			r := &record{Network: "net", ContainerID: fmt.Sprintf("c%d", w), IfName: "eth0"}
			for i := range saves {
				if err := saveRecord(dir, r); err != nil {
					t.Errorf("save %d of %s: %v", i, r.ContainerID, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	sweeps.Wait()
	got, err := records(dir, "net")
	if err != nil || len(got) != writers {
		t.Errorf("records after the saves: %d, %v; want %d", len(got), err, writers)
	}
}

// A writer killed between creating its temp file and renaming it into
// place leaves the file with its flock free: GC's listing of the records
// removes it, and leaves alone a temp file whose writer holds its lock.
func TestGCRemovesTempFilesOfDeadWriters(t *testing.T) {
	dir := t.TempDir()
	dead := &record{Network: "n", ContainerID: "dead", IfName: "eth0"}
	writing := &record{Network: "n", ContainerID: "writing", IfName: "eth0"}
	if err := os.MkdirAll(networkDir(dir, "n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := lockedTemp(recordPath(dir, dead) + ".tmp")
	if err != nil {
		t.Fatal(err)
	}
	f.Close() // the kernel drops a dead process's flock; its file stays
	held, err := lockedTemp(recordPath(dir, writing) + ".tmp")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := records(dir, "n"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		r    *record
		want bool
	}{{dead, false}, {writing, true}} {
		if got := exists(recordPath(dir, c.r) + ".tmp"); got != c.want {
			t.Errorf("temp file of %s there: %v, want %v", c.r.ContainerID, got, c.want)
		}
	}
}

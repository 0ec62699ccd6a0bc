package attach

import (
	"fmt"
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

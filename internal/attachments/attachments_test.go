package attachments

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// List reads live and leaving records, and skips what is no record: a
// write in progress (.tmp), foreign files, junk.
func TestList(t *testing.T) {
	state := t.TempDir()
	dir := Dir(state, "pods")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"aaa" + ExtLive:          `{"network":"pods","containerID":"c1","ifName":"eth0"}`,
		"bbb" + ExtLeaving:       `{"network":"pods","containerID":"c2","ifName":"net1"}`,
		"ccc" + ExtLive + ".tmp": `{"network":"pods","containerID":"c3","ifName":"eth0"}`,
		"ddd" + ExtLive:          `{`,
		"notes.txt":              `{"containerID":"c4","ifName":"eth0"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := List(state, "pods")
	if err != nil {
		t.Fatal(err)
	}
	want := []Attachment{{ContainerID: "c1", IfName: "eth0"}, {ContainerID: "c2", IfName: "net1", Leaving: true}}
	if !slices.Equal(got, want) {
		t.Errorf("List: %+v, want %+v", got, want)
	}
	if got, err := List(state, "other"); err != nil || len(got) != 0 {
		t.Errorf("a network without records: %+v %v", got, err)
	}
}

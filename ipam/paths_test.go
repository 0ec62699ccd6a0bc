package ipam_test

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/testenv"
)

// berth-ipam on its own (the reference bridge's IPAM, say) refuses a
// relative dataDir at ADD with error 7 naming ipam.dataDir, and writes
// nothing; DEL still runs, to release what an earlier berth recorded.
func TestRelativeDataDir(t *testing.T) {
	bin := filepath.Join(testenv.BinDir(t, "berth-ipam"), "berth-ipam")
	cwd, netns := t.TempDir(), testenv.NewNS(t).Path()
	conf := `{"cniVersion":"1.1.0","name":"rel","ipam":{"type":"berth-ipam","dataDir":"networks","subnet":"10.9.0.0/24"}}`
	run := func(cmd string) ([]byte, error) {
		c := exec.Command(bin)
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=rel1", "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent"}
		c.Stdin = bytes.NewReader([]byte(conf))
		c.Dir = cwd
		return c.Output()
	}
	out, err := run("ADD")
	var res struct {
		Code    int
		Details string
	}
	json.Unmarshal(out, &res)
	if err == nil || res.Code != 7 || !strings.Contains(res.Details, `ipam.dataDir: "networks" is not an absolute path`) {
		t.Errorf("ADD: %v %s, want error 7 naming ipam.dataDir", err, out)
	}
	if matches, _ := filepath.Glob(filepath.Join(cwd, "*")); len(matches) > 0 {
		t.Errorf("refused ADD wrote %v", matches)
	}
	if out, err := run("DEL"); err != nil {
		t.Errorf("DEL: %v %s", err, out)
	}
}

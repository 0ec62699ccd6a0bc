package ipam_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
)

// TestSIGKILLNeverDuplicates kills berth-ipam ADDs at random moments, then
// checks that every address is held once and that DEL of the killed
// attachments (or GC) leaves the store empty.
func TestSIGKILLNeverDuplicates(t *testing.T) {
	bin := filepath.Join(testenv.BinDir(t, "berth-ipam"), "berth-ipam")
	dataDir := t.TempDir()
	netns := testenv.NewNS(t).Path()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"crash","ipam":{"type":"berth-ipam","dataDir":%q,"subnet":"10.9.0.0/24"}}`, dataDir)
	run := func(cmd, id string) *exec.Cmd {
		c := exec.Command(bin)
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent"}
		c.Stdin = bytes.NewReader([]byte(conf))
		return c
	}
	holders := map[string]string{}
	const rounds = 60
	for i := 0; i < rounds; i++ {
		killed := run("ADD", fmt.Sprintf("killed-%d", i))
		if err := killed.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		killed.Process.Kill()
		killed.Wait()

		id := fmt.Sprintf("live-%d", i)
		out, err := run("ADD", id).Output()
		if err != nil {
			t.Fatalf("ADD %s after a kill: %v: %s", id, err, out)
		}
		var res struct {
			IPs []struct{ Address string } `json:"ips"`
		}
		json.Unmarshal(out, &res)
		ip := res.IPs[0].Address
		if other, dup := holders[ip]; dup {
			t.Fatalf("%s handed to %s and %s", ip, other, id)
		}
		holders[ip] = id
	}
	for i := 0; i < rounds; i++ {
		for _, id := range []string{fmt.Sprintf("killed-%d", i), fmt.Sprintf("live-%d", i)} {
			if out, err := run("DEL", id).CombinedOutput(); err != nil {
				t.Fatalf("DEL %s: %v: %s", id, err, out)
			}
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dataDir, "crash"))
	for _, e := range entries {
		switch n := e.Name(); {
		case n == "lock" || n == ".berth-index" || n == "attach" || n == "last_reserved_ip.0":
		default:
			t.Errorf("left after DEL of every attachment: %s", n)
		}
	}
	if att, _ := os.ReadDir(filepath.Join(dataDir, "crash", "attach")); len(att) != 0 {
		for _, a := range att {
			data, _ := os.ReadFile(filepath.Join(dataDir, "crash", "attach", a.Name()))
			t.Errorf("attachment record left: %s %s", a.Name(), data)
		}
	}
}

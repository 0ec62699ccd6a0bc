package attach_test

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// TestSIGKILLDuringAdd kills berth-bridge at random points of ADD, then
// cleans up with DEL (or, every third time, GC): nothing may be left — no
// address, link, iptables rule, port claim or record.
func TestSIGKILLDuringAdd(t *testing.T) {
	n := newNode(t)
	bin := filepath.Join(testenv.BinDir(t, "berth-bridge"), "berth-bridge")
	list := n.conflist("kill", "berth0", "10.94.0.0/24", "")
	rt := testenv.NewRuntime(t, n.ns, list)
	resident := container(t, "resident")
	if _, err := rt.Add(resident); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)
	conf := n.conflistPlugin("kill", "berth0", "10.94.0.0/24")
	conf = strings.TrimSuffix(conf, "}") + `,"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}`

	const rounds = 50
	killedMidway := 0
	for i := 0; i < rounds; i++ {
		c := testenv.NewNS(t)
		env := func(cmd string) []string {
			return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=k" + fmt.Sprint(i), "CNI_NETNS=" + c.Path(),
				"CNI_IFNAME=eth0", "CNI_PATH=" + testenv.BinDir(t)}
		}
		cmd := exec.Command(bin)
		cmd.Env = env("ADD")
		cmd.Stdin = strings.NewReader(conf)
		n.ns.Do(func(ns.NetNS) error { return cmd.Start() })
		time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
		cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err != nil {
			killedMidway++
		}

		if i%3 == 2 {
			if err := rt.GC(resident); err != nil {
				t.Fatalf("round %d: GC: %v", i, err)
			}
		} else {
			del := exec.Command(bin)
			del.Env = env("DEL")
			del.Stdin = strings.NewReader(conf)
			var out []byte
			var err error
			n.ns.Do(func(ns.NetNS) error { out, err = del.CombinedOutput(); return nil })
			if err != nil {
				t.Fatalf("round %d: DEL after kill: %v: %s", i, err, out)
			}
		}
		c.Close()
		if d := testenv.Diff(before, n.snapshot(t)); d != "" {
			t.Fatalf("round %d: left behind:\n%s", i, d)
		}
	}
	t.Logf("%d of %d ADDs killed midway", killedMidway, rounds)
	if killedMidway < rounds/3 {
		t.Errorf("only %d ADDs were killed midway; the timing no longer exercises crashes", killedMidway)
	}
	if err := rt.Del(resident); err != nil {
		t.Fatal(err)
	}
	// Nothing world-writable in the state berth keeps.
	for _, dir := range []string{n.stateDir, n.dataDir} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if info, err := os.Lstat(p); err == nil && info.Mode().Perm()&0o002 != 0 {
				t.Errorf("%s is world-writable (%v)", p, info.Mode())
			}
			return nil
		})
	}
}

package attach_test

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/nodebridge"
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
		// The snapshot leaves lock files out; the killed ADD's goes too.
		if locks, _ := filepath.Glob(filepath.Join(n.stateDir, "networks", "kill", "*.lock")); len(locks) != 1 {
			t.Fatalf("round %d: lock files %v, want the resident's alone", i, locks)
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

// A first ADD killed between creating the network's bridge and marking it
// leaves an unmarked bridge: the next ADD must know it as berth's, so
// that the last DEL removes it, while a bridge that was there before
// berth is adopted and kept.
func TestBridgeOfAKilledFirstADD(t *testing.T) {
	for _, tc := range []struct {
		name        string
		killedAdd   bool // the bridge is one a killed ADD created (its MAC recorded)
		wantRemoved bool
	}{
		{"left by a killed ADD", true, true},
		{"somebody else's", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			mac, _ := net.ParseMAC("02:42:be:47:00:01")
			err := n.ns.Do(func(ns.NetNS) error {
				la := netlink.NewLinkAttrs()
				la.Name, la.HardwareAddr = "berth7", mac
				if tc.killedAdd {
					// What markBridge records before creating the bridge.
					lock, err := nodebridge.Lock(la.Name, false)
					if err != nil {
						return err
					}
					defer lock.Release()
					if err := nodebridge.Creating(lock.Dir, la.Name, mac); err != nil {
						return err
					}
				}
				return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
			})
			if err != nil {
				t.Fatal(err)
			}
			rt := testenv.NewRuntime(t, n.ns, n.conflist("killed", "berth7", "10.97.0.0/24", ""))
			c := container(t, "c1")
			rt.MustAdd(t, c)
			if err := rt.Del(c); err != nil {
				t.Fatal(err)
			}
			var removed bool
			n.ns.Do(func(ns.NetNS) error {
				_, err := netlink.LinkByName("berth7")
				removed = errors.As(err, new(netlink.LinkNotFoundError))
				return nil
			})
			if removed != tc.wantRemoved {
				t.Fatalf("bridge removed by the last DEL: %v, want %v", removed, tc.wantRemoved)
			}
		})
	}
}

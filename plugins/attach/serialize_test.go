package attach_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/nodebridge"
	"github.com/berthnet/berth/internal/testenv"
)

// The calls on one attachment (a container's interface on a network) are
// serialized: a runtime whose ADD timed out sends DEL while the ADD still
// runs (podman does not kill it), a stray ADD may repeat, GC may come
// while a call the runtime gave up on goes on. These tests stop a call
// midway (SIGSTOP, at a point where it has changed the node), run the
// other call, let the first go on, and look at what is left.

// serialNet is one berth-bridge network of these tests on its own node,
// with a resident container that keeps the network (its bridge and rules)
// there, so that every leftover is the racing calls'.
type serialNet struct {
	*node
	name     string
	subnet   string // a /24: ".1" is the gateway
	bin      string
	rt       *testenv.Runtime
	resident *testenv.Attachment
	before   string   // the node's attachmentState with the resident alone
	files    []string // the state dir's files then, lock files included
}

func newSerialNet(t *testing.T, name, subnet string) *serialNet {
	n := newNode(t)
	s := &serialNet{node: n, name: name, subnet: subnet,
		bin: filepath.Join(testenv.BinDir(t, "berth-bridge"), "berth-bridge"),
		rt:  testenv.NewRuntime(t, n.ns, n.conflist(name, "berth0", subnet+".0/24", "")), resident: container(t, "resident")}
	s.rt.MustAdd(t, s.resident)
	s.before, s.files = attachmentState(t, n), s.stateFiles()
	return s
}

// stateFiles lists every file under the state dir: the snapshot leaves
// lock files out (the node's are kept), but a lock file per attachment
// that outlives it would pile up.
func (s *serialNet) stateFiles() []string {
	var files []string
	filepath.WalkDir(s.stateDir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	return files
}

// nothingLeft fails the test when the node or the state dir differ from
// what they were with the resident alone.
func (s *serialNet) nothingLeft(t *testing.T, what string) {
	t.Helper()
	if d := testenv.Diff(s.before, attachmentState(t, s.node)); d != "" {
		t.Errorf("%s: left behind:\n%s", what, d)
	}
	if files := s.stateFiles(); strings.Join(files, "\n") != strings.Join(s.files, "\n") {
		t.Errorf("%s: state files %v, want %v", what, files, s.files)
	}
}

// attachmentOf is how berth names id's eth0 on s: its record's file (the
// key's first 24 hex digits) and its host veth.
func (s *serialNet) attachmentOf(id string) (record, hostVeth string) {
	h := sha256.Sum256([]byte(s.name + "\x00" + id + "\x00eth0"))
	key := hex.EncodeToString(h[:])
	return filepath.Join(s.stateDir, "networks", s.name, key[:24]), nodebridge.HostVethPrefix + key[:11]
}

// pluginCall is one exec of berth-bridge, as a runtime makes it.
type pluginCall struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	done   chan struct{}
	err    error // once done: the CNI error the plugin printed, or why it did not run
}

// start runs command for container id (its eth0 in netns) on s; conf
// adds to the plugin's config (runtimeConfig, prevResult).
func (s *serialNet) start(t *testing.T, command, id string, netns ns.NetNS, conf string) *pluginCall {
	t.Helper()
	plugin := s.conflistPlugin(s.name, "berth0", s.subnet+".0/24")
	if conf != "" {
		plugin = strings.TrimSuffix(plugin, "}") + "," + conf + "}"
	}
	c := &pluginCall{cmd: exec.Command(s.bin), done: make(chan struct{})}
	c.cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns.Path(),
		"CNI_IFNAME=eth0", "CNI_PATH=" + testenv.BinDir(t)}
	c.cmd.Stdin = strings.NewReader(plugin)
	c.cmd.Stdout = &c.stdout
	if err := s.ns.Do(func(ns.NetNS) error { return c.cmd.Start() }); err != nil {
		t.Fatalf("%s %s: %v", command, id, err)
	}
	go func() {
		defer close(c.done)
		if err := c.cmd.Wait(); err != nil {
			var cniErr types.Error
			if json.Unmarshal(c.stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
				c.err = &cniErr
			} else {
				c.err = fmt.Errorf("%s %s: %v: %s", command, id, err, c.stdout.String())
			}
		}
	}()
	// Whatever the test does, the call is not left stopped.
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGCONT)
		<-c.done
	})
	return c
}

// finished reports whether c ended within d.
func (c *pluginCall) finished(d time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(d):
		return false
	}
}

// wait returns c's result (ADD) or error.
func (c *pluginCall) wait(t *testing.T) (*current.Result, error) {
	t.Helper()
	if !c.finished(30 * time.Second) {
		t.Fatalf("%s did not end in 30s", c.cmd.Env[0])
	}
	if c.err != nil || c.stdout.Len() == 0 {
		return nil, c.err
	}
	res, err := current.NewResult(c.stdout.Bytes())
	if err != nil {
		t.Fatalf("result %s: %v", c.stdout.String(), err)
	}
	return res.(*current.Result), nil
}

// stopWhen stops c (SIGSTOP) as soon as reached reports that it got
// far enough, midway through its work; false if c ended first.
func (s *serialNet) stopWhen(t *testing.T, c *pluginCall, point string, reached func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !reached() {
		select {
		case <-c.done:
			return false
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the call did not reach %s in 20s", point)
		}
		time.Sleep(100 * time.Microsecond)
	}
	c.cmd.Process.Signal(syscall.SIGSTOP)
	return true
}

func (c *pluginCall) resume() { c.cmd.Process.Signal(syscall.SIGCONT) }

// A point where an ADD or DEL of id has changed the node and is not done.
type stopPoint struct {
	name    string
	reached func(s *serialNet, id string) bool
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

var (
	// ADD wrote its record (which it writes before anything else).
	recordWritten = stopPoint{"record written", func(s *serialNet, id string) bool {
		rec, _ := s.attachmentOf(id)
		return exists(rec + ".json")
	}}
	// ADD has its address and is putting it in its rules.
	addressTaken = stopPoint{"address taken", func(s *serialNet, id string) bool {
		rec, _ := s.attachmentOf(id)
		data, _ := os.ReadFile(rec + ".json")
		return bytes.Contains(data, []byte(`"containerIP"`))
	}}
	// ADD made the veth: its rules are on the way.
	vethMade = stopPoint{"veth made", func(s *serialNet, id string) bool {
		_, veth := s.attachmentOf(id)
		return s.ns.Do(func(ns.NetNS) error { _, err := netlink.LinkByName(veth); return err }) == nil
	}}
	// DEL marked the record leaving, its first step.
	markedLeaving = stopPoint{"record marked leaving", func(s *serialNet, id string) bool {
		rec, _ := s.attachmentOf(id)
		return exists(rec + ".leaving")
	}}
	// DEL released the address (berth-ipam's index entry of the
	// attachment is gone): the veth and the rules are next.
	addressReleased = stopPoint{"address released", func(s *serialNet, id string) bool {
		h := sha256.Sum256([]byte(id + "/eth0"))
		rec, _ := s.attachmentOf(id)
		return exists(rec+".leaving") && !exists(filepath.Join(s.dataDir, s.name, "attach", hex.EncodeToString(h[:12])))
	}}
)

// stopped starts command (ADD or DEL) for a's eth0 and stops it at p. A
// call that ended before the poll saw it reach p (a loaded machine) is
// undone and made again. Whatever the test finds, a is DELeted at its end, so that
// a failure does not spill into the next test on s.
func (s *serialNet) stopped(t *testing.T, command string, a *testenv.Attachment, p stopPoint, conf string) *pluginCall {
	t.Helper()
	t.Cleanup(func() { s.start(t, "DEL", a.ID, a.Netns, "").wait(t) })
	for range 5 {
		c := s.start(t, command, a.ID, a.Netns, conf)
		if s.stopWhen(t, c, p.name, func() bool { return p.reached(s, a.ID) }) {
			return c
		}
		t.Logf("%s %s ended (%v) before %s: again", command, a.ID, c.err, p.name)
		if command == "DEL" {
			if _, err := s.start(t, "ADD", a.ID, a.Netns, "").wait(t); err != nil {
				t.Fatal(err)
			}
		} else {
			s.del(t, a)
		}
	}
	t.Fatalf("%s %s ended before %s 5 times", command, a.ID, p.name)
	return nil
}

// The other call has time to run (or to wait for the lock) meanwhile.
const meanwhile = 300 * time.Millisecond

// requestAddresses is an ADD's runtimeConfig asking for ip and mac: a
// second ADD of the container gets what a first one's result says.
func requestAddresses(ip, mac string) string {
	return fmt.Sprintf(`"runtimeConfig":{"ips":[%q],"mac":%q}`, ip, mac)
}

// whole fails the test unless id's attachment is all there as res says:
// CHECK (links, addresses, routes, the IPAM reservation, the rules, the
// fast path) passes and the container reaches its gateway.
func (s *serialNet) whole(t *testing.T, what string, a *testenv.Attachment, res *current.Result) {
	t.Helper()
	prev, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.start(t, "CHECK", a.ID, a.Netns, `"prevResult":`+string(prev)).wait(t); err != nil {
		t.Errorf("%s: CHECK of %s: %v", what, a.ID, err)
	}
	if err := testenv.Ping(a.Netns, s.subnet+".1"); err != nil {
		t.Errorf("%s: %s cannot reach its gateway: %v", what, a.ID, err)
	}
}

func (s *serialNet) del(t *testing.T, a *testenv.Attachment) {
	t.Helper()
	if _, err := s.start(t, "DEL", a.ID, a.Netns, "").wait(t); err != nil {
		t.Errorf("DEL %s: %v", a.ID, err)
	}
}

// A DEL that comes while the ADD of its container still runs (the
// runtime's ADD timed out) waits for it, then removes all of it. Before
// the lock, the DEL removed the record and released the address while
// the ADD went on making the veth and rules: a leak no call would find,
// and its address given again.
func TestDelWhileAddRuns(t *testing.T) {
	s := newSerialNet(t, "racedel", "10.41.0")
	for i, p := range []stopPoint{recordWritten, addressTaken, vethMade} {
		t.Run(p.name, func(t *testing.T) {
			a := container(t, fmt.Sprintf("ad%d", i))
			add := s.stopped(t, "ADD", a, p, "")
			del := s.start(t, "DEL", a.ID, a.Netns, "")
			time.Sleep(meanwhile)
			add.resume()
			if _, err := add.wait(t); err != nil {
				t.Errorf("ADD: %v", err)
			}
			if _, err := del.wait(t); err != nil {
				t.Errorf("DEL: %v", err)
			}
			s.nothingLeft(t, "after ADD and DEL")
		})
	}
	// The ADD killed while the DEL waits for it: the kernel drops its
	// lock, and the DEL removes what it made.
	t.Run("ADD killed", func(t *testing.T) {
		a := container(t, "adk")
		add := s.stopped(t, "ADD", a, vethMade, "")
		del := s.start(t, "DEL", a.ID, a.Netns, "")
		time.Sleep(meanwhile)
		add.cmd.Process.Signal(syscall.SIGKILL)
		add.wait(t)
		if _, err := del.wait(t); err != nil {
			t.Errorf("DEL: %v", err)
		}
		s.nothingLeft(t, "after DEL of a killed ADD")
	})
	// ADD and DEL at once with no stop, a few milliseconds apart either
	// way: once both returned, the attachment is whole (the DEL came
	// first) or gone, never half.
	t.Run("at once", func(t *testing.T) {
		for r := range 12 {
			a := container(t, fmt.Sprintf("ao%d", r))
			first, second := "ADD", "DEL"
			if r%4 == 3 {
				first, second = second, first
			}
			calls := map[string]*pluginCall{first: s.start(t, first, a.ID, a.Netns, "")}
			time.Sleep(time.Duration(rand.IntN(20000)) * time.Microsecond)
			calls[second] = s.start(t, second, a.ID, a.Netns, "")
			res, addErr := calls["ADD"].wait(t)
			if _, err := calls["DEL"].wait(t); err != nil {
				t.Errorf("round %d: DEL: %v", r, err)
			}
			rec, veth := s.attachmentOf(a.ID)
			if addErr == nil && exists(rec+".json") {
				s.whole(t, fmt.Sprintf("round %d (DEL first)", r), a, res)
				s.del(t, a)
			}
			s.nothingLeft(t, fmt.Sprintf("round %d (%s first, ADD: %v, veth %s)", r, first, addErr, veth))
			a.Netns.Close()
		}
	})
}

// A second ADD of one container while the first runs waits for it, then
// gets the error for an attachment that exists (103: DEL it first). Before
// the lock, it took the first one's record for a killed ADD's remains and
// removed them under it: both failed.
func TestSecondAddWhileAddRuns(t *testing.T) {
	s := newSerialNet(t, "raceadd", "10.42.0")
	check := func(t *testing.T, a *testenv.Attachment, first, second *pluginCall) {
		res, err := first.wait(t)
		if err != nil {
			t.Fatalf("first ADD: %v", err)
		}
		var cniErr *types.Error
		if _, err := second.wait(t); !errors.As(err, &cniErr) || cniErr.Code != 103 {
			t.Errorf("second ADD: %v, want error 103 (the container has eth0 already: DEL it first)", err)
		}
		s.whole(t, "after two ADDs", a, res)
		s.del(t, a)
		s.nothingLeft(t, "after DEL")
	}
	for i, p := range []stopPoint{recordWritten, vethMade} {
		t.Run(p.name, func(t *testing.T) {
			a := container(t, fmt.Sprintf("aa%d", i))
			first := s.stopped(t, "ADD", a, p, "")
			second := s.start(t, "ADD", a.ID, a.Netns, "")
			time.Sleep(meanwhile)
			first.resume()
			check(t, a, first, second)
		})
	}
	t.Run("at once", func(t *testing.T) {
		for r := range 4 {
			a := container(t, fmt.Sprintf("ab%d", r))
			calls := []*pluginCall{s.start(t, "ADD", a.ID, a.Netns, ""), s.start(t, "ADD", a.ID, a.Netns, "")}
			calls[0].wait(t)
			calls[1].wait(t)
			if calls[0].err != nil { // the first to take the lock won
				calls[0], calls[1] = calls[1], calls[0]
			}
			check(t, a, calls[0], calls[1])
			a.Netns.Close()
		}
	})
}

// A DEL repeated while the first still runs waits for it and succeeds
// with nothing to do; the ADD the runtime sends once that DEL returned
// gets a whole attachment. Before the lock, the second DEL returned at
// once, and the first, going on, removed what the new ADD made.
func TestDelAgainWhileDelRuns(t *testing.T) {
	s := newSerialNet(t, "racedd", "10.43.0")
	for i, p := range []stopPoint{markedLeaving, addressReleased} {
		t.Run(p.name, func(t *testing.T) {
			a := container(t, fmt.Sprintf("dd%d", i))
			if _, err := s.start(t, "ADD", a.ID, a.Netns, "").wait(t); err != nil {
				t.Fatal(err)
			}
			first := s.stopped(t, "DEL", a, p, "")
			second := s.start(t, "DEL", a.ID, a.Netns, "")
			var readd *pluginCall
			if second.finished(meanwhile) {
				readd = s.start(t, "ADD", a.ID, a.Netns, "")
				time.Sleep(meanwhile)
			}
			first.resume()
			if _, err := first.wait(t); err != nil {
				t.Errorf("first DEL: %v", err)
			}
			if _, err := second.wait(t); err != nil {
				t.Errorf("second DEL: %v", err)
			}
			if readd == nil {
				readd = s.start(t, "ADD", a.ID, a.Netns, "")
			}
			if res, err := readd.wait(t); err != nil {
				t.Errorf("ADD after the DELs: %v", err)
			} else {
				s.whole(t, "ADD after two DELs", a, res)
			}
			s.del(t, a)
			s.del(t, a) // once more: nothing to do
			s.nothingLeft(t, "after the last DEL")
		})
	}
}

// CHECK while an ADD of the container runs (one it repeats after a DEL,
// here) waits for it, then checks the whole attachment. Before the lock,
// it checked the half made one and failed.
func TestCheckWhileAddRuns(t *testing.T) {
	s := newSerialNet(t, "racechk", "10.44.0")
	for i, p := range []stopPoint{recordWritten, vethMade} {
		t.Run(p.name, func(t *testing.T) {
			a := container(t, fmt.Sprintf("ck%d", i))
			addrs := requestAddresses(fmt.Sprintf("%s.%d/24", s.subnet, 50+i), fmt.Sprintf("02:00:0a:2c:00:%02x", 50+i))
			res, err := s.start(t, "ADD", a.ID, a.Netns, addrs).wait(t)
			if err != nil {
				t.Fatalf("first ADD: %v", err)
			}
			s.del(t, a)
			prev, _ := json.Marshal(res)
			add := s.stopped(t, "ADD", a, p, addrs)
			check := s.start(t, "CHECK", a.ID, a.Netns, `"prevResult":`+string(prev))
			time.Sleep(meanwhile)
			add.resume()
			if _, err := add.wait(t); err != nil {
				t.Errorf("ADD: %v", err)
			}
			if _, err := check.wait(t); err != nil {
				t.Errorf("CHECK during the ADD: %v", err)
			}
			s.del(t, a)
			s.nothingLeft(t, "after DEL")
		})
	}
}

// GC while an ADD of a container the runtime does not list yet runs (one
// it gave up on, or listed before the ADD began) leaves that attachment
// alone and does not wait for it: the next GC gets it if it is stale.
// (GC may wait for the node's locks, which the stopped ADD may hold.)
// Before the lock, GC removed it under the ADD; with the lock but without
// GC keeping the addresses of the attachments it skipped, its address was
// released while the container kept it.
func TestGCWhileAddRuns(t *testing.T) {
	s := newSerialNet(t, "racegc", "10.45.0")
	for i, p := range []stopPoint{recordWritten, vethMade} {
		t.Run(p.name, func(t *testing.T) {
			a := container(t, fmt.Sprintf("gc%d", i))
			add := s.stopped(t, "ADD", a, p, "")
			gc := make(chan error, 1)
			go func() { gc <- s.rt.GC(s.resident) }()
			// GC ends while the ADD is stopped, unless it waits for
			// a node lock the ADD holds (IPAM's, the iptables lock):
			// then it is past the attachments, for which it takes
			// no such lock, within milliseconds.
			var gcErr error
			select {
			case gcErr = <-gc:
			case <-time.After(2 * time.Second):
				add.resume()
				gcErr = <-gc
			}
			add.resume()
			if gcErr != nil {
				t.Errorf("GC: %v", gcErr)
			}
			res, err := add.wait(t)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			s.whole(t, "after GC", a, res)
			// Now that the ADD is done, GC removes it (the runtime
			// still does not list it).
			if err := s.rt.GC(s.resident); err != nil {
				t.Errorf("second GC: %v", err)
			}
			s.nothingLeft(t, "after the second GC")
		})
	}
}

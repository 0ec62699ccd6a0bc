package runtimes

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
)

// TestContainerd runs berth under containerd 1.6 the simplest way a
// runtime of it does, `ctr run --cni`: ctr reads the first conflist of
// /etc/cni/net.d and finds plugins in /opt/cni/bin, so the sandbox binds
// the test's directories there; containerd runs in the sandbox with its
// own root, state and socket. It runs on each datapath.
func TestContainerd(t *testing.T) {
	requireRuntimes(t)
	for _, bin := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (apt-get install containerd)", bin)
		}
	}
	forEachDatapath(t, testContainerd)
}

func testContainerd(t *testing.T, dp datapath) {
	node := testenv.NewNS(t)
	testenv.Link(t, node, "eth0", nodeIP+"/24", testenv.NewNS(t), "eth0", outsideIP+"/24")
	dir := t.TempDir()
	netd, bin := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin")
	for _, d := range []string{netd, bin} {
		os.MkdirAll(d, 0o755)
	}
	berthBin := testenv.BinDir(t, "berth-bridge", "berth-ipam")
	for _, plugin := range []string{filepath.Join(berthBin, "berth-bridge"), filepath.Join(berthBin, "berth-ipam"), "/usr/lib/cni/loopback"} {
		if err := os.Symlink(plugin, filepath.Join(bin, filepath.Base(plugin))); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "opt"))
	os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644)

	s := newSandbox(t, node, map[string]string{"/etc/cni/net.d": netd, "/opt/cni/bin": bin})
	daemon := s.command("containerd", "--config", filepath.Join(dir, "config.toml"))
	logFile, _ := os.Create(filepath.Join(dir, "containerd.log"))
	daemon.Stdout, daemon.Stderr = logFile, logFile
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { daemon.Process.Kill(); daemon.Wait() }) // the sandbox also stops the shims
	ctr := func(args ...string) (string, error) {
		return s.run("ctr", append([]string{"--address", sock, "--namespace", "berth"}, args...)...)
	}
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if _, err := ctr("version"); err == nil {
			break
		}
		if time.Since(start) > 20*time.Second {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not come up:\n%s", log)
		}
	}
	if out, err := ctr("images", "import", "--base-name", "localhost/berth-busybox", busyboxImage(t, dir)); err != nil {
		t.Fatalf("importing the image: %v\n%s", err, out)
	}
	const image = "localhost/berth-busybox:latest"
	stateDir, ipamDir := filepath.Join(dir, "berth-state"), filepath.Join(dir, "ipam")
	snapshot := func() string { return testenv.Snapshot(t, node, append([]string{stateDir, ipamDir}, dp.dirs()...)...) }
	before := snapshot()
	// ctr uses the first conflist of /etc/cni/net.d: this one.
	berthList := func(v string, subnet int) {
		list := fmt.Sprintf(`{"cniVersion":%q,"name":"ctrnet","plugins":[{"type":"berth-bridge","bridge":"berthc0","isDefaultGateway":true%s,
			"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.84.%d.0/24"}]]}}]}`, v, dp.config(), stateDir, ipamDir, subnet)
		if err := os.WriteFile(filepath.Join(netd, "10-berth.conflist"), []byte(list), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for i, v := range []string{"0.3.1", "1.0.0", "1.1.0"} {
		t.Run("cniVersion "+v, func(t *testing.T) {
			berthList(v, i)
			id := fmt.Sprintf("c%d", i)
			gateway := fmt.Sprintf("10.84.%d.1", i)
			out, err := ctr("run", "--rm", "--cni", "--snapshotter", "native", "--cgroup", s.cgroup+"/"+id, image, id,
				"sh", "-c", "ip -4 -o addr show eth0 && ping -c 1 -W 2 "+gateway)
			if v == "1.1.0" {
				// containerd 1.6's libcni knows results up to 1.0.0.
				if err == nil || !strings.Contains(out, `unsupported CNI result version "1.1.0"`) {
					t.Errorf("cniVersion 1.1.0: %v\n%s\nwant containerd's known refusal", err, out)
				}
				ctr("tasks", "rm", "-f", id)
				ctr("containers", "rm", id)
				return
			}
			if err != nil || !strings.Contains(out, fmt.Sprintf("10.84.%d.", i)) || !strings.Contains(out, "1 packets received") {
				t.Errorf("ctr run --cni: %v\n%s", err, out)
			}
		})
	}
	t.Run("containers connect to each other", func(t *testing.T) {
		berthList("1.0.0", 9)
		// The server runs as long as its ctr run (--rm: ctr removes the
		// container's network when the task ends); it prints its address
		// first.
		server := s.command("ctr", "--address", sock, "--namespace", "berth", "run", "--rm", "--cni", "--snapshotter", "native",
			"--cgroup", s.cgroup+"/srv", image, "srv", "sh", "-c", "ip -4 -o addr show eth0; exec httpd -f -p 80 -h /tmp")
		stdout, err := server.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		server.Stderr = server.Stdout
		if err := server.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			ctr("tasks", "kill", "-s", "KILL", "srv")
			server.Wait()
		}()
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		m := regexp.MustCompile(`inet (10\.84\.9\.\d+)/`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("the server's address: ctr run said %q", line)
		}
		var s0 fastpath.Stats
		if dp.ebpf() {
			s0 = dp.stats(t, "ctrnet")
		}
		out, err := ctr("run", "--rm", "--cni", "--snapshotter", "native", "--cgroup", s.cgroup+"/cli", image, "cli",
			"sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s 80 | head -1`, m[1]))
		if err != nil || !strings.HasPrefix(out, "HTTP/1") {
			t.Fatalf("cli to %s:80: %v\n%s", m[1], err, out)
		}
		// Read before the server goes: its DEL is the network's last and
		// removes the pins. A connection is at least 6 packets between
		// the veths, each one a local delivery.
		if dp.ebpf() {
			if s := dp.stats(t, "ctrnet"); s.Local < s0.Local+6 {
				t.Errorf("fast path counters %+v then %+v: want the connection delivered by the fast path", s0, s)
			}
		}
	})
	if after := snapshot(); after != before {
		t.Errorf("left after the containers are gone:\n%s", testenv.Diff(before, after))
	}
	if files := s.files("/run/berth", "/var/lib/cni/networks"); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
}

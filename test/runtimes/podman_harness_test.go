package runtimes

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// podman runs Debian's podman 4.3 with its CNI backend, isolated from the
// machine: its own containers.conf, storage, registries and policy (bind
// mounted on /etc/containers), a tmpfs on /run and /var/lib (libcni's
// cache, host-local's and berth's default dirs, /run/netns, runc's state)
// in a private mount namespace, and the test's node network namespace, so
// that its bridges, rules and container namespaces live and die with the
// test. Container cgroups go under a cgroup parent of the test's own.
type podman struct {
	t       *testing.T
	dir     string
	node    ns.NetNS
	holder  *exec.Cmd // keeps the mount namespace alive
	mnt     string    // /proc/<holder>/ns/mnt
	cgroup  string    // cgroup parent of the containers
	env     []string
	binDir  string
	mntIno  uint64
	cleanup []func()
}

func newPodman(t *testing.T, node ns.NetNS) *podman {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("podman is not installed (apt-get install podman)")
	}
	dir := t.TempDir()
	p := &podman{t: t, dir: dir, node: node, binDir: testenv.BinDir(t, "berth-bridge", "berth-ipam"),
		cgroup: fmt.Sprintf("/berthrt-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)}
	etc := filepath.Join(dir, "etc-containers")
	for _, d := range []string{etc, filepath.Join(dir, "net.d"), filepath.Join(dir, "tmp"), filepath.Join(dir, "storage"), filepath.Join(dir, "runroot")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"containers.conf": fmt.Sprintf(`[containers]
# The hard limits of this sandbox: podman's defaults ask for more.
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
cgroups = "no-conmon"

[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/usr/lib/cni"]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
runtime = "runc"
static_dir = %q
volume_path = %q
`, p.binDir, filepath.Join(dir, "net.d"), filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp"),
			filepath.Join(dir, "storage", "libpod"), filepath.Join(dir, "storage", "volumes")),
		"storage.conf": fmt.Sprintf("[storage]\ndriver = \"vfs\"\nrunroot = %q\ngraphroot = %q\n",
			filepath.Join(dir, "runroot"), filepath.Join(dir, "storage")),
		"registries.conf": "",
		"policy.json":     `{"default": [{"type": "insecureAcceptAnything"}]}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p.env = append(os.Environ(),
		"CONTAINERS_CONF="+filepath.Join(etc, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(etc, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(etc, "registries.conf"))

	setup := fmt.Sprintf("mount -t tmpfs berth-runtimes /run && mount -t tmpfs berth-runtimes /var/lib && "+
		"mkdir -p /var/lib/cni /var/lib/containers /run/netns && mount --bind %s /etc/containers && echo ready && exec sleep 100000", etc)
	p.holder = exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", setup)
	out, err := p.holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.holder.Stderr = os.Stderr
	if err := p.holder.Start(); err != nil {
		t.Fatalf("starting the mount namespace: %v", err)
	}
	t.Cleanup(p.close)
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("setting up the mount namespace failed (%q)", line)
	}
	p.mnt = fmt.Sprintf("/proc/%d/ns/mnt", p.holder.Process.Pid)
	var st syscall.Stat_t
	if err := syscall.Stat(p.mnt, &st); err != nil {
		t.Fatal(err)
	}
	p.mntIno = st.Ino
	return p
}

// inNS runs a command in podman's mount namespace and the node's network
// namespace (podman, or a look at its files).
func (p *podman) inNS(name string, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--mount=" + p.mnt, "--net=" + p.node.Path(), "--", name}, args...)...)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// run runs podman; run adds the container cgroup parent.
func (p *podman) run(args ...string) (string, error) {
	if len(args) > 0 && (args[0] == "run" || args[0] == "create") {
		args = append([]string{args[0], "--cgroup-parent", p.cgroup}, args[1:]...)
	}
	base := []string{"--root", filepath.Join(p.dir, "storage"), "--runroot", filepath.Join(p.dir, "runroot"), "--tmpdir", filepath.Join(p.dir, "tmp")}
	return p.inNS("podman", append(base, args...)...)
}

// must runs podman and fails the test if it fails.
func (p *podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.run(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// close removes the containers, then stops whatever is left in podman's
// mount namespace (conmon) by PID and removes the cgroups.
func (p *podman) close() {
	if p.mnt != "" {
		p.run("rm", "-af", "-t", "0")
	}
	if p.holder != nil && p.holder.Process != nil {
		for _, pid := range p.processesInMountNS() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		p.holder.Process.Kill()
		p.holder.Wait()
	}
	removeCgroup(p.cgroup)
}

// processesInMountNS lists the processes sharing the holder's mount
// namespace: only this test's podman, conmon and holder.
func (p *podman) processesInMountNS() []int {
	if p.mntIno == 0 {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == p.holder.Process.Pid {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st) == nil && st.Ino == p.mntIno {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroup kills what is left in the containers' cgroup parent and
// removes it in every hierarchy.
func removeCgroup(parent string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, root := range roots {
		top := filepath.Join(root, parent)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if procs, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(procs)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			for range 50 {
				if os.Remove(dirs[i]) == nil || os.IsNotExist(os.Remove(dirs[i])) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

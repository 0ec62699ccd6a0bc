package runtimes

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// sandbox is a private mount namespace, held open by a sleeping process,
// in which a test runs a container runtime so that it changes nothing of
// the machine: tmpfs on /run, /var/lib and /opt (libcni's cache,
// host-local's and berth's default dirs, /run/netns, runc's state,
// containerd's opt dir), an overlay on /etc whose writes stay in the
// sandbox, and the directories the test binds in (a runtime's config, its
// CNI conf and bin dirs). Every command also runs in the test's node
// network namespace, so bridges and rules live and die with the test.
type sandbox struct {
	t      *testing.T
	node   ns.NetNS
	holder *exec.Cmd
	mnt    string // /proc/<holder>/ns/mnt
	mntIno uint64
	env    []string
	cgroup string // a cgroup parent for the runtime's containers
}

// newSandbox makes the sandbox; binds maps a directory inside it to the
// test's directory mounted there.
func newSandbox(t *testing.T, node ns.NetNS, binds map[string]string) *sandbox {
	t.Helper()
	s := &sandbox{t: t, node: node, env: os.Environ(),
		cgroup: fmt.Sprintf("/berthrt-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)}
	script := []string{
		"set -e",
		"mount -t tmpfs berth-runtimes /run",
		"mount -t tmpfs berth-runtimes /var/lib",
		"mount -t tmpfs berth-runtimes /opt",
		"mkdir -p /run/netns /var/lib/cni /var/lib/containers /run/berth-etc/upper /run/berth-etc/work",
		"mount -t overlay berth-runtimes -o lowerdir=/etc,upperdir=/run/berth-etc/upper,workdir=/run/berth-etc/work /etc",
	}
	targets := make([]string, 0, len(binds))
	for target := range binds {
		targets = append(targets, target)
	}
	sort.Strings(targets)
	for _, target := range targets {
		script = append(script, fmt.Sprintf("mkdir -p %s && mount --bind %s %s", target, binds[target], target))
	}
	script = append(script, "echo ready", "exec sleep 100000")
	s.holder = exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", strings.Join(script, "\n"))
	// Best effort if the test process is killed: the holder goes, and
	// with it the sandbox once the runtime's own processes are gone.
	s.holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := s.holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.holder.Stderr = os.Stderr
	if err := s.holder.Start(); err != nil {
		t.Fatalf("starting the sandbox: %v", err)
	}
	t.Cleanup(s.close)
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("setting up the sandbox's mounts failed (%q)", line)
	}
	s.mnt = fmt.Sprintf("/proc/%d/ns/mnt", s.holder.Process.Pid)
	var st syscall.Stat_t
	if err := syscall.Stat(s.mnt, &st); err != nil {
		t.Fatal(err)
	}
	s.mntIno = st.Ino
	return s
}

// command is name with args in the sandbox and the node's namespace.
func (s *sandbox) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--mount=" + s.mnt, "--net=" + s.node.Path(), "--", name}, args...)...)
	cmd.Env = s.env
	return cmd
}

// run runs a command in the sandbox and returns its combined output.
func (s *sandbox) run(name string, args ...string) (string, error) {
	out, err := s.command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// files lists the files under dirs inside the sandbox, without the lock
// and bookkeeping files IPAM keeps on purpose.
func (s *sandbox) files(dirs ...string) []string {
	out, _ := s.run("sh", "-c", "find "+strings.Join(dirs, " ")+" -type f 2>/dev/null")
	var files []string
	for _, f := range strings.Split(out, "\n") {
		base := filepath.Base(f)
		// Locks and caches that are decided once and kept (the namespace's
		// iptables backend, internal/iptables.Open) are not leftovers.
		if f != "" && !strings.HasSuffix(f, ".lock") && base != "lock" && !strings.HasPrefix(base, "last_reserved_ip") && base != ".berth-index" &&
			base != "iptables-backend" {
			files = append(files, f)
		}
	}
	return files
}

// close stops whatever is left in the sandbox (a runtime's daemons) by
// PID, then the holder, and removes the containers' cgroups.
func (s *sandbox) close() {
	if s.holder == nil || s.holder.Process == nil {
		return
	}
	for _, pid := range s.processes() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	s.holder.Process.Kill()
	s.holder.Wait()
	removeCgroup(s.cgroup)
}

// processes lists the processes in the sandbox's mount namespace: only
// what this test started there.
func (s *sandbox) processes() []int {
	if s.mntIno == 0 {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == s.holder.Process.Pid {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st) == nil && st.Ino == s.mntIno {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroup kills what is left in a cgroup parent and removes it in
// every hierarchy.
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
				if err := os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

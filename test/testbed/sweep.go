package testbed

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/runner/cgroups"
)

// Sweep removes what test beds of processes that no longer run left
// behind: it kills the processes inside their namespaces (by PID), deletes
// the namespaces and removes their temporary directories. Test beds of
// running processes, including this one, are left alone.
func Sweep() error {
	var errs []error
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if !stale(e.Name()) {
			continue
		}
		if err := killInside(filepath.Join(netnsDir, e.Name())); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNetNS(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	// Containers the runner started live in cgroups named after the
	// test bed, and in network namespaces pinned in its directory.
	if h, err := cgroups.Detect(); err == nil {
		for _, root := range hierarchyRoots(h) {
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				if e.IsDir() && stale(e.Name()) {
					if err := removeCgroupTree(context.Background(), "/"+e.Name()); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
	}
	tmp := os.TempDir()
	entries, err = os.ReadDir(tmp)
	if err != nil {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if e.IsDir() && stale(e.Name()) {
			dir := filepath.Join(tmp, e.Name())
			if err := releaseMounts(dir); err != nil {
				errs = append(errs, err)
			}
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists the test beds whose process is gone but whose
// namespaces, cgroups or directories are still there (what Sweep would
// remove), by ID, sorted.
func Leftovers() []string {
	var ids []string
	add := func(name string) {
		if !stale(name) {
			return
		}
		// <Prefix><pid>x<random>[-...]
		id, _, _ := strings.Cut(strings.TrimPrefix(name, Prefix), "-")
		if id = Prefix + id; !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		add(e.Name())
	}
	if h, err := cgroups.Detect(); err == nil {
		for _, root := range hierarchyRoots(h) {
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				if e.IsDir() {
					add(e.Name())
				}
			}
		}
	}
	entries, _ = os.ReadDir(os.TempDir())
	for _, e := range entries {
		if e.IsDir() {
			add(e.Name())
		}
	}
	slices.Sort(ids)
	return ids
}

// hierarchyRoots are the mount points of the cgroup hierarchies the
// runner uses.
func hierarchyRoots(h *cgroups.Hierarchy) []string {
	var roots []string
	for _, mnt := range h.V1 {
		if !slices.Contains(roots, mnt) {
			roots = append(roots, mnt)
		}
	}
	if h.Unified != "" {
		roots = append(roots, h.Unified)
	}
	return roots
}

// removeCgroupTree kills every process in the cgroup at path (relative to
// each hierarchy's root, e.g. /berthtb-1x2/node1) and below, and removes
// those cgroups, deepest first. A path that does not exist is fine.
func removeCgroupTree(ctx context.Context, path string) error {
	h, err := cgroups.Detect()
	if err != nil {
		return err
	}
	var rels []string
	for _, root := range hierarchyRoots(h) {
		filepath.WalkDir(filepath.Join(root, path), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				if rel, _ := filepath.Rel(root, p); !slices.Contains(rels, "/"+rel) {
					rels = append(rels, "/"+rel)
				}
			}
			return nil
		})
	}
	// Children before their parents.
	slices.SortFunc(rels, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, rel := range rels {
		if err := h.Cgroup(rel).Destroy(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// releaseMounts kills the processes inside network namespaces pinned
// below dir (the runner pins each container's namespace in its state
// dir) and unmounts everything below dir, deepest first.
func releaseMounts(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	type mount struct{ point, fstype string }
	var mounts []mount
	for _, l := range strings.Split(string(data), "\n") {
		// 36 35 0:4 net:[4026532400] /tmp/x/netns/abc rw shared:5 - nsfs nsfs rw
		pre, post, ok := strings.Cut(l, " - ")
		preF, postF := strings.Fields(pre), strings.Fields(post)
		if !ok || len(preF) < 5 || len(postF) < 1 {
			continue
		}
		if strings.HasPrefix(preF[4], dir+"/") {
			mounts = append(mounts, mount{preF[4], postF[0]})
		}
	}
	var errs []error
	for _, m := range slices.Backward(mounts) {
		if m.fstype == "nsfs" {
			if err := killInside(m.point); err != nil {
				errs = append(errs, err)
			}
		}
		if err := unix.Unmount(m.point, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m.point, err))
		}
	}
	return errors.Join(errs...)
}

// stale reports whether name was made by a test bed whose process is gone.
// Names are Prefix + "<pid>x<random>-...".
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return false
	}
	pidStr, _, ok := strings.Cut(rest, "x")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return false
	}
	return !alive(pid)
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killInside SIGKILLs every process whose network namespace is the one
// mounted at nsPath. Only test bed processes run in test bed namespaces.
func killInside(nsPath string) error {
	ino, err := nsInode(nsPath)
	if err != nil {
		return nil // not mounted any more
	}
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		if i, err := nsInode(p); err != nil || i != ino {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
		if pid != os.Getpid() && syscall.Kill(pid, syscall.SIGKILL) == nil {
			pids = append(pids, pid)
		}
	}
	return waitFor(5*time.Second, func() error {
		for _, pid := range pids {
			if alive(pid) && !zombie(pid) {
				return fmt.Errorf("process %d in %s survived SIGKILL", pid, nsPath)
			}
		}
		return nil
	})
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

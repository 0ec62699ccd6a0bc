package testbed

import (
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
		if !Stale(e.Name()) {
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
	if roots, err := CgroupMounts(); err == nil {
		for _, root := range roots {
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				if e.IsDir() && Stale(e.Name()) {
					if err := RemoveCgroupTree("/" + e.Name()); err != nil {
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
		if e.IsDir() && Stale(e.Name()) {
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
		if !Stale(name) {
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
	if roots, err := CgroupMounts(); err == nil {
		for _, root := range roots {
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

// The runner's containers use the cgroup controllers the runner knows,
// a Kubernetes node's kubelet and containerd every one the machine
// mounts (cpuset, devices, freezer, blkio, ...): what a test bed made is
// found and removed in all of them. Everything lives under /<test bed
// ID>/.

// CgroupMounts lists the mount points of every cgroup hierarchy (v1 and
// v2).
func CgroupMounts() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []string
	for _, l := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		preF, postF := strings.Fields(pre), strings.Fields(post)
		if !ok || len(preF) < 5 || len(postF) < 1 {
			continue
		}
		if (postF[0] == "cgroup" || postF[0] == "cgroup2") && !slices.Contains(mounts, preF[4]) {
			mounts = append(mounts, preF[4])
		}
	}
	return mounts, nil
}

// RemoveCgroupTree kills every process in the cgroup at path (relative
// to each hierarchy's root, e.g. /berthtb-1x2/node1) and below, in every
// hierarchy, and removes those cgroups, deepest first. A path that does
// not exist is fine.
func RemoveCgroupTree(path string) error {
	mounts, err := CgroupMounts()
	if err != nil {
		return err
	}
	var dirs []string
	for _, m := range mounts {
		filepath.WalkDir(filepath.Join(m, path), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	// Kill everything first: a cgroup with a live process cannot go.
	deadline := time.Now().Add(10 * time.Second)
	for {
		alive := 0
		for _, d := range dirs {
			for _, pid := range cgroupProcs(d) {
				// A thread of this process that joined a container's
				// cgroup lingers there a moment after it ended.
				if pid != os.Getpid() {
					syscall.Kill(pid, syscall.SIGKILL)
					alive++
				}
			}
		}
		if alive == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var errs []error
	for _, d := range dirs {
		var err error
		for range 250 { // an exiting task leaves its cgroup a moment after SIGKILL
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w (processes %v)", d, err, cgroupProcs(d)))
		}
	}
	return errors.Join(errs...)
}

func cgroupProcs(dir string) []int {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
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

// Stale reports whether name (of a namespace, directory or cgroup) was
// made by a test bed whose process is gone. Names are Prefix +
// "<pid>x<random>-...".
func Stale(name string) bool {
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

package kubecluster

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
)

// The kubelet and containerd use every cgroup v1 controller the machine
// mounts (cpuset, devices, freezer, blkio, ... besides the memory, cpu and
// pids the runner uses), so the cluster creates, sweeps and removes its
// cgroups in all of them. Everything lives under /<test bed id>/, so that
// the test bed's own cleanup finds it too.

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 and v2).
func cgroupMounts() ([]string, error) {
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

// createCgroup makes path (e.g. /berthtb-1x2/node1/kube) in every
// hierarchy. In cpuset, a new cgroup starts with no CPUs and no memory
// nodes, which no task can join: each level copies its parent's.
func createCgroup(path string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		dir := m
		for _, elem := range strings.Split(strings.Trim(path, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, elem)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if cur, err := os.ReadFile(filepath.Join(dir, f)); err == nil && strings.TrimSpace(string(cur)) == "" {
					v, _ := os.ReadFile(filepath.Join(parent, f))
					if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
						return fmt.Errorf("setting %s of %s: %w", f, dir, err)
					}
				}
			}
		}
	}
	return nil
}

// joinCgroup moves pid into path in every hierarchy.
func joinCgroup(path string, pid int) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := os.WriteFile(filepath.Join(m, path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving %d into cgroup %s%s: %w", pid, m, path, err)
		}
	}
	return nil
}

// removeCgroupTree kills every process in path and below, in every
// hierarchy, and removes the cgroups, deepest first. A path that does not
// exist is fine.
func removeCgroupTree(path string) error {
	mounts, err := cgroupMounts()
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
				syscall.Kill(pid, syscall.SIGKILL)
				alive++
			}
		}
		if alive == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var errs []error
	for _, d := range dirs {
		var err error
		for range 50 { // an exiting task leaves its cgroup a moment after SIGKILL
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

// sweepCgroups removes the cgroups of test beds whose process is gone, in
// every hierarchy (the test bed's own sweep knows only the runner's
// controllers).
func sweepCgroups(prefix string, stale func(string) bool) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		entries, _ := os.ReadDir(m)
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) && stale(e.Name()) {
				errs = append(errs, removeCgroupTree("/"+e.Name()))
			}
		}
	}
	return errors.Join(errs...)
}

// Package cgroups puts a container's processes under resource limits,
// through cgroup v1, v2, or the hybrid layout (v1 controllers with a
// controller-less v2 hierarchy at /sys/fs/cgroup/unified) that older
// distributions mount. It knows three controllers: memory, cpu and pids.
package cgroups

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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

// Resources are the limits of one container. Zero means unlimited.
type Resources struct {
	MemoryBytes int64   `json:"memoryBytes,omitempty"`
	CPUs        float64 `json:"cpus,omitempty"`
	PidsLimit   int64   `json:"pidsLimit,omitempty"`
}

// controllers runner manages, in the order they are set up.
var controllers = []string{"memory", "cpu", "pids"}

// cfsPeriod is the CPU bandwidth period (µs) a --cpus value is scaled to,
// the kernel's and Docker's default.
const cfsPeriod = 100000

// Hierarchy is how cgroups are mounted on this machine.
type Hierarchy struct {
	// V1 maps a managed controller to the mount point of its v1 hierarchy.
	V1 map[string]string
	// Unified is the cgroup2 mount point, "" when there is none.
	Unified string
	// UnifiedControllers are the managed controllers available in the
	// cgroup2 hierarchy (all of them on a pure v2 host, none on hybrid).
	UnifiedControllers []string
}

// Detect reads /proc/self/mountinfo to find the cgroup hierarchies.
func Detect() (*Hierarchy, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("finding cgroup mounts: %w", err)
	}
	defer f.Close()
	h, err := parseMountInfo(f)
	if err != nil {
		return nil, err
	}
	if h.Unified != "" {
		data, err := os.ReadFile(filepath.Join(h.Unified, "cgroup.controllers"))
		if err != nil {
			return nil, fmt.Errorf("reading cgroup2 controllers: %w", err)
		}
		avail := strings.Fields(string(data))
		for _, c := range controllers {
			// A controller bound to a v1 hierarchy never shows up in v2,
			// so there is no ambiguity about where it lives.
			if _, inV1 := h.V1[c]; !inV1 && slices.Contains(avail, c) {
				h.UnifiedControllers = append(h.UnifiedControllers, c)
			}
		}
	}
	if len(h.V1) == 0 && h.Unified == "" {
		return nil, errors.New("no cgroup filesystem mounted (looked in /proc/self/mountinfo)")
	}
	return h, nil
}

func parseMountInfo(r io.Reader) (*Hierarchy, error) {
	h := &Hierarchy{V1: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		preF, postF := strings.Fields(pre), strings.Fields(post)
		if len(preF) < 5 || len(postF) < 3 {
			continue
		}
		mountPoint := preF[4]
		switch postF[0] {
		case "cgroup2":
			if h.Unified == "" {
				h.Unified = mountPoint
			}
		case "cgroup":
			for _, opt := range strings.Split(postF[2], ",") {
				if slices.Contains(controllers, opt) {
					if _, seen := h.V1[opt]; !seen {
						h.V1[opt] = mountPoint
					}
				}
			}
		}
	}
	return h, sc.Err()
}

// Cgroup is one container's cgroup in every hierarchy runner uses. It is
// stored in the container's state so that any later runner process can
// find, inspect and remove it.
type Cgroup struct {
	// V1 maps a controller to the cgroup's directory in its v1 hierarchy.
	V1 map[string]string `json:"v1,omitempty"`
	// Unified is the cgroup's directory in the cgroup2 hierarchy. On a
	// hybrid host it carries no controllers but still tracks the
	// processes and offers cgroup.kill.
	Unified string `json:"unified,omitempty"`
}

// Cgroup names the cgroup at path (for example /berth/<id>, relative to
// each hierarchy's root) without creating it, so that callers can record
// it before Create and clean up after a crash in between.
func (h *Hierarchy) Cgroup(path string) *Cgroup {
	cg := &Cgroup{V1: map[string]string{}}
	for _, c := range controllers {
		if mnt, ok := h.V1[c]; ok {
			cg.V1[c] = filepath.Join(mnt, path)
		}
	}
	if h.Unified != "" {
		cg.Unified = filepath.Join(h.Unified, path)
	}
	return cg
}

// Create makes the cgroup at path and applies r. On error nothing is
// left behind.
func (h *Hierarchy) Create(path string, r Resources) (cg *Cgroup, err error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == "/" {
		return nil, fmt.Errorf("cgroup path %q must be absolute, clean and not the root", path)
	}
	cg = h.Cgroup(path)
	defer func() {
		if err != nil {
			cg.remove(context.Background())
		}
	}()
	if h.Unified != "" {
		if err := h.enableUnified(filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	for _, dir := range cg.dirs() {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
	}
	for _, s := range settings(r, h.UnifiedControllers) {
		dir := cg.V1[s.controller]
		if s.v2 {
			dir = cg.Unified
		}
		if dir == "" {
			return nil, fmt.Errorf("cannot limit %s: no %s cgroup controller is mounted", s.controller, s.controller)
		}
		if err := writeFile(filepath.Join(dir, s.file), s.value); err != nil {
			if s.optional && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("setting %s limit: %w", s.controller, err)
		}
	}
	return cg, nil
}

// enableUnified delegates the managed v2 controllers from the hierarchy
// root down to parent, so that parent's children can be limited.
func (h *Hierarchy) enableUnified(parent string) error {
	if len(h.UnifiedControllers) == 0 {
		return nil
	}
	var enable []string
	for _, c := range h.UnifiedControllers {
		enable = append(enable, "+"+c)
	}
	var elems []string
	if rel := strings.Trim(parent, "/"); rel != "" {
		elems = strings.Split(rel, "/")
	}
	dir := h.Unified
	for i := 0; ; i++ {
		if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(enable, " ")); err != nil {
			return fmt.Errorf("delegating cgroup controllers %v in %s: %w", h.UnifiedControllers, dir, err)
		}
		if i == len(elems) {
			break
		}
		dir = filepath.Join(dir, elems[i])
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// setting is one control file write.
type setting struct {
	controller string
	v2         bool
	file       string
	value      string
	optional   bool // skipped when the kernel lacks the file (no swap accounting)
}

// settings maps r to control file writes; unified lists the controllers
// that live in the v2 hierarchy.
func settings(r Resources, unified []string) []setting {
	var out []setting
	if r.MemoryBytes > 0 {
		v := strconv.FormatInt(r.MemoryBytes, 10)
		if slices.Contains(unified, "memory") {
			out = append(out,
				setting{controller: "memory", v2: true, file: "memory.max", value: v},
				setting{controller: "memory", v2: true, file: "memory.swap.max", value: "0", optional: true})
		} else {
			// memsw (memory+swap) may only be raised above the memory
			// limit, so it is written second; equal values mean no swap.
			out = append(out,
				setting{controller: "memory", file: "memory.limit_in_bytes", value: v},
				setting{controller: "memory", file: "memory.memsw.limit_in_bytes", value: v, optional: true})
		}
	}
	if r.CPUs > 0 {
		quota := strconv.FormatInt(int64(r.CPUs*cfsPeriod+0.5), 10)
		if slices.Contains(unified, "cpu") {
			out = append(out, setting{controller: "cpu", v2: true, file: "cpu.max", value: quota + " " + strconv.Itoa(cfsPeriod)})
		} else {
			out = append(out,
				setting{controller: "cpu", file: "cpu.cfs_period_us", value: strconv.Itoa(cfsPeriod)},
				setting{controller: "cpu", file: "cpu.cfs_quota_us", value: quota})
		}
	}
	if r.PidsLimit > 0 {
		out = append(out, setting{controller: "pids", v2: slices.Contains(unified, "pids"), file: "pids.max", value: strconv.FormatInt(r.PidsLimit, 10)})
	}
	return out
}

// SetPidsLimit changes the pids limit of a created cgroup.
func (cg *Cgroup) SetPidsLimit(n int64) error {
	dir := cg.V1["pids"]
	if dir == "" {
		dir = cg.Unified
	}
	if err := writeFile(filepath.Join(dir, "pids.max"), strconv.FormatInt(n, 10)); err != nil {
		return fmt.Errorf("setting pids limit: %w", err)
	}
	return nil
}

// JoinThread moves the calling OS thread into the cgroup's v1 hierarchies.
// A child forked from that thread starts inside them, so no process of
// the container ever runs outside its limits. The caller must have locked
// the goroutine to its thread and must let the thread die afterwards, and
// the program's main goroutine must be locked to the main thread (see
// runner's init), which Go never ends (cgroup v2 cannot place single
// threads: use OpenUnified with CLONE_INTO_CGROUP for it instead).
func (cg *Cgroup) JoinThread() error {
	tid := strconv.Itoa(unix.Gettid())
	for _, c := range controllers {
		if dir, ok := cg.V1[c]; ok {
			if err := writeFile(filepath.Join(dir, "tasks"), tid); err != nil {
				return fmt.Errorf("joining cgroup %s: %w", dir, err)
			}
		}
	}
	return nil
}

// OpenUnified opens the cgroup's v2 directory for CLONE_INTO_CGROUP
// (syscall.SysProcAttr.CgroupFD). It returns nil when there is none.
func (cg *Cgroup) OpenUnified() (*os.File, error) {
	if cg.Unified == "" {
		return nil, nil
	}
	f, err := os.OpenFile(cg.Unified, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup %s: %w", cg.Unified, err)
	}
	return f, nil
}

// OOMKilled reports whether the kernel OOM-killed a process of the cgroup.
func (cg *Cgroup) OOMKilled() (bool, error) {
	file := filepath.Join(cg.V1["memory"], "memory.oom_control")
	if cg.V1["memory"] == "" {
		file = filepath.Join(cg.Unified, "memory.events")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return false, fmt.Errorf("reading OOM events: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.Atoi(f[1])
			return n > 0, nil
		}
	}
	return false, nil
}

// Procs lists the processes in the cgroup.
func (cg *Cgroup) Procs() ([]int, error) {
	seen := map[int]bool{}
	var pids []int
	for _, dir := range cg.dirs() {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing processes of cgroup %s: %w", dir, err)
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// Destroy kills whatever still runs in the cgroup and removes it. It is
// idempotent: a cgroup already gone is not an error.
func (cg *Cgroup) Destroy(ctx context.Context) error {
	if err := cg.kill(ctx); err != nil {
		return err
	}
	return cg.remove(ctx)
}

func (cg *Cgroup) kill(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := cg.Procs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if cg.Unified != "" {
			// cgroup.kill (Linux 5.14) kills atomically, racing no fork;
			// it reaches only what is in the v2 cgroup, hence the loop.
			_ = writeFile(filepath.Join(cg.Unified, "cgroup.kill"), "1")
		}
		for _, pid := range pids {
			// A thread of this very process lingers in a v1 cgroup for
			// a moment after JoinThread's goroutine ended: wait for it.
			if pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of the container survive SIGKILL", pids)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("killing processes %v of the container: %w", pids, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (cg *Cgroup) remove(ctx context.Context) error {
	var errs []error
	for _, dir := range cg.dirs() {
		for try := 0; ; try++ {
			err := unix.Rmdir(dir)
			// EBUSY: a killed task lingers in the cgroup for a moment
			// after it stopped running.
			if err == unix.EBUSY && try < 250 && ctx.Err() == nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if err != nil && err != unix.ENOENT {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
			}
			break
		}
	}
	return errors.Join(errs...)
}

func (cg *Cgroup) dirs() []string {
	var dirs []string
	for _, c := range controllers {
		if dir, ok := cg.V1[c]; ok {
			dirs = append(dirs, dir)
		}
	}
	if cg.Unified != "" {
		dirs = append(dirs, cg.Unified)
	}
	return dirs
}

func writeFile(path, value string) error {
	// Control files exist already; O_CREATE would hide a wrong path.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, path, err)
	}
	return nil
}

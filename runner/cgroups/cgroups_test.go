package cgroups

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/testenv"
)

func TestParseMountInfo(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo string
		want            Hierarchy
	}{
		{
			name: "hybrid: v1 controllers, controller-less unified",
			mountinfo: `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`,
			want: Hierarchy{
				V1:      map[string]string{"cpu": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"},
				Unified: "/sys/fs/cgroup/unified",
			},
		},
		{
			name:      "pure v2",
			mountinfo: `30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot`,
			want:      Hierarchy{V1: map[string]string{}, Unified: "/sys/fs/cgroup"},
		},
		{
			name:      "none",
			mountinfo: `22 27 0:21 / /proc rw,relatime - proc proc rw`,
			want:      Hierarchy{V1: map[string]string{}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseMountInfo(strings.NewReader(tc.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*h, tc.want) {
				t.Errorf("got %+v, want %+v", *h, tc.want)
			}
		})
	}
}

func TestSettings(t *testing.T) {
	all := []string{"memory", "cpu", "pids"}
	for _, tc := range []struct {
		name    string
		r       Resources
		unified []string
		want    []string // controller:file=value, v2 marked with "2:"
	}{
		{"unlimited", Resources{}, nil, nil},
		{"v1", Resources{MemoryBytes: 64 << 20, CPUs: 1.5, PidsLimit: 10}, nil, []string{
			"memory:memory.limit_in_bytes=67108864", "memory:memory.memsw.limit_in_bytes=67108864",
			"cpu:cpu.cfs_period_us=100000", "cpu:cpu.cfs_quota_us=150000", "pids:pids.max=10"}},
		{"v2", Resources{MemoryBytes: 64 << 20, CPUs: 0.25, PidsLimit: 10}, all, []string{
			"2:memory:memory.max=67108864", "2:memory:memory.swap.max=0",
			"2:cpu:cpu.max=25000 100000", "2:pids:pids.max=10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, s := range settings(tc.r, tc.unified) {
				v := s.controller + ":" + s.file + "=" + s.value
				if s.v2 {
					v = "2:" + v
				}
				got = append(got, v)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// On this machine's real cgroups: create with limits, place a thread,
// see it counted, destroy.
func TestCreateJoinDestroy(t *testing.T) {
	testenv.RequireRoot(t)
	h, err := Detect()
	if err != nil {
		t.Skip(err)
	}
	parent := "/berth-unit-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() {
		for _, dir := range h.Cgroup(parent).dirs() {
			unix.Rmdir(dir)
		}
	})
	cg, err := h.Create(parent+"/c1", Resources{MemoryBytes: 64 << 20, PidsLimit: 50, CPUs: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if dir := cg.V1["memory"]; dir != "" {
		data, _ := os.ReadFile(filepath.Join(dir, "memory.limit_in_bytes"))
		if strings.TrimSpace(string(data)) != "67108864" {
			t.Errorf("memory.limit_in_bytes = %q", data)
		}
	}
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies in the cgroup
		if err := cg.JoinThread(); err != nil {
			done <- err
			return
		}
		data, _ := os.ReadFile("/proc/thread-self/cgroup")
		if len(cg.V1) > 0 && !strings.Contains(string(data), parent+"/c1") {
			done <- &os.PathError{Op: "join", Path: string(data), Err: os.ErrInvalid}
			return
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if oom, err := cg.OOMKilled(); err != nil || oom {
		t.Errorf("OOMKilled = %v, %v", oom, err)
	}
	if err := cg.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, dir := range cg.dirs() {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s still exists (%v)", dir, err)
		}
	}
	// Idempotent.
	if err := cg.Destroy(context.Background()); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if _, err := h.Create("relative", Resources{}); err == nil {
		t.Error("Create accepted a relative path")
	}
}

func init() {
	// As in the runner: keep the main thread, which Go never lets exit,
	// out of reach of the goroutines that move their thread into a cgroup.
	runtime.LockOSThread()
}

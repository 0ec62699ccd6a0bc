package testenv

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFS mounts a private BPF filesystem for t (a node's pins of the eBPF
// datapath) and unmounts it when t ends. Each mount is a separate
// instance: nodes and tests never see each other's pins, and the
// machine's /sys/fs/bpf is not touched.
func BPFFS(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting a BPF filesystem on %s: %v", dir, err)
	}
	// Registered after TempDir's cleanup, so it runs first.
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// Datapath is the datapath the plugin and end-to-end tests run against:
// "ebpf" when $BERTH_TEST_DATAPATH says so (make test runs the suites
// twice), else "iptables", the default.
func Datapath() string {
	if os.Getenv("BERTH_TEST_DATAPATH") == "ebpf" {
		return "ebpf"
	}
	return "iptables"
}

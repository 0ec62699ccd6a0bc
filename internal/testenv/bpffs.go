package testenv

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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

// TCXIngress calls f for each program on the TCX ingress of interface
// ifindex, in the calling thread's network namespace (call it in the namespace).
func TCXIngress(ifindex int, f func(id ebpf.ProgramID, p *ebpf.Program) error) error {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return err
	}
	for _, ap := range res.Programs {
		p, err := ebpf.NewProgramFromID(ap.ID)
		if err != nil {
			return err
		}
		err = f(ap.ID, p)
		p.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// TCXIngressNames names the programs on the TCX ingress of interface
// ifindex as bpftool net shows them, "from_uplink (id 42)", in the
// calling thread's network namespace.
func TCXIngressNames(ifindex int) ([]string, error) {
	var names []string
	err := TCXIngress(ifindex, func(id ebpf.ProgramID, p *ebpf.Program) error {
		info, err := p.Info()
		if err != nil {
			return err
		}
		names = append(names, fmt.Sprintf("%s (id %d)", strings.TrimSpace(info.Name), id))
		return nil
	})
	return names, err
}

package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BPFFSDir is where the node's private BPF filesystem is mounted (see
// MountBPFFS): the pins of its eBPF datapath.
func (n *Node) BPFFSDir() string { return filepath.Join(n.Dir, "bpf") }

// MountBPFFS mounts a BPF filesystem of the node's own at BPFFSDir, once.
// Each mount is a separate instance, so the nodes of a test bed (one
// kernel) never share pins; Close unmounts it with everything else below
// the test bed's directory.
func (n *Node) MountBPFFS() (string, error) {
	dir := n.BPFFSDir()
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return "", fmt.Errorf("testbed: mounting a BPF filesystem for %s: %w", n.Host, err)
	}
	return dir, nil
}

// TCXIngress calls f for each program on the TCX ingress of interface
// ifindex, in the calling thread's network namespace (call it in Do).
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

package testbed

import (
	"fmt"
	"os"
	"path/filepath"

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

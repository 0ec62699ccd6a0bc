// Package testenv holds what berth's tests share: root checks, network
// namespaces that clean themselves up, and where the built binaries are.
// Every test that touches the network works inside namespaces made here (or
// by the test bed), never in the machine's own namespace.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/berthnet/berth/internal/netnsdir"
)

// RequireRoot skips t unless it runs as root: namespaces, links and
// iptables need it. CI runs as root, so there these tests always run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, links, iptables)")
	}
}

// NewNS creates a fresh network namespace that is closed and unmounted when
// t ends, pass or fail.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	// The plugins' node-wide directory of this namespace (locks, host
	// port claims) goes with it.
	dir := NetnsDir(t, n)
	t.Cleanup(func() {
		n.Close()
		testutils.UnmountNS(n)
		os.RemoveAll(dir)
	})
	return n
}

// NetnsDir is the directory berth plugins executed in n share (see
// internal/netnsdir): its locks and host port claims. It may not exist.
func NetnsDir(t testing.TB, n ns.NetNS) string {
	t.Helper()
	var id string
	err := n.Do(func(ns.NetNS) error {
		var err error
		id, err = netnsdir.ID()
		return err
	})
	if err != nil {
		t.Fatalf("identifying network namespace: %v", err)
	}
	return filepath.Join(netnsdir.Root, id)
}

// RepoRoot is the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	return repoRoot()
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// FindBinDir is BinDir for programs that are not tests (the demo):
// $BERTH_BIN_DIR when set, else <repo>/bin. It does not check the
// directory's contents.
func FindBinDir() string {
	if dir := os.Getenv("BERTH_BIN_DIR"); dir != "" {
		return dir
	}
	return filepath.Join(repoRoot(), "bin")
}

// BinDir is where `make build` put berth's binaries: $BERTH_BIN_DIR when
// set (the Makefile sets it), else <repo>/bin. It fails t when name is
// given and that binary is missing, so a forgotten build is obvious.
func BinDir(t testing.TB, names ...string) string {
	t.Helper()
	dir := FindBinDir()
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("binary %s not found in %s: run `make build` first (%v)", name, dir, err)
		}
	}
	return dir
}

// ReferenceCNIDir is where Debian's containernetworking-plugins installs
// the reference plugins. Tests that compare against them skip when the
// package is missing outside CI.
func ReferenceCNIDir(t testing.TB, names ...string) string {
	t.Helper()
	const dir = "/usr/lib/cni"
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Skipf("reference plugin %s not installed (apt-get install containernetworking-plugins)", name)
		}
	}
	return dir
}

// InNS runs cmd inside netns n and returns its combined output.
func InNS(n ns.NetNS, name string, args ...string) ([]byte, error) {
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	return out, err
}

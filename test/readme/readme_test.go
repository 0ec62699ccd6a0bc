package readme

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/runner/cgroups"
	"github.com/berthnet/berth/test/testbed"
)

// TestREADME runs every command block of README.md marked runnable (see
// package readme for the marker), as written, on a fresh machine: the
// set-up blocks first (`make deps`, `make install`), then the block, with
// `bash -e`, so a command that fails fails the test.
//
// The "machine" is a test bed node: its network namespace, and a private
// mount namespace in which the paths berth uses by default start as on a
// fresh machine (/etc/cni, /opt, /run and /tmp empty; /var/lib and
// /usr/local/bin private copies) and the node's cgroup is the root of every
// hierarchy. So the commands run with berth's default paths, and
// everything they make (links, rules, namespaces, files, processes,
// cgroups) stays inside the test bed and goes with it.
func TestREADME(t *testing.T) {
	testenv.RequireRoot(t)
	repo := testenv.RepoRoot(t)
	data, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := Parse(string(data))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	var setup []Block
	var runnable []Block
	for _, b := range blocks {
		if b.Setup {
			setup = append(setup, b)
		} else {
			runnable = append(runnable, b)
		}
	}
	if len(setup) == 0 || len(runnable) == 0 {
		t.Fatalf("README.md has %d set-up and %d runnable blocks; the markers are gone?", len(setup), len(runnable))
	}
	requirePackages(t, repo)
	for _, b := range runnable {
		t.Run(b.Name(), func(t *testing.T) {
			out, err := runOnFreshMachine(t, repo, setup, b)
			if err != nil || testing.Verbose() {
				t.Logf("output (bash -x):\n%s", out)
			}
			if err != nil {
				t.Fatalf("README block at line %d failed: %v\n%s", b.Line, err, b.Script)
			}
		})
	}
}

// blockTimeout bounds one block with its set-up.
const blockTimeout = 5 * time.Minute

func runOnFreshMachine(t *testing.T, repo string, setup []Block, b Block) (string, error) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 1})
	machine := tb.Node(1)
	h, err := cgroups.Detect()
	if err != nil {
		t.Fatal(err)
	}
	// Inside the test bed's cgroup tree, which Close empties and removes.
	cg := "/" + tb.ID + "/machine"
	var hierarchies []string
	for _, mnt := range append(slices.Collect(maps.Values(h.V1)), h.Unified) {
		if mnt == "" || slices.Contains(hierarchies, mnt) {
			continue
		}
		if err := os.MkdirAll(mnt+cg, 0o755); err != nil {
			t.Fatal(err)
		}
		hierarchies = append(hierarchies, mnt)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}

	var script strings.Builder
	fmt.Fprintf(&script, `set -e
# The checkout, held open: the mounts below hide it when it lies under one
# of them (a clone in /tmp); it is bound back at its path after them.
exec 9<%[4]s
# The machine's own paths, fresh and private to this test.
# (/run is a tmpfs as on any booted machine: the runner's overlay layers
# live there, and overlayfs takes no upper layer on another overlayfs.)
for d in /etc/cni /opt /run; do mount -t tmpfs -o mode=755 tmpfs $d; done
for d in /var/lib /usr/local/bin; do
	mkdir -p %[1]s/overlay$d/upper %[1]s/overlay$d/work
	mount -t overlay overlay -o lowerdir=$d,upperdir=%[1]s/overlay$d/upper,workdir=%[1]s/overlay$d/work $d
done
# This shell and all it starts live in the test bed's cgroup, which is the
# root of each hierarchy here (runner's /berth/<id> lands below it).
for h in %[2]s; do
	echo $$ >"$h%[3]s/cgroup.procs"
	mount --bind "$h%[3]s" "$h"
done
mount -t tmpfs tmpfs /tmp
mkdir -p %[4]s && mount --no-canonicalize --bind /proc/self/fd/9 %[4]s && exec 9<&-
cd %[4]s
set -x
`, tb.Dir, strings.Join(hierarchies, " "), cg, repo)
	for _, s := range setup {
		fmt.Fprintf(&script, "# README line %d (set-up)\n%s", s.Line, s.Script)
	}
	fmt.Fprintf(&script, "# README line %d\n%s", b.Line, b.Script)
	path := filepath.Join(tb.Dir, "readme-block.sh")
	if err := os.WriteFile(path, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+machine.Path(), "--",
		"unshare", "--mount", "--propagation", "private", "--", "bash", "-e", path)
	cmd.Env = append(cleanEnv(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:"+filepath.Dir(goBin))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	// Whatever the block left running (netd started with &, containers)
	// goes with the test bed now, before its directory is removed.
	if cerr := tb.Close(); cerr != nil {
		t.Errorf("removing the test bed: %v", cerr)
	}
	return out.String(), err
}

// cleanEnv is the test's environment without the variables that point
// berth's tools at the build tree: the README's commands must work with
// what `make install` put in place.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		// MAKEFLAGS & co. of an outer `make test` would hand `make
		// install` a jobserver it cannot reach.
		if strings.HasPrefix(name, "BERTH_") || name == "PATH" || slices.Contains([]string{"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}, name) {
			continue
		}
		env = append(env, e)
	}
	return env
}

// requirePackages skips the test unless every package of .ci/deps is
// installed: the set-up's `make deps` is then a no-op. Installing from
// inside the test's private /var/lib would write files to the machine and
// forget them in dpkg's database.
func requirePackages(t *testing.T, repo string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, ".ci", "deps"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^packages=\(([^)]*)\)`).FindSubmatch(data)
	if m == nil {
		t.Fatal(".ci/deps has no packages=(...) line")
	}
	for _, p := range strings.Fields(string(m[1])) {
		out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || !strings.Contains(string(out), "install ok installed") {
			t.Skipf("Debian package %s is not installed: run make deps first", p)
		}
	}
}

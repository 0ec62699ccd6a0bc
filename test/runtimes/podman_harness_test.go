package runtimes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/testenv"
)

// podman runs Debian's podman 4.3 with its CNI backend in a sandbox: its
// own containers.conf, storage, registries and policy on /etc/containers,
// its storage and network configs in the test's directory, its
// containers' cgroups under the sandbox's cgroup parent.
type podman struct {
	*sandbox
	dir string
	dp  datapath // of the networks berthList writes
}

func newPodman(t *testing.T, node ns.NetNS, dp datapath) *podman {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("podman is not installed (apt-get install podman)")
	}
	dir := t.TempDir()
	bin := testenv.BinDir(t, "berth-bridge", "berth-ipam")
	etc := filepath.Join(dir, "etc-containers")
	for _, d := range []string{etc, filepath.Join(dir, "net.d"), filepath.Join(dir, "tmp"), filepath.Join(dir, "storage"), filepath.Join(dir, "runroot")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"containers.conf": fmt.Sprintf(`[containers]
# The hard limits of this sandbox: podman's defaults ask for more.
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
cgroups = "no-conmon"

[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/usr/lib/cni"]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
runtime = "runc"
static_dir = %q
volume_path = %q
`, bin, filepath.Join(dir, "net.d"), filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp"),
			filepath.Join(dir, "storage", "libpod"), filepath.Join(dir, "storage", "volumes")),
		"storage.conf": fmt.Sprintf("[storage]\ndriver = \"vfs\"\nrunroot = %q\ngraphroot = %q\n",
			filepath.Join(dir, "runroot"), filepath.Join(dir, "storage")),
		"registries.conf": "",
		"policy.json":     `{"default": [{"type": "insecureAcceptAnything"}]}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := newSandbox(t, node, map[string]string{"/etc/containers": etc})
	s.env = append(s.env,
		"CONTAINERS_CONF=/etc/containers/containers.conf",
		"CONTAINERS_STORAGE_CONF=/etc/containers/storage.conf",
		"CONTAINERS_REGISTRIES_CONF=/etc/containers/registries.conf")
	p := &podman{sandbox: s, dir: dir, dp: dp}
	t.Cleanup(func() { p.podman("rm", "-af", "-t", "0") }) // before the sandbox goes (cleanups run last first)
	return p
}

// podman runs podman; run and create get the sandbox's cgroup parent.
func (p *podman) podman(args ...string) (string, error) {
	if len(args) > 0 && (args[0] == "run" || args[0] == "create") {
		args = append([]string{args[0], "--cgroup-parent", p.cgroup}, args[1:]...)
	}
	base := []string{"--root", filepath.Join(p.dir, "storage"), "--runroot", filepath.Join(p.dir, "runroot"), "--tmpdir", filepath.Join(p.dir, "tmp")}
	return p.run("podman", append(base, args...)...)
}

// busybox loads the busybox image into p's storage and returns its name.
func (p *podman) busybox() string {
	p.t.Helper()
	loaded := p.must("load", "-i", busyboxImage(p.t, p.t.TempDir()))
	m := regexp.MustCompile(`Loaded image\(?s?\)?: (\S+)`).FindStringSubmatch(loaded)
	if m == nil {
		p.t.Fatalf("podman load said %q", loaded)
	}
	const image = "localhost/berth-busybox:test"
	p.must("tag", m[1], image)
	return image
}

// must runs podman and fails the test if it fails.
func (p *podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.podman(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

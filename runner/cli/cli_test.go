package cli

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/version"
)

// capture runs Main and returns its exit status and what it printed.
func capture(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = outW, errW
	code := Main(args)
	os.Stdout, os.Stderr = stdout, stderr
	outW.Close()
	errW.Close()
	out, _ := io.ReadAll(outR)
	errOut, _ := io.ReadAll(errR)
	return code, string(out), string(errOut)
}

func TestHelpOnEveryCommand(t *testing.T) {
	code, out, _ := capture(t, "--help")
	if code != 0 || !strings.Contains(out, "Commands:") {
		t.Fatalf("runner --help: exit %d\n%s", code, out)
	}
	for _, c := range commands() {
		if !strings.Contains(out, "  "+c.name+" ") {
			t.Errorf("runner --help does not list %s", c.name)
		}
		code, out, _ := capture(t, c.name, "--help")
		if code != 0 || !strings.Contains(out, "Usage: runner "+c.name) || !strings.Contains(out, "Example:") || !strings.Contains(out, "--state-dir") {
			t.Errorf("runner %s --help: exit %d\n%s", c.name, code, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"frobnicate"},
		{"run", "--no-such-flag"},
		{"ps", "--memory", "1g"},
	} {
		if code, _, errOut := capture(t, args...); code != 125 || errOut == "" {
			t.Errorf("runner %v: exit %d, stderr %q; want 125 and a message", args, code, errOut)
		}
	}
}

// Global flags given before the command name reach the command, as do
// the ones after it: a bad value is refused by the command's own check
// (not as an unknown flag), and a good one is used.
func TestGlobalFlagsBeforeCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state-dir", "relative/dir", "ps"}, `--state-dir "relative/dir" must be an absolute path`},
		{[]string{"--cgroup-parent", "/", "ps"}, `--cgroup-parent "/" must be an absolute cgroup path below the root`},
		{[]string{"ps", "--cgroup-parent", "/"}, `--cgroup-parent "/" must be an absolute cgroup path below the root`},
		{[]string{"--cni-bin-dir", "", "ps"}, "--cni-bin-dir is empty"},
	} {
		code, _, errOut := capture(t, tc.args...)
		if code != 125 || !strings.Contains(errOut, tc.want) {
			t.Errorf("runner %q: exit %d, stderr %q; want 125 and %q", tc.args, code, errOut, tc.want)
		}
	}

	// Good values, before and after the command: networks lists the
	// conflists of the --cni-conf-dir it was given.
	confDir := t.TempDir()
	conflist := `{"cniVersion":"1.0.0","name":"probe-net","plugins":[{"type":"bridge"}]}`
	if err := os.WriteFile(filepath.Join(confDir, "10-probe.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--state-dir", t.TempDir(), "--cni-conf-dir", confDir, "networks"},
		{"networks", "--state-dir", t.TempDir(), "--cni-conf-dir", confDir},
	} {
		code, out, errOut := capture(t, args...)
		if code != 0 || !strings.Contains(out, "probe-net") {
			t.Errorf("runner %q: exit %d, stdout %q, stderr %q; want probe-net listed", args, code, out, errOut)
		}
	}
}

// `runner version` and `runner --version` print the stamped version and
// need no state: they work for any user, on any machine.
func TestVersion(t *testing.T) {
	old := version.Version
	defer func() { version.Version = old }()
	version.Version = "v9.8.7-test"
	for _, args := range [][]string{{"version"}, {"--version"}, {"--state-dir", "relative", "version"}} {
		code, out, errOut := capture(t, args...)
		if code != 0 || !strings.HasPrefix(out, "runner v9.8.7-test (go") {
			t.Errorf("runner %v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	if _, out, _ := capture(t, "--help"); !strings.Contains(out, "  version ") {
		t.Errorf("runner --help does not list version:\n%s", out)
	}
}

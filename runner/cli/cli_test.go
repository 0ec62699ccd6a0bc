package cli

import (
	"io"
	"os"
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

// Global flags given before the command name reach the command.
func TestGlobalFlagsBeforeCommand(t *testing.T) {
	code, _, errOut := capture(t, "--state-dir", "relative/dir", "ps")
	if code != 125 || !strings.Contains(errOut, `--state-dir "relative/dir" must be an absolute path`) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = capture(t, "ps", "--cgroup-parent", "/")
	if code != 125 || !strings.Contains(errOut, "--cgroup-parent") {
		t.Errorf("exit %d, stderr %q", code, errOut)
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

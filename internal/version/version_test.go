package version

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	old := Version
	defer func() { Version = old }()
	Version = "v1.2.3-4-gabcdef"
	if got := Line("runner"); !strings.HasPrefix(got, "runner v1.2.3-4-gabcdef (go") {
		t.Errorf("Line with a stamped version: %q", got)
	}
	Version = ""
	if got := String(); got == "" {
		t.Errorf("unstamped String is empty")
	}
}

package testenv

import (
	"strings"
	"testing"
)

// Commands run through InNS must see the namespace, not the machine's:
// a fresh namespace has only lo.
func TestInNSRunsInsideNamespace(t *testing.T) {
	n := NewNS(t)
	out, err := InNS(n, "ip", "-o", "link")
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, out)
	}
	if lines := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; lines != 1 || !strings.Contains(string(out), "lo:") {
		t.Fatalf("expected only lo in a fresh namespace, got:\n%s", out)
	}
}

package runner_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Host ports are reserved per host address, as berth's port claims and
// Docker do: on a dual-stack network 0.0.0.0:8090 and [::]:8090 are two
// containers' ports, each answering in its family, while mappings that
// take the same connections are refused. The runner refused [::]:8090
// next to 0.0.0.0:8090 ("published by container v4").
func TestPortReservationsPerHostAddress(t *testing.T) {
	n := newNode(t, berthDualStack)
	n.ok("run", "--rm", "--net", n.network, "-p", "8079:80", "--", "true")
	before := n.snapshot()
	serve := func(page string) []string {
		return []string{"--", "sh", "-c", "mkdir /www && echo " + page + " > /www/index.html && exec httpd -f -p 80 -h /www"}
	}
	n.ok(append([]string{"run", "-d", "--name", "v4", "--net", n.network, "-p", "0.0.0.0:8090:80"}, serve("four")...)...)
	n.ok(append([]string{"run", "-d", "--name", "v6", "--net", n.network, "-p", "[::]:8090:80"}, serve("six")...)...)
	for url, want := range map[string]string{"http://10.99.0.1:8090/": "four\n", "http://[fd00:99::1]:8090/": "six\n"} {
		if got := n.waitHTTP(url); got != want {
			t.Errorf("GET %s: %q, want %q", url, got, want)
		}
	}
	for _, tc := range []struct{ name, publish, holder string }{
		{"every address of both families", "8090:80", "v4"},
		{"the same family's wildcard", "0.0.0.0:8090:80", "v4"},
		{"an IPv6 address under [::]", "[fd00:99::1]:8090:80", "v6"},
	} {
		res := n.runner("run", "-d", "--name", "x", "--net", n.network, "-p", tc.publish, "--", "sleep", "100")
		if res.code == 0 || !strings.Contains(res.stderr, "published by container "+tc.holder) {
			t.Errorf("-p %s (%s) next to v4 and v6: exit %d, %q; want it refused naming %s", tc.publish, tc.name, res.code, res.stderr, tc.holder)
			n.runner("rm", "-f", "x")
		}
	}
	// A reservation an older runner made (ports/tcp-8095) is of every
	// address while its container lives.
	legacy := filepath.Join(n.stateDir, "ports", "tcp-8095")
	if err := os.WriteFile(legacy, []byte(n.inspect("v4").ID), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := n.runner("run", "-d", "--name", "x", "--net", n.network, "-p", "[::]:8095:80", "--", "sleep", "100"); res.code == 0 || !strings.Contains(res.stderr, "published by container v4") {
		t.Errorf("-p [::]:8095:80 next to an older runner's reservation of 8095: exit %d, %q; want it refused naming v4", res.code, res.stderr)
		n.runner("rm", "-f", "x")
	}
	os.Remove(legacy)
	n.ok("rm", "-f", "v4", "v6")
	n.expectClean(before)
}

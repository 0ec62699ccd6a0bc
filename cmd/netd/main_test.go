package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/version"
)

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"status", "--help"}, {"leave", "-h"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, errOut.String())
		}
		help := out.String()
		for _, want := range []string{"netd leave", "Examples:", "-etcd-endpoints", "-network-cidr", "-mode", "-metrics-address", "e.g."} {
			if !strings.Contains(help, want) {
				t.Errorf("%q: help lacks %q", args, want)
			}
		}
	}
}

func TestBadUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"start"}, `unknown command "start"`},
		{[]string{"--mode", "ipip"}, `mode: "ipip": use vxlan, hostgw or bgp`},
		{[]string{"run", "extra"}, "unexpected arguments"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want exit 2 and %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}

// netd version, --version and -version print the stamped version.
func TestVersion(t *testing.T) {
	old := version.Version
	defer func() { version.Version = old }()
	version.Version = "v9.8.7-test"
	for _, args := range [][]string{{"version"}, {"--version"}, {"run", "-version"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "netd v9.8.7-test (go") {
			t.Errorf("%q: exit %d, %q %q; want netd v9.8.7-test (go...)", args, code, out.String(), errOut.String())
		}
	}
}

// Back-quotes in a flag's usage become its argument name in --help.
func TestHelpNamesArguments(t *testing.T) {
	var out, errOut bytes.Buffer
	run([]string{"--help"}, &out, &errOut)
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "  -") && strings.Count(line, " ") > 3 {
			t.Errorf("odd flag line (a back-quote in its usage?): %q", line)
		}
	}
}

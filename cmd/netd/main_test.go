package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/version"
)

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"run", "--help"}, {"-h"}} {
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

// A subcommand's --help says what it does and lists its own flags, not
// the daemon's others.
func TestSubcommandHelp(t *testing.T) {
	for _, tc := range []struct {
		args          []string
		text          []string // in the help
		flags, unused []string // listed, not listed
	}{
		{[]string{"status", "--help"},
			[]string{"netd status: print this node's lease", "Usage:\n  netd status [flags]", "Example:\n  netd status --metrics-address="},
			[]string{"metrics-address", "json", "config"},
			[]string{"mode", "etcd-endpoints", "node-name", "log-level", "version", "rotate"}},
		{[]string{"join", "--help"},
			[]string{"netd join: get this node's etcd certificates", "netd join TOKEN [flags]", "Example:"},
			[]string{"node-name", "pki-dir", "root-dir"},
			[]string{"etcd-endpoints", "mode", "metrics-address", "json"}},
		{[]string{"join", "TOKEN", "-h"}, []string{"netd join: "}, []string{"pki-dir"}, []string{"mode"}},
		{[]string{"token", "--help"},
			[]string{"netd token: print the join token", "netd token [--rotate] [flags]", "Example:"},
			[]string{"rotate", "root-dir", "pki-dir"},
			[]string{"etcd-endpoints", "node-name", "mode", "json"}},
		{[]string{"leave", "-h"},
			[]string{"netd leave: give up this node's part", "netd leave [flags]", "Example:"},
			[]string{"node-name", "network-name", "etcd-endpoints", "etcd-cafile", "root-dir", "lease-dir", "cni-conf-dir", "node-id-file", "bridge", "log-level"},
			[]string{"mode", "network-cidr", "vni", "lease-ttl", "bgp-asn", "join-port", "kubeconfig", "json", "rotate"}},
		{[]string{"network", "show", "--help"},
			[]string{"netd network show: print the network's config", "netd network show [flags]", "Example:"},
			[]string{"network-name", "etcd-endpoints", "etcd-prefix"},
			[]string{"mode", "lease-dir", "bridge", "rotate"}},
		{[]string{"network", "delete", "--help"},
			[]string{"netd network delete: remove the network's config", "netd network delete [flags]", "Example:"},
			[]string{"network-name", "etcd-endpoints", "etcd-prefix"},
			[]string{"mode", "lease-dir", "bridge", "rotate"}},
		// Given before --help, a flag's value is not shown as its default.
		{[]string{"status", "--metrics-address=10.9.9.9:1", "--help"}, []string{`(default "127.0.0.1:9472")`}, nil, nil},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != 0 {
			t.Errorf("%q: exit %d: %s", tc.args, code, errOut.String())
			continue
		}
		help := out.String()
		for _, want := range tc.text {
			if !strings.Contains(help, want) {
				t.Errorf("%q: help lacks %q", tc.args, want)
			}
		}
		for _, name := range tc.flags {
			if !listsFlag(help, name) {
				t.Errorf("%q: help does not list -%s", tc.args, name)
			}
		}
		for _, name := range tc.unused {
			if listsFlag(help, name) {
				t.Errorf("%q: help lists -%s, which the command does not read", tc.args, name)
			}
		}
		if strings.Contains(help, "10.9.9.9") {
			t.Errorf("%q: help shows a given value as a default", tc.args)
		}
	}
}

// listsFlag reports whether help has flag.PrintDefaults' line for name.
func listsFlag(help, name string) bool {
	for _, line := range strings.Split(help, "\n") {
		if rest, ok := strings.CutPrefix(line, "  -"+name); ok && (rest == "" || rest[0] == ' ') {
			return true
		}
	}
	return false
}

// Every flag the help table names is one netd has (a misspelt name would
// make printHelp panic), and is listed.
func TestSubcommandHelpFlagsExist(t *testing.T) {
	for cmd, sub := range subcommands {
		var out, errOut bytes.Buffer
		if code := run(append(strings.Fields(cmd), "--help"), &out, &errOut); code != 0 {
			t.Errorf("%s --help: exit %d: %s", cmd, code, errOut.String())
			continue
		}
		for _, name := range sub.flags {
			if !listsFlag(out.String(), name) {
				t.Errorf("%s --help does not list -%s", cmd, name)
			}
		}
	}
}

// Flags a subcommand does not read are still accepted: scripts give netd
// leave the flags netd ran with.
func TestSubcommandAcceptsDaemonFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"status", "--mode=hostgw", "--network-cidr=10.20.0.0/16", "--lease-ttl=1m", "--metrics-address="}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "--metrics-address is empty") {
		t.Errorf("exit %d, %q; want exit 1 from status itself (its flags accepted)", code, errOut.String())
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

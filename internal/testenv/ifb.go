package testenv

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// halfTheFrames is a classic BPF classifier for eth0's egress (tc's bpf
// classifier takes its bytecode inline: no eBPF object to build) that
// matches a frame at random, one time in two (ld SKF_AD_RANDOM; jset #1;
// ret -1; ret 0).
const halfTheFrames = "4,32 0 0 4294963256,69 0 1 1,6 0 0 4294967295,6 0 0 0"

// IfbTrick is what a container with CAP_NET_ADMIN can do in its own
// namespace c to get about a quarter of what its eth0 sends past every
// ingress program of its host veth (berth's source guard): eth0's egress
// redirects half its frames, at random, to an ifb device. A frame
// redirected the first time and not the second, when ifb0 hands it back
// to eth0, leaves eth0 with tc_skip_classify still set, which the veth
// keeps across the pair. (A classifier matching every frame matches the
// second time too, and no frame keeps the flag.)
func IfbTrick(t testing.TB, c ns.NetNS) {
	t.Helper()
	for _, cmd := range [][]string{
		{"ip", "link", "add", "ifb0", "type", "ifb"},
		{"ip", "link", "set", "ifb0", "up"},
		{"tc", "qdisc", "add", "dev", "eth0", "clsact"},
		{"tc", "filter", "add", "dev", "eth0", "egress", "prio", "1", "protocol", "all", "bpf", "bytecode", halfTheFrames,
			"action", "mirred", "egress", "redirect", "dev", "ifb0"},
	} {
		if out, err := InNS(c, cmd[0], cmd[1:]...); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
}

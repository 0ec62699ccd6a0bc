package netd

import (
	"strings"
	"testing"
	"time"
)

// netd status names the datapath on the network's line; a status from a
// netd that did not send one is of the iptables datapath, the default.
func TestStatusNamesTheDatapath(t *testing.T) {
	for _, tt := range []struct{ datapath, want string }{
		{"ebpf", "network  pods, vxlan mode, ebpf datapath, 10.244.0.0/16"},
		{"iptables", "network  pods, vxlan mode, iptables datapath, 10.244.0.0/16"},
		{"", "network  pods, vxlan mode, iptables datapath, 10.244.0.0/16"},
	} {
		s := &Status{Node: "node1", Network: "pods", Mode: "vxlan", Datapath: tt.datapath, CIDR: "10.244.0.0/16", KernelMatches: true}
		var out strings.Builder
		s.Print(&out, time.Now())
		if !strings.Contains(out.String(), tt.want) {
			t.Errorf("datapath %q: want %q in\n%s", tt.datapath, tt.want, out.String())
		}
	}
}

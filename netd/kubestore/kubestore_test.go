package kubestore

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/cluster"
)

func node(name string, podCIDRs []string, annotation string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "7"}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	if annotation != "" {
		n.Annotations = map[string]string{LeaseAnnotation: annotation}
	}
	return n
}

func TestLeases(t *testing.T) {
	v4 := &conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 24}
	dual := &conf.Network{CIDR: v4.CIDR, SubnetLen: 24, CIDRv6: netip.MustParsePrefix("fd00:244::/56"), SubnetLenV6: 64}
	rec := `{"nodeIP":"192.168.50.2","mode":"vxlan","vtepMAC":"02:00:00:00:00:02","vni":1}`
	for _, tc := range []struct {
		name     string
		n        *conf.Network
		nodes    []*corev1.Node
		want     []cluster.Lease
		rejected string // substring of the one rejection
	}{
		{name: "podCIDR and annotation make a lease; the subnet and name are the Node's",
			n:     v4,
			nodes: []*corev1.Node{node("node2", []string{"10.244.2.0/24"}, `{"nodeName":"node2","subnet":"10.9.9.0/24","nodeIP":"192.168.50.2","mode":"vxlan","vtepMAC":"02:00:00:00:00:02","vni":1}`)},
			want: []cluster.Lease{{Subnet: netip.MustParsePrefix("10.244.2.0/24"), NodeName: "node2", NodeIP: netip.MustParseAddr("192.168.50.2"),
				Mode: "vxlan", VTEPMAC: cluster.MAC{2, 0, 0, 0, 0, 2}, VNI: 1}}},
		{name: "a Node without the annotation (no netd yet) or without a podCIDR is no lease",
			n:     v4,
			nodes: []*corev1.Node{node("node2", []string{"10.244.2.0/24"}, ""), node("node3", nil, rec)}},
		{name: "dual-stack podCIDRs give a dual-stack lease",
			n:     dual,
			nodes: []*corev1.Node{node("node2", []string{"10.244.2.0/24", "fd00:244:0:2::/64"}, rec)},
			want: []cluster.Lease{{Subnet: netip.MustParsePrefix("10.244.2.0/24"), SubnetV6: netip.MustParsePrefix("fd00:244:0:2::/64"), NodeName: "node2",
				NodeIP: netip.MustParseAddr("192.168.50.2"), Mode: "vxlan", VTEPMAC: cluster.MAC{2, 0, 0, 0, 0, 2}, VNI: 1}}},
		{name: "an IPv4 network ignores the IPv6 podCIDR",
			n:     v4,
			nodes: []*corev1.Node{node("node2", []string{"fd00:244:0:2::/64", "10.244.2.0/24"}, rec)},
			want: []cluster.Lease{{Subnet: netip.MustParsePrefix("10.244.2.0/24"), NodeName: "node2",
				NodeIP: netip.MustParseAddr("192.168.50.2"), Mode: "vxlan", VTEPMAC: cluster.MAC{2, 0, 0, 0, 0, 2}, VNI: 1}}},
		{name: "an annotation copied from another Node is rejected",
			n:        v4,
			nodes:    []*corev1.Node{node("node2", []string{"10.244.2.0/24"}, `{"nodeName":"node1","nodeIP":"192.168.50.1"}`)},
			rejected: `names node "node1"`},
		{name: "an annotation that is no JSON is rejected",
			n:        v4,
			nodes:    []*corev1.Node{node("node2", []string{"10.244.2.0/24"}, `nodeIP=1.2.3.4`)},
			rejected: "annotation " + LeaseAnnotation},
		{name: "a podCIDR with host bits is rejected",
			n:        v4,
			nodes:    []*corev1.Node{node("node2", []string{"10.244.2.1/24"}, rec)},
			rejected: "is not a subnet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := Leases(tc.n, tc.nodes)
			if len(snap.Leases) != len(tc.want) {
				t.Fatalf("leases %+v, want %+v", snap.Leases, tc.want)
			}
			for i := range tc.want {
				got := snap.Leases[i]
				got.Created = 0
				if got != tc.want[i] {
					t.Errorf("lease %+v, want %+v", got, tc.want[i])
				}
			}
			switch {
			case tc.rejected == "" && len(snap.Rejected) > 0:
				t.Errorf("rejected %v", snap.Rejected)
			case tc.rejected != "" && (len(snap.Rejected) != 1 || !strings.Contains(snap.Rejected[0].Err.Error(), tc.rejected)):
				t.Errorf("rejected %v, want one with %q", snap.Rejected, tc.rejected)
			}
			if snap.Revision != 7 {
				t.Errorf("revision %d, want the Nodes' resourceVersion 7", snap.Revision)
			}
		})
	}
}

func TestFits(t *testing.T) {
	dual := &conf.Network{CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 24, CIDRv6: netip.MustParsePrefix("fd00:244::/56"), SubnetLenV6: 64}
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name   string
		v4, v6 netip.Prefix
		err    string
	}{
		{"both families", p("10.244.3.0/24"), p("fd00:244:0:3::/64"), ""},
		{"no IPv6 podCIDR on a dual-stack network", p("10.244.3.0/24"), netip.Prefix{}, "has no IPv6 podCIDR"},
		{"another mask size than the network's", p("10.244.3.0/25"), p("fd00:244:0:3::/64"), "--node-cidr-mask-size"},
		{"outside the network", p("10.245.3.0/24"), p("fd00:244:0:3::/64"), "--cluster-cidr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := fits(dual, "node3", tc.v4, tc.v6)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, cluster.ErrConflict) {
				t.Fatalf("got %v, want a conflict naming %q", err, tc.err)
			}
		})
	}
}

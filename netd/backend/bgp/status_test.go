package bgp

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// Status says the truth about each session and each peer's block, and
// what to check; a session coming up is pending, not an error.
func TestPeerProblems(t *testing.T) {
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	now := time.Now()
	router := a("192.168.50.254")
	nw := &network{node: backend.Node{IP: a("192.168.50.1"), Network: &conf.Network{CIDR: p("10.244.0.0/16")},
		Link: &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "eth0"}}},
		cfg:     backend.BGP{ASN: 65001, Port: 179, Peers: []backend.BGPPeer{{Address: router, ASN: 64600, Password: "s3cret"}}},
		started: now.Add(-time.Hour), firstSeen: map[netip.Prefix]time.Time{p("10.244.2.0/24"): now.Add(-time.Hour), p("10.244.3.0/24"): now.Add(-time.Hour)}}
	in := backend.Input{
		Peers: []cluster.Lease{
			{NodeName: "node2", NodeIP: a("192.168.50.2"), Subnet: p("10.244.2.0/24")},
			{NodeName: "node3", NodeIP: a("192.168.50.3"), Subnet: p("10.244.3.0/24")},
		},
		Underlay: func(netip.Addr) (backend.Path, error) { return backend.Path{Direct: true}, nil },
	}
	ext := func(state string, since time.Duration, received uint64) backend.Session {
		return backend.Session{Peer: router.String(), Name: "external", ASN: 64600, External: true, State: state,
			Established: state == "established", Since: now.Add(-since), Received: received, EndOfRIB: true}
	}
	node := func(n int, state string, since time.Duration) backend.Session {
		return backend.Session{Peer: "192.168.50." + string(rune('0'+n)), Name: "node" + string(rune('0'+n)), ASN: 65001, State: state,
			Established: state == "established", Since: now.Add(-since), Restarting: state != "established"}
	}
	routes := func(ps ...string) (out []backend.LearnedPath) {
		for _, s := range ps {
			pfx := p(s)
			out = append(out, backend.LearnedPath{Prefix: pfx, NextHop: a("192.168.50." + s[7:8]), From: a("192.168.50." + s[7:8]), Best: true})
		}
		return out
	}
	tests := []struct {
		name     string
		sessions []backend.Session
		paths    []backend.LearnedPath
		want     map[string]string // problem key -> text it contains ("pending:" prefix for Pending)
	}{
		{"all fine", []backend.Session{ext("established", time.Minute, 2), node(2, "established", time.Minute), node(3, "established", time.Minute)},
			routes("10.244.2.0/24", "10.244.3.0/24"), nil},
		{"a router that sends nothing", []backend.Session{ext("established", time.Minute, 0), node(2, "established", time.Minute), node(3, "established", time.Minute)},
			routes("10.244.2.0/24", "10.244.3.0/24"), map[string]string{router.String(): "announces nothing: check its export policy (FRR 8 enforces RFC 8212"}},
		{"a wrong password", []backend.Session{ext("active", time.Minute, 0), node(2, "established", time.Minute), node(3, "established", time.Minute)},
			routes("10.244.2.0/24", "10.244.3.0/24"), map[string]string{router.String(): "TCP MD5 password is set"}},
		{"a router coming up", []backend.Session{ext("active", 2*time.Second, 0), node(2, "established", time.Minute), node(3, "established", time.Minute)},
			routes("10.244.2.0/24", "10.244.3.0/24"), map[string]string{router.String(): "pending:coming up"}},
		{"a node restarting, its routes kept", []backend.Session{ext("established", time.Minute, 2), node(2, "established", time.Minute), node(3, "idle", 3*time.Second)},
			routes("10.244.2.0/24", "10.244.3.0/24"), map[string]string{"node3": "pending:its routes are kept meanwhile"}},
		{"a node stopped, its routes still kept", []backend.Session{ext("established", time.Minute, 2), node(2, "established", time.Minute), node(3, "active", 30*time.Second)},
			routes("10.244.2.0/24", "10.244.3.0/24"), map[string]string{"node3": "kept for its graceful restart meanwhile: check that netd runs on node3"}},
		{"a node stopped, its block no longer routed", []backend.Session{ext("established", time.Minute, 2), node(2, "established", time.Minute), node(3, "active", 3*time.Minute)},
			routes("10.244.2.0/24"), map[string]string{"node3": "its block 10.244.3.0/24 is not routed: the BGP session to 192.168.50.3"}},
		{"a block nobody announces", []backend.Session{ext("established", time.Minute, 2)},
			routes("10.244.2.0/24"), map[string]string{"node3": "its block 10.244.3.0/24 is not routed: no BGP peer announces it"}},
	}
	for _, tt := range tests {
		in.Routing = backend.Routing{At: now, Sessions: tt.sessions, Paths: tt.paths}
		_, problems := nw.Desired(in)
		got := map[string]backend.Problem{}
		for _, pr := range problems {
			got[pr.Peer] = pr
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: problems %v, want %d", tt.name, problems, len(tt.want))
			continue
		}
		for key, text := range tt.want {
			pr, ok := got[key]
			pending := strings.HasPrefix(text, "pending:")
			text = strings.TrimPrefix(text, "pending:")
			if !ok || !strings.Contains(pr.Err.Error(), text) || (pr.Kind == backend.Pending) != pending {
				t.Errorf("%s: %s: %+v, want %q (pending %v)", tt.name, key, pr, text, pending)
			}
		}
	}
	// Sessions report what each peer's routes amounted to.
	in.Routing = backend.Routing{At: now, Sessions: []backend.Session{node(2, "established", time.Minute)}, Paths: routes("10.244.2.0/24")}
	if ss := nw.Sessions(in); len(ss) != 1 || ss[0].Accepted != 1 || ss[0].Problem != "" {
		t.Errorf("sessions %+v", ss)
	}
}

// Each family's block and session count on their own: a node whose IPv4
// block is routed but whose IPv6 one is not (or whose IPv6 session is
// down) is reported, saying which; an IPv6 router is told this node's
// IPv6 address to peer with.
func TestPeerProblemsPerFamily(t *testing.T) {
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	now := time.Now()
	router6 := a("fd00:50::254")
	long := now.Add(-time.Hour)
	nw := &network{node: backend.Node{IP: a("192.168.50.1"), IPv6: a("fd00:50::1"),
		Network: &conf.Network{CIDR: p("10.244.0.0/16"), CIDRv6: p("fd00:244::/56")},
		Link:    &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "eth0"}}},
		cfg:     backend.BGP{ASN: 65001, Port: 179, Peers: []backend.BGPPeer{{Address: router6, ASN: 64600}}},
		started: long, firstSeen: map[netip.Prefix]time.Time{p("10.244.2.0/24"): long, p("fd00:244:0:2::/64"): long}}
	in := backend.Input{
		Peers: []cluster.Lease{{NodeName: "node2", NodeIP: a("192.168.50.2"), NodeIPv6: a("fd00:50::2"),
			Subnet: p("10.244.2.0/24"), SubnetV6: p("fd00:244:0:2::/64")}},
		Underlay: func(netip.Addr) (backend.Path, error) { return backend.Path{Direct: true}, nil },
	}
	session := func(peer, name, state string, external bool) backend.Session {
		return backend.Session{Peer: peer, Name: name, ASN: 65001, External: external, State: state,
			Established: state == "established", Since: now.Add(-time.Minute), EndOfRIB: true}
	}
	path := func(prefix, nh string) backend.LearnedPath {
		return backend.LearnedPath{Prefix: p(prefix), NextHop: a(nh), From: a(nh), Best: true}
	}
	v4, v6 := path("10.244.2.0/24", "192.168.50.2"), path("fd00:244:0:2::/64", "fd00:50::2")
	tests := []struct {
		name     string
		sessions []backend.Session
		paths    []backend.LearnedPath
		want     map[string]string
	}{
		{"both families routed", []backend.Session{session("192.168.50.2", "node2", "established", false), session("fd00:50::2", "node2", "established", false)},
			[]backend.LearnedPath{v4, v6}, nil},
		{"the IPv6 block not announced", []backend.Session{session("192.168.50.2", "node2", "established", false), session("fd00:50::2", "node2", "established", false)},
			[]backend.LearnedPath{v4}, map[string]string{"node2": "its block fd00:244:0:2::/64 is not routed: it does not announce it"}},
		{"the IPv6 session down", []backend.Session{session("192.168.50.2", "node2", "established", false), session("fd00:50::2", "node2", "active", false)},
			[]backend.LearnedPath{v4}, map[string]string{"node2": "its block fd00:244:0:2::/64 is not routed: the BGP session to fd00:50::2 (AS 65001) is active"}},
		{"the IPv4 session down", []backend.Session{session("192.168.50.2", "node2", "active", false), session("fd00:50::2", "node2", "established", false)},
			[]backend.LearnedPath{v6}, map[string]string{"node2": "its block 10.244.2.0/24 is not routed: the BGP session to 192.168.50.2"}},
		{"an IPv6 router that is down", []backend.Session{session("192.168.50.2", "node2", "established", false), session("fd00:50::2", "node2", "established", false),
			session(router6.String(), "external", "active", true)},
			[]backend.LearnedPath{v4, v6}, map[string]string{router6.String(): "check that the router has `neighbor fd00:50::1 remote-as 65001`"}},
	}
	for _, tt := range tests {
		in.Routing = backend.Routing{At: now, Sessions: tt.sessions, Paths: tt.paths}
		_, problems := nw.Desired(in)
		got := map[string]backend.Problem{}
		for _, pr := range problems {
			got[pr.Peer] = pr
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: problems %v, want %d", tt.name, problems, len(tt.want))
			continue
		}
		for key, text := range tt.want {
			if pr, ok := got[key]; !ok || !strings.Contains(pr.Err.Error(), text) || pr.Kind != backend.Unreachable {
				t.Errorf("%s: %s: %+v, want %q", tt.name, key, pr, text)
			}
		}
	}
	// Each session counts its family's prefixes.
	in.Routing = backend.Routing{At: now, Paths: []backend.LearnedPath{v4, v6},
		Sessions: []backend.Session{session("192.168.50.2", "node2", "established", false), session("fd00:50::2", "node2", "established", false)}}
	for _, s := range nw.Sessions(in) {
		if s.Received != 1 || s.Accepted != 1 {
			t.Errorf("session %s: received %d accepted %d, want 1 and 1", s.Peer, s.Received, s.Accepted)
		}
	}
}

package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/berthnet/berth/netd/backend"
)

// comingUp is how long a session (or a block's route) may take to come
// up before it counts as down: a restarted peer is back in a few
// seconds, and GoBGP waits 1-2s before it first dials.
const comingUp = 10 * time.Second

// Sessions reports every session with its prefixes counted as FRR counts
// them, and what to check if it is down or its peer sends nothing. The
// routing state has the received count before the import policy; the
// paths learned are the ones after it.
func (nw *network) Sessions(in backend.Input) []backend.Session {
	accepted := nw.importPaths(in).accepted()
	received := map[netip.Addr]uint64{}
	for _, p := range in.Routing.Paths {
		received[p.From]++
	}
	out := make([]backend.Session, 0, len(in.Routing.Sessions))
	for _, s := range in.Routing.Sessions {
		addr, _ := netip.ParseAddr(s.Peer)
		all := s.Received
		s.Received, s.Accepted = received[addr], accepted[addr]
		if all > s.Received {
			s.Filtered = all - s.Received
		}
		s.Problem, s.Pending = nw.sessionProblem(s, in.Routing.At)
		out = append(out, s)
	}
	return out
}

// sessionProblem says what is wrong with s and what to check.
func (nw *network) sessionProblem(s backend.Session, now time.Time) (problem string, pending bool) {
	peer, _ := netip.ParseAddr(s.Peer)
	local := nw.node.Addr(peer.Is6()) // this node's end of the session
	age := now.Sub(s.Since)
	if s.Since.IsZero() {
		age = 0
	}
	if s.Established {
		if s.External && s.Received+s.Filtered == 0 && (s.EndOfRIB || age > comingUp) {
			return fmt.Sprintf("the BGP session to %s (AS %d) is established but the router announces nothing: check its export policy "+
				"(FRR 8 enforces RFC 8212 on eBGP by default, bgp ebgp-requires-policy: without `neighbor %s route-map NAME out` and `in` "+
				"it sends and accepts nothing; BIRD: the protocol's export filter)", s.Peer, s.ASN, local), false
		}
		return "", false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "the BGP session to %s (AS %d) is %s, not established", s.Peer, s.ASN, s.State)
	if age < comingUp {
		b.WriteString(" (coming up)")
		if s.Restarting {
			b.WriteString("; its routes are kept meanwhile (graceful restart)")
		}
		return b.String(), true
	}
	fmt.Fprintf(&b, " for over %s", comingUp)
	if s.Restarting {
		b.WriteString("; its routes are kept for its graceful restart meanwhile")
	}
	port := nw.cfg.Port
	if !s.External {
		fmt.Fprintf(&b, ": check that netd runs on %s and that TCP port %d is open between the nodes", s.Name, port)
		return b.String(), false
	}
	for _, e := range nw.cfg.Peers {
		if e.Address.String() != s.Peer {
			continue
		}
		if e.Port != 0 {
			port = e.Port
		}
		if e.Password != "" {
			b.WriteString(": a TCP MD5 password is set; a router with a different one (or none) drops every segment, which looks like this: check it matches the router's `neighbor ... password`; then")
		}
	}
	fmt.Fprintf(&b, ": check that the router has `neighbor %s remote-as %d`, listens on port %d and reaches %s", local, nw.cfg.ASN, port, local)
	return b.String(), false
}

// peerProblems names the external sessions with a problem, and the peers
// whose block (of either family) is not routed or whose session (of
// either family) is down: one problem per node, saying which.
func (nw *network) peerProblems(in backend.Input, routed map[netip.Prefix]bool) []backend.Problem {
	var out []backend.Problem
	kind := func(pending bool) backend.ProblemKind {
		if pending {
			return backend.Pending
		}
		return backend.Unreachable
	}
	nodes := map[string]backend.Session{}
	for _, s := range nw.Sessions(in) {
		if !s.External {
			nodes[s.Peer] = s
			continue
		}
		if s.Problem != "" {
			out = append(out, backend.Problem{Peer: s.Peer, Err: errors.New(s.Problem), Kind: kind(s.Pending)})
		}
	}
	holding := nw.holding(in.Routing)
	for _, p := range in.Peers {
		var whys []string
		pending := true
		for _, block := range p.Subnets() {
			s, session := nodes[str(p.NodeAddr(block.Addr().Is6()))]
			switch {
			case !routed[block]:
				why := "no BGP peer announces it"
				blockPending := holding || in.Routing.At.Sub(nw.seen(block, in.Routing.At)) < comingUp
				switch {
				case session && s.Problem != "":
					why, blockPending = s.Problem, blockPending || s.Pending
				case session:
					why = "it does not announce it"
				}
				whys = append(whys, fmt.Sprintf("its block %s is not routed: %s", block, why))
				pending = pending && blockPending
			case session && s.Problem != "":
				whys = append(whys, s.Problem)
				pending = pending && s.Pending
			}
		}
		if len(whys) > 0 {
			out = append(out, backend.Problem{Peer: p.NodeName, Kind: kind(pending), Err: errors.New(strings.Join(whys, "; "))})
		}
	}
	return out
}

// str is an address as sessions name their peer ("" for none).
func str(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// seen is when this netd first expected a route for block (Announce
// records it); a block not recorded yet was only just leased: now.
func (nw *network) seen(block netip.Prefix, now time.Time) time.Time {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if t, ok := nw.firstSeen[block]; ok {
		return t
	}
	return now
}

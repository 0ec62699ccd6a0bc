package speaker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/types/known/anypb"
)

// Path is a path learned from a neighbor (this node's own are left out).
// A prefix may have several, one of them Best by BGP's rules.
type Path struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	From    netip.Addr // the neighbor it came from
	Best    bool
	// Stale paths are kept while their neighbor restarts (graceful
	// restart) until it sends them again or its restart time is over.
	Stale bool
}

// Session is the state of one neighbor, counted as FRR counts it.
type Session struct {
	Neighbor    Neighbor
	State       string // idle, connect, active, opensent, openconfirm, established
	Established bool
	// Since is when the session was established, or when it went down
	// (or was configured, if it never came up).
	Since time.Time
	// Received are the prefixes the neighbor announces, AS-path loops
	// and End-of-RIB markers left out; Advertised the ones it is sent.
	Received   uint64
	Advertised uint64
	// EndOfRIB: the neighbor has sent all its routes (it marks the end
	// only when graceful restart was negotiated; else this stays false).
	EndOfRIB bool
	// Restarting: the session is down and the neighbor's routes are kept
	// for its graceful restart.
	Restarting bool
}

// Announce advertises prefix with this node as next hop. Idempotent.
func (s *Speaker) Announce(ctx context.Context, prefix netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.announced[prefix] {
		return nil
	}
	p, err := s.path(prefix)
	if err != nil {
		return err
	}
	if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{Path: p}); err != nil {
		return fmt.Errorf("announcing %s: %w", prefix, err)
	}
	s.announced[prefix] = true
	return nil
}

// Withdraw stops announcing prefix.
func (s *Speaker) Withdraw(ctx context.Context, prefix netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.announced[prefix] {
		return nil
	}
	p, err := s.path(prefix)
	if err != nil {
		return err
	}
	if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{Family: p.Family, Path: p}); err != nil {
		return fmt.Errorf("withdrawing %s: %w", prefix, err)
	}
	delete(s.announced, prefix)
	return nil
}

// path is prefix as GoBGP takes it, with this node's address of its
// family as next hop. For IPv6, GoBGP turns the next hop into the
// MP_REACH_NLRI attribute.
func (s *Speaker) path(prefix netip.Prefix) (*api.Path, error) {
	next := s.listenAddr(prefix.Addr())
	if !next.IsValid() {
		return nil, fmt.Errorf("announcing %s: this node has no address of its family to be the next hop", prefix)
	}
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	nh, _ := anypb.New(&api.NextHopAttribute{NextHop: next.String()})
	return &api.Path{Family: familyOf(prefix).api, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}

// Paths are every path learned from the neighbors (not only the best
// ones: a best path the backend refuses may hide a good one), of both
// families, sorted by prefix, best first.
func (s *Speaker) Paths(ctx context.Context) ([]Path, error) {
	var out []Path
	for _, f := range families {
		err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: f.api},
			func(d *api.Destination) {
				pfx, err := netip.ParsePrefix(d.Prefix)
				if err != nil {
					return
				}
				for _, p := range d.Paths {
					from, err := netip.ParseAddr(p.NeighborIp)
					if p.IsWithdraw || err != nil || !from.IsValid() || from.IsUnspecified() {
						continue // this node's own, or not a path
					}
					out = append(out, Path{Prefix: pfx, NextHop: nextHop(p), From: from, Best: p.Best, Stale: p.Stale})
				}
			})
		if err != nil {
			return nil, fmt.Errorf("listing BGP paths: %w", err)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Prefix != out[j].Prefix {
			return out[i].Prefix.Addr().Less(out[j].Prefix.Addr()) ||
				out[i].Prefix.Addr() == out[j].Prefix.Addr() && out[i].Prefix.Bits() < out[j].Prefix.Bits()
		}
		return out[i].Best && !out[j].Best
	})
	return out, nil
}

// nextHop is a path's next hop: the NEXT_HOP attribute (IPv4), or the
// first global next hop of MP_REACH_NLRI (IPv6).
func nextHop(p *api.Path) netip.Addr {
	for _, a := range p.Pattrs {
		var nh api.NextHopAttribute
		if a.UnmarshalTo(&nh) == nil {
			addr, _ := netip.ParseAddr(nh.NextHop)
			return addr
		}
		var mp api.MpReachNLRIAttribute
		if a.UnmarshalTo(&mp) == nil && len(mp.NextHops) > 0 {
			addr, _ := netip.ParseAddr(mp.NextHops[0])
			return addr
		}
	}
	return netip.Addr{}
}

// Sessions reports every neighbor's session, sorted by address.
func (s *Speaker) Sessions(ctx context.Context) ([]Session, error) {
	s.mu.Lock()
	neighbors := make(map[netip.Addr]Neighbor, len(s.neighbors))
	added := make(map[netip.Addr]time.Time, len(s.added))
	for k, v := range s.neighbors {
		neighbors[k], added[k] = v, s.added[k]
	}
	s.mu.Unlock()
	var out []Session
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		st := p.GetState().GetSessionState()
		ss := Session{Neighbor: neighbors[addr], State: stateName(st), Established: st == api.PeerState_ESTABLISHED,
			Restarting: p.GetGracefulRestart().GetPeerRestarting(), Since: added[addr]}
		ss.Neighbor.Address = addr
		ts := p.GetTimers().GetState()
		switch {
		case ss.Established && ts.GetUptime() != nil:
			ss.Since = ts.GetUptime().AsTime()
		case !ss.Established && ts.GetDowntime() != nil && ts.GetDowntime().AsTime().After(ss.Since):
			ss.Since = ts.GetDowntime().AsTime()
		}
		marked, unmarked := 0, 0
		for _, af := range p.GetAfiSafis() {
			ss.Received += af.GetState().GetAccepted() // GoBGP's "accepted": received, minus AS-path loops
			if gr := af.GetMpGracefulRestart().GetState(); gr.GetReceived() && gr.GetEndOfRibReceived() {
				marked++
			} else if gr.GetReceived() {
				unmarked++
			}
		}
		ss.EndOfRIB = ss.Established && marked > 0 && unmarked == 0
		out = append(out, ss)
	})
	if err != nil {
		return nil, err
	}
	// What each established neighbor is sent, after the export policy;
	// GoBGP's own count includes the End-of-RIB marker.
	var errs []error
	for i := range out {
		if !out[i].Established {
			continue
		}
		// A session carries its neighbor's address family.
		f := addrFamily(out[i].Neighbor.Address)
		t, err := s.srv.GetTable(ctx, &api.GetTableRequest{TableType: api.TableType_ADJ_OUT, Family: f.api, Name: out[i].Neighbor.Address.String()})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[i].Advertised = t.NumPath
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Neighbor.Address.Less(out[j].Neighbor.Address) })
	return out, errors.Join(errs...)
}

func stateName(st api.PeerState_SessionState) string {
	switch st {
	case api.PeerState_IDLE:
		return "idle"
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "unknown"
}

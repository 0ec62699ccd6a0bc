package speaker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// Neighbor is one BGP session to open.
type Neighbor struct {
	Address  netip.Addr
	ASN      uint32 // equal to ours: iBGP
	Port     int    // the neighbor's port; 0: the speaker's ListenPort
	Password string // TCP MD5 (RFC 2385); empty: none
	// RRClient makes this node a route reflector for the neighbor.
	RRClient bool
	// Passive waits for the neighbor to connect. Between two berth nodes
	// only the lower address dials: when both dial, GoBGP (which has no
	// collision detection) closes each side's incoming attempt and a
	// restarted node and its peers can keep failing for half a minute.
	Passive bool
	// External is a router outside the cluster: it is sent only the
	// export set (SetExport), never other routers' or nodes' routes.
	External bool
	Name     string // for logs and status: node name, or "external"
}

// SetNeighbors makes the sessions exactly want: new ones are opened,
// changed ones replaced, missing ones closed (with a Cease: the peer
// drops their routes).
func (s *Speaker) SetNeighbors(ctx context.Context, want []Neighbor) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wanted := map[netip.Addr]Neighbor{}
	for _, n := range want {
		if n.Address == s.cfg.RouterID || n.Address == s.listenAddr(n.Address) {
			continue // never peer with ourselves
		}
		wanted[n.Address] = n
	}
	var errs []error
	for addr, have := range s.neighbors {
		if w, ok := wanted[addr]; ok && w == have {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("closing BGP session to %s: %w", addr, err))
			continue
		}
		delete(s.neighbors, addr)
		delete(s.added, addr)
		if !have.External {
			s.setNode(addr, nil)
			if err := s.setNodeNeighbor(ctx, addr, false); err != nil {
				errs = append(errs, fmt.Errorf("BGP neighbor set: %w", err))
			}
		}
		s.log.Info("BGP neighbor removed", "peer", addr, "name", have.Name)
	}
	for addr, n := range wanted {
		if _, ok := s.neighbors[addr]; ok {
			continue
		}
		if n.Password != "" {
			if err := md5Supported(); err != nil {
				errs = append(errs, fmt.Errorf("BGP neighbor %s (%s): %w", addr, n.Name, err))
				continue
			}
		}
		if !n.External {
			if err := s.setNodeNeighbor(ctx, addr, true); err != nil {
				errs = append(errs, fmt.Errorf("BGP neighbor set: %w", err))
				continue
			}
			s.setNode(addr, &n) // before its first event
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peer(n)}); err != nil {
			errs = append(errs, fmt.Errorf("opening BGP session to %s: %w", addr, err))
			s.setNode(addr, nil)
			continue
		}
		s.neighbors[addr] = n
		s.added[addr] = time.Now()
		s.log.Info("BGP neighbor added", "peer", addr, "name", n.Name, "asn", n.ASN, "port", s.port(n),
			"rrClient", n.RRClient, "external", n.External, "md5", n.Password != "", "restarting", s.restarting())
	}
	return errors.Join(errs...)
}

func (s *Speaker) port(n Neighbor) int {
	if n.Port != 0 {
		return n.Port
	}
	return int(s.cfg.ListenPort)
}

// peer is GoBGP's configuration of n: from the node's address of n's
// family, carrying that family's unicast routes.
func (s *Speaker) peer(n Neighbor) *api.Peer {
	secs := func(d time.Duration) uint64 { return uint64((d + time.Second - 1) / time.Second) }
	local := s.listenAddr(n.Address)
	if !local.IsValid() {
		local = s.cfg.RouterID
	}
	p := &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.ASN, AuthPassword: n.Password, Description: n.Name},
		Transport: &api.Transport{LocalAddress: local.String(), RemotePort: uint32(s.port(n)), PassiveMode: n.Passive},
		// A dead peer is noticed within the hold time; a refused
		// connection is retried after 1-2s (GoBGP's fastest; between
		// nodes netd dials sooner itself, see dial.go).
		Timers: &api.Timers{Config: &api.TimersConfig{ConnectRetry: connectRetry, HoldTime: secs(s.cfg.HoldTime),
			KeepaliveInterval: secs(s.cfg.KeepaliveInterval), IdleHoldTimeAfterReset: idleHoldAfterTry}},
		// Peers keep our routes while we restart, and we keep theirs.
		// With the notification bit (RFC 8538) a NOTIFICATION other than
		// a Hard Reset is a restart too. After a restart, routers are told
		// that forwarding was preserved (R and F bits). Other nodes are
		// not: GoBGP ignores the F bit, and GoBGP ends a restart for every
		// session once the ones up have sent their routes, so a node whose
		// session comes up later would be told "not preserved"; sessions
		// restarting alone end theirs each on its own. (A router whose
		// session comes up later is configured again, see keepRestarting.)
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: uint32(secs(s.cfg.RestartTime)),
			NotificationEnabled: true, DeferralTime: uint32(secs(selectionDefer)), LocalRestarting: n.External && s.restarting()},
		AfiSafis: []*api.AfiSafi{{
			Config:            &api.AfiSafiConfig{Family: addrFamily(n.Address).api, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		}},
	}
	if n.RRClient {
		p.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: s.cfg.RouterID.String()}
	}
	return p
}

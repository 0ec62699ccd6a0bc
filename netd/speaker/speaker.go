// Package speaker is netd's BGP speaker: an embedded GoBGP server that
// announces this node's block, peers with the other nodes (full mesh or
// through route reflectors) and with external routers (BIRD, FRR), and
// reports the routes it learned. It does not touch the kernel: the bgp
// backend turns Routes into kernel routes.
//
// Only prefixes inside the cluster CIDR are accepted and announced (a
// global import and export policy), so a peer announcing 0.0.0.0/0 or a
// foreign prefix cannot hijack traffic unless AcceptForeign says so.
//
// Families: a session to an IPv4 neighbor carries IPv4 unicast, a
// session to an IPv6 neighbor IPv6 unicast (MP-BGP, RFC 4760), as Calico
// peers BIRD per family: each family's next hop is then the node's own
// address of that family, which the kernel routes to directly.
package speaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// Config is the speaker's identity and policy.
type Config struct {
	RouterID   netip.Addr // an IPv4 address: the node's IPv4 address, else any unique one
	ASN        uint32     // default 64512
	ListenPort int32      // default 179
	// ListenAddrs are the node's addresses, one per family it peers over
	// (default: RouterID). An announced prefix's next hop is the one of
	// its family.
	ListenAddrs []netip.Addr
	// ClusterCIDRs (one per family) bound what is accepted and announced.
	ClusterCIDRs []netip.Prefix
	// AcceptForeign also accepts prefixes outside ClusterCIDR.
	AcceptForeign bool
	// RestartTime is the graceful restart time announced to peers: how
	// long they keep this node's routes while netd restarts (RFC 4724).
	RestartTime time.Duration
	Logger      *slog.Logger
}

// Neighbor is one BGP session to open.
type Neighbor struct {
	Address  netip.Addr
	ASN      uint32 // equal to ours: iBGP
	Password string // TCP MD5 (RFC 2385); empty: none
	// RRClient makes this node a route reflector for the neighbor.
	RRClient bool
	// Passive waits for the neighbor to connect. Between two berth nodes
	// only the lower address dials: when both dial, a restarted node and
	// its peers can keep closing each other's attempts for half a minute.
	Passive bool
	Name    string // for logs and status: node name or "external"
}

// Route is a best path learned from a peer.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	From    netip.Addr // the peer it came from
}

// Session is the state of one neighbor.
type Session struct {
	Neighbor    Neighbor
	State       string // idle, connect, active, opensent, openconfirm, established
	Since       time.Time
	Received    uint64
	Advertised  uint64
	Established bool
}

// Speaker is a running BGP speaker.
type Speaker struct {
	cfg     Config
	srv     *server.BgpServer
	log     *slog.Logger
	changed chan struct{} // signalled (without blocking) on any table or peer change

	mu        sync.Mutex
	neighbors map[netip.Addr]Neighbor
	announced map[netip.Prefix]bool
}

const (
	policyName = "berth-cluster"
	prefixSet  = "berth-cluster-prefixes" // "-v6" for IPv6: a GoBGP prefix set holds one family
)

var (
	ipv4Unicast = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	ipv6Unicast = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// familyOf is the unicast family of an address.
func familyOf(a netip.Addr) *api.Family {
	if a.Is4() {
		return ipv4Unicast
	}
	return ipv6Unicast
}

// listenAddr is the node's address of a's family (zero: none).
func (s *Speaker) listenAddr(a netip.Addr) netip.Addr {
	for _, l := range s.cfg.ListenAddrs {
		if l.Is4() == a.Is4() {
			return l
		}
	}
	return netip.Addr{}
}

// Start runs a speaker until ctx ends or Stop is called.
func Start(ctx context.Context, cfg Config) (*Speaker, error) {
	if cfg.ASN == 0 {
		cfg.ASN = 64512
	}
	if cfg.ListenPort == 0 {
		cfg.ListenPort = 179
	}
	if len(cfg.ListenAddrs) == 0 {
		cfg.ListenAddrs = []netip.Addr{cfg.RouterID}
	}
	if cfg.RestartTime == 0 {
		cfg.RestartTime = 120 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Speaker{cfg: cfg, log: cfg.Logger.With("component", "bgp"), changed: make(chan struct{}, 1),
		neighbors: map[netip.Addr]Neighbor{}, announced: map[netip.Prefix]bool{}}
	s.srv = server.NewBgpServer(server.LoggerOption(&logAdapter{s.log}))
	go s.srv.Serve()
	var listen []string
	for _, a := range cfg.ListenAddrs {
		listen = append(listen, a.String())
	}
	err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:             cfg.ASN,
		RouterId:        cfg.RouterID.String(),
		ListenPort:      cfg.ListenPort,
		ListenAddresses: listen,
	}})
	if err != nil {
		s.srv.Stop()
		return nil, fmt.Errorf("starting BGP on %v port %d: %w", listen, cfg.ListenPort, err)
	}
	if err := s.installPolicy(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	err = s.srv.WatchEvent(ctx, &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}, func(r *api.WatchEventResponse) {
		if p := r.GetPeer(); p != nil && p.Type == api.WatchEventResponse_PeerEvent_STATE {
			s.log.Info("BGP session", "peer", p.Peer.GetState().GetNeighborAddress(),
				"state", stateName(p.Peer.GetState().GetSessionState()))
		}
		s.signal()
	})
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("watching BGP events: %w", err)
	}
	// Nothing is stopped when ctx ends (netd stopping, e.g. for a
	// restart): the sessions end with the process, the kernel closes them
	// without a NOTIFICATION, and peers keep this node's routes for the
	// graceful restart time, as after a crash. GoBGP's Stop would send
	// each peer a Cease (peer de-configured), on which it drops them at
	// once: a Kubernetes rollout restart lost a fifth of the pings.
	return s, nil
}

// Changes is signalled whenever a session or a best path changes.
func (s *Speaker) Changes() <-chan struct{} { return s.changed }

func (s *Speaker) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Stop ends every session with a Cease, on which peers drop this node's
// routes at once, and the server: for leaving on purpose, not for a
// restart (see Start).
func (s *Speaker) Stop() { s.srv.Stop() }

// installPolicy accepts and announces only cluster prefixes: one prefix
// set and one statement per family.
func (s *Speaker) installPolicy(ctx context.Context) error {
	if s.cfg.AcceptForeign {
		return nil
	}
	var statements []*api.Statement
	for _, c := range s.cfg.ClusterCIDRs {
		name, maxLen := prefixSet, uint32(32)
		if c.Addr().Is6() {
			name, maxLen = prefixSet+"-v6", 128
		}
		err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_PREFIX, Name: name,
			Prefixes: []*api.Prefix{{IpPrefix: c.String(), MaskLengthMin: uint32(c.Bits()), MaskLengthMax: maxLen}},
		}})
		if err != nil {
			return fmt.Errorf("BGP prefix set: %w", err)
		}
		statements = append(statements, &api.Statement{
			Name:       name + "-accept",
			Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: name}},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
		})
	}
	err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{Name: policyName, Statements: statements}})
	if err != nil {
		return fmt.Errorf("BGP policy: %w", err)
	}
	for _, dir := range []api.PolicyDirection{api.PolicyDirection_IMPORT, api.PolicyDirection_EXPORT} {
		err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: dir, Policies: []*api.Policy{{Name: policyName}}, DefaultAction: api.RouteAction_REJECT,
		}})
		if err != nil {
			return fmt.Errorf("BGP policy assignment: %w", err)
		}
	}
	return nil
}

// Announce advertises prefix with this node's address of its family as
// next hop. Idempotent.
func (s *Speaker) Announce(ctx context.Context, prefix netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.announced[prefix] {
		return nil
	}
	path, err := s.path(prefix)
	if err != nil {
		return err
	}
	if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{Path: path}); err != nil {
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
	path, err := s.path(prefix)
	if err != nil {
		return err
	}
	if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{Family: path.Family, Path: path}); err != nil {
		return fmt.Errorf("withdrawing %s: %w", prefix, err)
	}
	delete(s.announced, prefix)
	return nil
}

// path is prefix as GoBGP takes it. For IPv6, GoBGP turns the next hop
// into the MP_REACH_NLRI attribute.
func (s *Speaker) path(prefix netip.Prefix) (*api.Path, error) {
	next := s.listenAddr(prefix.Addr())
	if !next.IsValid() {
		return nil, fmt.Errorf("announcing %s: this node has no address of its family to be the next hop", prefix)
	}
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	nh, _ := anypb.New(&api.NextHopAttribute{NextHop: next.String()})
	return &api.Path{Family: familyOf(prefix.Addr()), Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}

// SetNeighbors makes the sessions exactly want: new ones are opened,
// changed ones replaced, missing ones closed.
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
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peer(n)}); err != nil {
			errs = append(errs, fmt.Errorf("opening BGP session to %s: %w", addr, err))
			continue
		}
		s.neighbors[addr] = n
		s.log.Info("BGP neighbor added", "peer", addr, "name", n.Name, "asn", n.ASN, "rrClient", n.RRClient, "md5", n.Password != "")
	}
	return errors.Join(errs...)
}

// peer is the GoBGP neighbor for n: from the node's address of n's
// family, carrying that family's unicast routes.
func (s *Speaker) peer(n Neighbor) *api.Peer {
	restart := uint32(s.cfg.RestartTime / time.Second)
	local := s.listenAddr(n.Address)
	if !local.IsValid() {
		local = s.cfg.RouterID
	}
	p := &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.ASN, AuthPassword: n.Password, Description: n.Name},
		Transport: &api.Transport{LocalAddress: local.String(), RemotePort: uint32(s.cfg.ListenPort), PassiveMode: n.Passive},
		// Short timers: a dead node is noticed in seconds, and a reset
		// session (a restarted peer) is retried after 1 s, not 30.
		Timers: &api.Timers{Config: &api.TimersConfig{ConnectRetry: 2, HoldTime: 9, KeepaliveInterval: 3, IdleHoldTimeAfterReset: 1}},
		// Peers keep our routes while we restart, and we keep theirs.
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: restart},
		AfiSafis: []*api.AfiSafi{{
			Config:            &api.AfiSafiConfig{Family: familyOf(n.Address), Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		}},
	}
	if n.RRClient {
		p.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: s.cfg.RouterID.String()}
	}
	return p
}

// Routes are the best paths learned from peers (not this node's own), of
// both families, sorted by prefix.
func (s *Speaker) Routes(ctx context.Context) ([]Route, error) {
	var out []Route
	for _, family := range []*api.Family{ipv4Unicast, ipv6Unicast} {
		err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: family},
			func(d *api.Destination) {
				for _, p := range d.Paths {
					if !p.Best || p.IsWithdraw || p.NeighborIp == "" || p.NeighborIp == "<nil>" {
						continue
					}
					pfx, err := netip.ParsePrefix(d.Prefix)
					if err != nil {
						continue
					}
					from, _ := netip.ParseAddr(p.NeighborIp)
					out = append(out, Route{Prefix: pfx, NextHop: nextHop(p), From: from})
				}
			})
		if err != nil {
			return nil, fmt.Errorf("listing BGP routes: %w", err)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix.String() < out[j].Prefix.String() })
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

// Sessions reports every neighbor's session.
func (s *Speaker) Sessions(ctx context.Context) ([]Session, error) {
	s.mu.Lock()
	neighbors := make(map[netip.Addr]Neighbor, len(s.neighbors))
	for k, v := range s.neighbors {
		neighbors[k] = v
	}
	s.mu.Unlock()
	var out []Session
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		ss := Session{Neighbor: neighbors[addr], State: stateName(p.GetState().GetSessionState())}
		ss.Neighbor.Address = addr
		ss.Established = p.GetState().GetSessionState() == api.PeerState_ESTABLISHED
		if up := p.GetTimers().GetState().GetUptime(); up != nil && ss.Established {
			ss.Since = up.AsTime()
		}
		for _, af := range p.GetAfiSafis() {
			ss.Received += af.GetState().GetReceived()
			ss.Advertised += af.GetState().GetAdvertised()
		}
		out = append(out, ss)
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Neighbor.Address.Less(out[j].Neighbor.Address) })
	return out, err
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

// logAdapter sends GoBGP's logs to slog, one level down: GoBGP is chatty.
type logAdapter struct{ l *slog.Logger }

func (a *logAdapter) attrs(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		out = append(out, k, v)
	}
	return out
}
func (a *logAdapter) Panic(msg string, f gobgplog.Fields) { a.l.Error(msg, a.attrs(f)...) }
func (a *logAdapter) Fatal(msg string, f gobgplog.Fields) { a.l.Error(msg, a.attrs(f)...) }
func (a *logAdapter) Error(msg string, f gobgplog.Fields) { a.l.Warn(msg, a.attrs(f)...) }
func (a *logAdapter) Warn(msg string, f gobgplog.Fields)  { a.l.Info(msg, a.attrs(f)...) }
func (a *logAdapter) Info(msg string, f gobgplog.Fields)  { a.l.Debug(msg, a.attrs(f)...) }
func (a *logAdapter) Debug(string, gobgplog.Fields)       {}
func (a *logAdapter) SetLevel(gobgplog.LogLevel)          {}
func (a *logAdapter) GetLevel() gobgplog.LogLevel         { return gobgplog.InfoLevel }

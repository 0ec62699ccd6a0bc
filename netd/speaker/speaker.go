// Package speaker is netd's BGP speaker: an embedded GoBGP server that
// announces this node's block, peers with the other nodes (full mesh or
// through route reflectors) and with external routers (BIRD, FRR), and
// reports the paths it learned and its sessions. It does not touch the
// kernel, and it does not judge the paths: the bgp backend decides which
// become kernel routes (netd/backend/bgp).
//
// Policy (policy.go): only prefixes inside the cluster CIDR are accepted
// (unless AcceptForeign) and sent to the other nodes; external routers
// are sent only what SetExport says (this node's block, or every block on
// the cluster's edge), so a node is never a transit between two routers.
//
// Graceful restart (RFC 4724, with RFC 8538's notification handling):
// peers keep this node's routes while it restarts. A restart is seen by
// the peers as the TCP connection closing with no NOTIFICATION, which is
// what happens when netd exits (SIGTERM or kill -9): Stop, which sends a
// Cease, is for a speaker that goes away for good. A speaker started with
// Config.Restarted tells its peers that forwarding was preserved.
//
// Families (family.go): a session to an IPv4 neighbor carries IPv4
// unicast, a session to an IPv6 neighbor IPv6 unicast (MP-BGP, RFC
// 4760), as Calico peers BIRD per family: each family's next hop is then
// the node's own address of that family, which the kernel routes to
// directly. Prefix sets and policy statements exist once per family.
package speaker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// Config is the speaker's identity and policy.
type Config struct {
	RouterID   netip.Addr // an IPv4 address: the node's IPv4 address, else any unique one
	ASN        uint32     // default 64512
	ListenPort int32      // default 179; -1: no listener
	// ListenAddrs are the node's addresses, one per family it peers over
	// (default: RouterID). An announced prefix's next hop is the one of
	// its family.
	ListenAddrs []netip.Addr
	// ClusterCIDRs bound what is accepted from peers and sent to the
	// other nodes, one prefix per address family the speaker carries.
	ClusterCIDRs []netip.Prefix
	// AcceptForeign also accepts prefixes outside ClusterCIDRs.
	AcceptForeign bool
	// RestartTime is the graceful restart time announced to peers: how
	// long they keep this node's routes while netd restarts (RFC 4724).
	RestartTime time.Duration
	// HoldTime and KeepaliveInterval are proposed to every peer (RFC
	// 4271: the session uses the smaller hold time of the two OPENs).
	HoldTime          time.Duration // default 9s
	KeepaliveInterval time.Duration // default HoldTime/3
	// Restarted says a previous speaker's forwarding state is still in
	// place (netd found its routes in the kernel). The sessions to
	// external routers opened within RestartWindow set the Restart State
	// and Forwarding State bits, so that the routers keep this node's
	// routes until it has sent its own again, and it sends them once its
	// peers have sent theirs.
	Restarted     bool
	RestartWindow time.Duration // default 20s
	Logger        *slog.Logger
}

// Defaults.
const (
	DefaultASN       = 64512
	DefaultPort      = 179
	DefaultHoldTime  = 9 * time.Second
	defaultRestart   = 120 * time.Second
	defaultWindow    = 20 * time.Second
	selectionDefer   = 10 * time.Second // the most a restarted speaker waits for its peers' End-of-RIB
	connectRetry     = 1                // seconds; GoBGP's minimum
	idleHoldAfterTry = 1                // seconds a reset session stays idle; GoBGP's minimum
)

// Speaker is a running BGP speaker.
type Speaker struct {
	cfg     Config
	srv     *server.BgpServer
	log     *slog.Logger
	changed chan struct{} // signalled (without blocking) on any table or peer change
	started time.Time
	accept  chan<- *net.TCPConn // GoBGP's accepted connections (dial.go); nil: GoBGP dials alone

	mu        sync.Mutex // guards the fields below; held across the GoBGP calls that change them
	neighbors map[netip.Addr]Neighbor
	added     map[netip.Addr]time.Time // when each neighbor was configured
	announced map[netip.Prefix]bool
	exported  map[netip.Prefix]bool // sent to external routers (SetExport)

	nodesMu sync.Mutex // guards nodes; never held across a GoBGP call
	nodes   map[netip.Addr]*nodeSession
}

// Start runs a speaker until Stop is called (or the process exits).
func Start(ctx context.Context, cfg Config) (*Speaker, error) {
	if cfg.ASN == 0 {
		cfg.ASN = DefaultASN
	}
	if cfg.ListenPort == 0 {
		cfg.ListenPort = DefaultPort
	}
	if len(cfg.ListenAddrs) == 0 {
		cfg.ListenAddrs = []netip.Addr{cfg.RouterID}
	}
	if cfg.RestartTime == 0 {
		cfg.RestartTime = defaultRestart
	}
	if cfg.HoldTime == 0 {
		cfg.HoldTime = DefaultHoldTime
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = cfg.HoldTime / 3
	}
	if cfg.RestartWindow == 0 {
		cfg.RestartWindow = defaultWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Speaker{cfg: cfg, log: cfg.Logger.With("component", "bgp"), changed: make(chan struct{}, 1), started: time.Now(),
		neighbors: map[netip.Addr]Neighbor{}, added: map[netip.Addr]time.Time{},
		announced: map[netip.Prefix]bool{}, exported: map[netip.Prefix]bool{}, nodes: map[netip.Addr]*nodeSession{}}
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
	s.accept = acceptQueue(s.srv)
	if err := s.installPolicy(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	err = s.srv.WatchEvent(ctx, &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}, func(r *api.WatchEventResponse) {
		if p := r.GetPeer(); p != nil && p.Type == api.WatchEventResponse_PeerEvent_STATE {
			s.peerState(p.Peer)
		}
		s.signal()
	})
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("watching BGP events: %w", err)
	}
	if cfg.Restarted {
		go s.keepRestarting()
	}
	return s, nil
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

// Changes is signalled whenever a session or a best path changes.
func (s *Speaker) Changes() <-chan struct{} { return s.changed }

func (s *Speaker) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Stop ends every session with a Cease (peers drop this node's routes at
// once) and the server: for a speaker that is not coming back. A netd
// that restarts does not call it; its sessions close with the process.
func (s *Speaker) Stop() { s.srv.Stop() }

// restarting reports whether sessions opened now are part of this
// speaker's graceful restart.
func (s *Speaker) restarting() bool {
	return s.cfg.Restarted && time.Since(s.started) < s.cfg.RestartWindow
}

// peerState logs a session's state change and, for a session to
// another node: when it has just left its idle hold, arms the next one
// (see shortenIdleHold) and, on the side that dials, opens it (dial.go);
// when it has just dropped with GoBGP's 5s hold, restarts the hold at 1s
// (restartIdleHold).
func (s *Speaker) peerState(p *api.Peer) {
	addr, _ := netip.ParseAddr(p.GetState().GetNeighborAddress())
	state := p.GetState().GetSessionState()
	s.log.Info("BGP session", "peer", addr, "state", stateName(state))
	s.nodesMu.Lock()
	ns := s.nodes[addr]
	var was nodeSession
	if ns != nil {
		was = *ns
		ns.state = state
		ns.short = ns.short && state != api.PeerState_ACTIVE // the hold that ends now was the one armed
	}
	s.nodesMu.Unlock()
	switch {
	case ns == nil: // a router, or a neighbor just removed
	case state == api.PeerState_ACTIVE:
		go func() {
			// In this order: the reset's Cease must be queued before the
			// session can be established, see shortenIdleHold.
			s.shortenIdleHold(ns)
			s.dial(ns)
		}()
	case state == api.PeerState_IDLE && was.state == api.PeerState_ESTABLISHED && !was.short:
		go s.restartIdleHold(addr)
	}
}

// nodeSession is a session to another node as the speaker's event
// handling and dialing see it. They have their own lock (Speaker.nodesMu):
// mu is held across GoBGP calls, which a busy GoBGP makes slow (0.5s seen
// with 50 nodes on 2 cores), and a session must not wait for those to be
// opened.
type nodeSession struct {
	n       Neighbor
	state   api.PeerState_SessionState // GoBGP's last event
	short   bool                       // its next idle hold is 1s (shortenIdleHold)
	dialing bool                       // dial runs for it
}

// setNode starts (n valid) or stops tracking the session to addr.
func (s *Speaker) setNode(addr netip.Addr, n *Neighbor) {
	s.nodesMu.Lock()
	defer s.nodesMu.Unlock()
	if n == nil {
		delete(s.nodes, addr)
		return
	}
	s.nodes[addr] = &nodeSession{n: *n}
}

// shortenIdleHold makes the next idle hold of the session to addr 1s
// instead of GoBGP's fixed 5s. When a node restarts, its peers see the
// session drop and hold it idle, closing every connection attempt
// meanwhile, and the restarted node that tried is then held idle for 5s
// too: 6-9s before the session is back. GoBGP shortens the hold only
// after an explicit reset (IdleHoldTimeAfterReset), and a hold it has
// entered keeps its length, so the reset must come before the session
// drops: when it has just become active. ResetPeer also queues a Cease
// for the session, which GoBGP discards at the session's next state
// change unless the session is established (before that, no state sends
// it), so it is only done when it is not. Since nodes dial at once
// (dial.go), the session may be opening already when this runs: it is
// done then too. Should it be established already (the other node
// dialed before this ran), its hold stays GoBGP's and restartIdleHold
// shortens it when it drops. (Should the session get established
// between the two calls, the Cease resets it once; between nodes the
// notification is a graceful restart, RFC 8538, and no route is lost.)
func (s *Speaker) shortenIdleHold(ns *nodeSession) {
	addr := ns.n.Address
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	established := true
	s.srv.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		established = p.GetState().GetSessionState() == api.PeerState_ESTABLISHED
	})
	if established {
		return
	}
	if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String()}); err != nil {
		s.log.Debug("shortening the idle hold", "peer", addr, "err", err)
		return
	}
	s.nodesMu.Lock()
	if ns.state != api.PeerState_IDLE { // else it dropped meanwhile, with the hold armed before
		ns.short = true
	}
	s.nodesMu.Unlock()
}

// restartIdleHold restarts the idle hold of the session to addr, which
// has just dropped with GoBGP's 5s hold, at 1s: the reset makes the next
// hold 1s (its Cease is discarded: the session is idle), and GoBGP
// restarts a running hold, at the new length, when the neighbor is
// enabled again after being disabled (which, while idle, does nothing
// else). GoBGP drops an admin-state change while the previous one is
// still pending, so each change is waited for; the neighbor is enabled
// until it is, or until it is no longer configured.
func (s *Speaker) restartIdleHold(addr netip.Addr) {
	ctx := context.Background()
	a := addr.String()
	if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: a}); err != nil {
		s.log.Debug("restarting the idle hold", "peer", addr, "err", err)
		return
	}
	if err := s.srv.DisablePeer(ctx, &api.DisablePeerRequest{Address: a}); err != nil {
		s.log.Debug("restarting the idle hold", "peer", addr, "err", err)
		return
	}
	s.awaitAdmin(addr, api.PeerState_DOWN)
	for {
		if err := s.srv.EnablePeer(ctx, &api.EnablePeerRequest{Address: a}); err != nil {
			return // no longer configured
		}
		if s.awaitAdmin(addr, api.PeerState_UP) {
			return
		}
		s.log.Debug("enabling the neighbor again", "peer", addr)
	}
}

// awaitAdmin waits up to 200ms for GoBGP's session to addr to take the
// admin state want.
func (s *Speaker) awaitAdmin(addr netip.Addr, want api.PeerState_AdminState) bool {
	for range 40 {
		is := false
		s.srv.ListPeer(context.Background(), &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
			is = p.GetState().GetAdminState() == want
		})
		if is {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// keepRestarting keeps each router session that is not up yet part of
// the restart, for the restart window. GoBGP ends a restart for every
// session at once, as soon as the sessions that are up have sent their
// End-of-RIB, and counts a session that is not up as done: a router
// whose session comes up later (the second family's session to the same
// router, or a second router) would be told that forwarding was not
// preserved and flush this node's routes (RFC 4724 4.2). A session GoBGP
// is told about afresh restarts on its own, so such a session is
// configured again, which costs nothing while it is down. When the
// window ends, a router session still down is configured again without
// the restart.
func (s *Speaker) keepRestarting() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		restarting := s.restarting()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var wrong []netip.Addr
		err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			switch p.GetState().GetSessionState() {
			case api.PeerState_IDLE, api.PeerState_CONNECT, api.PeerState_ACTIVE:
				if p.GetGracefulRestart().GetLocalRestarting() != restarting {
					wrong = append(wrong, addr)
				}
			}
		})
		for _, addr := range wrong {
			s.reconfigure(ctx, addr)
		}
		cancel()
		if err != nil || !restarting { // stopped, or the window is over
			return
		}
	}
}

// reconfigure configures the router session to addr again (down: no
// notification is sent), so that it opens as part of the restart or not,
// as s.restarting says.
func (s *Speaker) reconfigure(ctx context.Context, addr netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.neighbors[addr]
	if !ok || !n.External {
		return
	}
	if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		s.log.Debug("configuring a session again", "peer", addr, "err", err)
		return
	}
	if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peer(n)}); err != nil {
		delete(s.neighbors, addr) // SetNeighbors adds it back
		delete(s.added, addr)
		s.log.Warn("configuring a session again", "peer", addr, "err", err)
		return
	}
	s.log.Info("BGP session configured again, not up yet", "peer", addr, "restarting", s.restarting())
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

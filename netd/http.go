package netd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
)

// Status is what /status returns and `netd status` prints.
type Status struct {
	Node          string    `json:"node"`
	NodeIP        string    `json:"nodeIP"`
	NodeIPv6      string    `json:"nodeIPv6,omitempty"`
	Iface         string    `json:"iface"`
	Network       string    `json:"network"`
	Mode          string    `json:"mode"`
	Datapath      string    `json:"datapath"` // "iptables" or "ebpf"
	CIDR          string    `json:"cidr"`
	CIDRv6        string    `json:"cidrV6,omitempty"`
	Subnet        string    `json:"subnet"`
	SubnetV6      string    `json:"subnetV6,omitempty"`
	MTU           int       `json:"mtu"`
	LeaseExpires  time.Time `json:"leaseExpires"`
	EtcdEndpoints []string  `json:"etcdEndpoints"`
	EtcdUp        bool      `json:"etcdUp"`
	// EtcdDownSince is when etcd became unreachable (degraded).
	EtcdDownSince time.Time    `json:"etcdDownSince,omitzero"`
	Peers         []PeerStatus `json:"peers"`
	// Rejected are keys in etcd ignored as leases, and why.
	Rejected []RejectedLease `json:"rejected,omitempty"`
	// KernelMatches: comparing the kernel (with the eBPF datapath, its
	// maps and programs too) with the leases right now found no
	// difference; Pending lists the differences otherwise.
	KernelMatches bool      `json:"kernelMatches"`
	Pending       []string  `json:"pending,omitempty"`
	LastReconcile time.Time `json:"lastReconcile"`
	LastError     string    `json:"lastError,omitempty"`
	// BGP sessions (bgp mode), each with its problem if it has one.
	BGP []backend.Session `json:"bgp,omitempty"`
	// Refused are routes peers offered that are not installed, and why.
	Refused []string `json:"refused,omitempty"`
	// Problems not about one node (a BGP peer's, the speaker's).
	Problems []string `json:"problems,omitempty"`
	// Starting says what netd waits for while it starts, e.g. "waiting
	// for etcd at ...: connection refused ..."; empty once it runs.
	Starting string `json:"starting,omitempty"`
	// Warnings are about an unsafe setup that works: etcd in plain HTTP.
	Warnings []string `json:"warnings,omitempty"`
}

// PeerStatus is one other node; Error says why it cannot be connected
// (Pending: not yet, it may still come up).
type PeerStatus struct {
	Name      string `json:"name"`
	NodeIP    string `json:"nodeIP"`
	NodeIPv6  string `json:"nodeIPv6,omitempty"`
	Subnet    string `json:"subnet"`
	SubnetV6  string `json:"subnetV6,omitempty"`
	VTEPMAC   string `json:"vtepMAC,omitempty"`
	VTEPMACv6 string `json:"vtepMACv6,omitempty"`
	Error     string `json:"error,omitempty"`
	Pending   bool   `json:"pending,omitempty"`
}

// RejectedLease is a key under the network's leases that netd ignores.
type RejectedLease struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}

// Healthy reports whether the status shows nothing a person must fix
// (or wait for: a session still coming up is not healthy yet).
func (s *Status) Healthy() bool {
	if s.Starting != "" || !s.KernelMatches || s.LastError != "" || !s.EtcdUp || len(s.Rejected) > 0 || len(s.Refused) > 0 || len(s.Problems) > 0 {
		return false
	}
	for _, p := range s.Peers {
		if p.Error != "" {
			return false
		}
	}
	for _, b := range s.BGP {
		if b.Problem != "" {
			return false
		}
	}
	return true
}

// listen binds --metrics-address early, so that a port in use stops netd
// before it leases anything; nil when the address is empty.
func (d *daemon) listen() (net.Listener, error) {
	if d.cfg.MetricsAddr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-address %s: %w", d.cfg.MetricsAddr, err)
	}
	return l, nil
}

// serveHTTP serves /metrics, /healthz and /status on l.
func (d *daemon) serveHTTP(l net.Listener) (stop func()) {
	if l == nil {
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s := d.startingStatus(); s != nil {
			http.Error(w, "starting: "+s.Starting, http.StatusServiceUnavailable)
			return
		}
		self, expires := d.keeper.lease()
		subnet := self.Key()
		_, down := d.health.get()
		now := time.Now()
		session := d.sessionDown()
		switch {
		case !subnet.IsValid() || now.After(expires):
			http.Error(w, "no valid lease: is etcd reachable?", http.StatusServiceUnavailable)
		case !down.IsZero():
			// Degraded, not dead: existing containers keep their
			// routes; no new lease changes are seen until etcd is back.
			http.Error(w, fmt.Sprintf("degraded: etcd unreachable for %s; the datapath keeps forwarding on the last known leases; lease %s valid for %s",
				now.Sub(down).Round(time.Second), subnet, expires.Sub(now).Round(time.Second)), http.StatusServiceUnavailable)
		case session != "":
			http.Error(w, "degraded: "+session, http.StatusServiceUnavailable)
		default:
			fmt.Fprintf(w, "ok %s\n", strings.Join(prefixes(self.Subnets()), " "))
		}
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server", "err", err)
		}
	}()
	d.log.Info("serving /metrics, /healthz and /status", "address", l.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}
}

// sessionDown is the first routing session the last reconcile found
// down (past coming up) or silent, with what to check; "" if none.
func (d *daemon) sessionDown() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.last.Sessions {
		if s.Problem != "" && !s.Pending {
			return s.Problem
		}
	}
	return ""
}

// status compares the kernel with the leases now (without changing
// anything: Desired only computes, and the routing protocol's apply step
// is not run) and reports that with the lease and the peers.
func (d *daemon) status() *Status {
	if s := d.startingStatus(); s != nil {
		return s
	}
	self, expires := d.keeper.lease()
	peers, problems := d.peers.current()
	d.reconcileMu.Lock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	in, readErr := d.input(ctx, self, peers)
	cancel()
	var pending []string
	var sessions []backend.Session
	if readErr == nil {
		want, more := d.nw.Desired(in)
		problems = append(problems, more...)
		for _, c := range backend.Diff(in.Kernel, want) {
			pending = append(pending, c.What)
		}
		var fast []string
		fast, readErr = d.pendingFastpath(self, want)
		pending = append(pending, fast...)
		if readErr == nil {
			var guard []string
			guard, readErr = d.pendingGuard(in)
			pending = append(pending, guard...)
		}
		if sl, ok := d.nw.(backend.SessionLister); ok {
			sessions = sl.Sessions(in)
			d.m.observeSessions(sessions)
		}
	}
	d.reconcileMu.Unlock()
	up, down := d.health.get()
	vetted, rejected := d.peers.report()

	d.mu.Lock()
	defer d.mu.Unlock()
	problems = append(problems, d.last.Announced...)
	s := &Status{
		Node:          d.cfg.NodeName,
		NodeIP:        str(d.node.IP),
		Iface:         d.node.Link.Attrs().Name,
		Network:       d.network.Name,
		Mode:          d.network.Mode,
		Datapath:      cmp.Or(d.network.Datapath, conf.DatapathIptables),
		NodeIPv6:      str(d.node.IPv6),
		CIDR:          str(d.network.CIDR),
		CIDRv6:        str(d.network.CIDRv6),
		Subnet:        str(self.Subnet),
		SubnetV6:      str(self.SubnetV6),
		MTU:           d.nw.MTU(),
		LeaseExpires:  expires.UTC(),
		EtcdEndpoints: d.endpoints,
		EtcdUp:        up,
		EtcdDownSince: down.UTC(),
		KernelMatches: readErr == nil && len(pending) == 0,
		LastReconcile: d.last.At.UTC(),
		BGP:           sessions,
		Warnings:      etcdWarnings(d.cfg, d.endpoints),
	}
	if d.last.Err != nil {
		s.LastError = d.last.Err.Error()
	}
	if readErr != nil {
		s.Pending = []string{"cannot read the kernel, the eBPF datapath, the VTEP guard or the routing protocol: " + readErr.Error()}
	}
	s.Pending = append(s.Pending, pending...)
	why := map[string]backend.Problem{}
	for _, p := range problems {
		why[p.Peer] = p
	}
	for _, l := range vetted {
		ps := PeerStatus{Name: l.NodeName, NodeIP: str(l.NodeIP), NodeIPv6: str(l.NodeIPv6),
			Subnet: str(l.Subnet), SubnetV6: str(l.SubnetV6), VTEPMAC: l.VTEPMAC.String(), VTEPMACv6: l.VTEPMACv6.String()}
		if p, ok := why[l.NodeName]; ok {
			ps.Error, ps.Pending = p.Err.Error(), p.Kind == backend.Pending
			delete(why, l.NodeName)
		}
		s.Peers = append(s.Peers, ps)
	}
	for _, b := range sessions {
		delete(why, b.Peer) // on its session's line
	}
	for _, p := range problems {
		if _, ok := why[p.Peer]; !ok {
			continue // shown on its node's or session's line
		}
		delete(why, p.Peer)
		if p.Kind == backend.Refused {
			s.Refused = append(s.Refused, p.Peer+": "+p.Err.Error())
		} else {
			s.Problems = append(s.Problems, p.Peer+": "+p.Err.Error())
		}
	}
	for _, r := range rejected {
		s.Rejected = append(s.Rejected, RejectedLease{Key: short(r.Key), Error: short(r.Err.Error())})
	}
	return s
}

// str is an address or prefix for status: "" when unset (netip writes
// "invalid IP" or "invalid Prefix").
func str[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

func prefixes(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

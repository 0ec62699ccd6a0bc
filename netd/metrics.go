package netd

import (
	"github.com/berthnet/berth/netd/backend"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are netd's Prometheus metrics, all labelled with the network.
type metrics struct {
	reg *prometheus.Registry

	leases            prometheus.Gauge
	peers             prometheus.Gauge
	peerErrors        prometheus.Gauge
	etcdUp            prometheus.Gauge
	leaseExpiry       prometheus.Gauge
	kernelInSync      prometheus.Gauge
	reconcileDuration *prometheus.HistogramVec
	reconcileErrors   prometheus.Counter
	kernelChanges     prometheus.Counter
	resyncs           prometheus.Counter
	leaseAcquisitions prometheus.Counter
	leasesRejected    prometheus.Gauge
	leaseRejections   prometheus.Counter
	leaseReclaims     prometheus.Counter
	rewinds           prometheus.Counter
	bgpSessionUp      *prometheus.GaugeVec
	bgpReceived       *prometheus.GaugeVec
	bgpAccepted       *prometheus.GaugeVec
	bgpAdvertised     *prometheus.GaugeVec
	routesRefused     prometheus.Gauge
	routeRefusals     prometheus.Counter
}

func newMetrics(network string) *metrics {
	labels := prometheus.Labels{"network": network}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "netd", Name: name, Help: help, ConstLabels: labels})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "netd", Name: name, Help: help, ConstLabels: labels})
	}
	m := &metrics{
		reg:          prometheus.NewRegistry(),
		leases:       gauge("leases", "Subnet leases in etcd, this node's included."),
		peers:        gauge("peers", "Other nodes this node connects to."),
		peerErrors:   gauge("peer_errors", "Peers the backend cannot connect (e.g. hostgw peers on another L2 segment)."),
		etcdUp:       gauge("etcd_up", "1 when the last etcd request succeeded."),
		leaseExpiry:  gauge("lease_expiry_timestamp_seconds", "When this node's lease expires unless renewed (Unix time)."),
		kernelInSync: gauge("kernel_in_sync", "1 when the last reconcile found or left the kernel as desired."),
		reconcileDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "netd", Name: "reconcile_duration_seconds",
			Help: `Time to compare the kernel with the leases and fix it; pass="event" right after a change (against netd's cache of the kernel), "full" on the resync timer (reading the kernel again).`, ConstLabels: labels,
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"pass"}),
		reconcileErrors:   counter("reconcile_errors_total", "Reconciles that failed to read or change the kernel."),
		kernelChanges:     counter("kernel_changes_total", "Routes, neighbours, FDB entries and addresses added, replaced or removed."),
		resyncs:           counter("etcd_resyncs_total", "Full re-reads of the leases after the watch fell behind a compaction."),
		leaseAcquisitions: counter("lease_acquisitions_total", "Times this node (re)acquired its subnet lease."),
		leasesRejected:    gauge("leases_rejected", "Keys under the network's leases in etcd that are ignored: malformed, outside the network, or clashing with another node's (see the log and /status)."),
		leaseRejections:   counter("lease_rejections_total", "Times a key in etcd was found unusable as a lease (each new key or new reason counts once)."),
		leaseReclaims:     counter("lease_reclaims_total", "Times this node wrote its lease back after another writer replaced or deleted it."),
		rewinds:           counter("etcd_rewinds_total", "Times etcd's revision went back (it lost its data) and the leases were written again."),
		routesRefused:     gauge("routes_refused", "Routes peers offer that netd does not install (bgp: a block no node leases, a more specific of one, a next hop that does not lead to its node; see the log and /status)."),
		routeRefusals:     counter("route_refusals_total", "Times a route was found refused (each new route or new reason counts once)."),
	}
	vec := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "netd", Name: name, Help: help, ConstLabels: labels}, []string{"peer", "peer_name"})
	}
	m.bgpSessionUp = vec("bgp_session_up", "bgp mode: 1 when the BGP session to the peer is established.")
	m.bgpReceived = vec("bgp_prefixes_received", "bgp mode: prefixes the peer announces that pass the import policy (as FRR counts them: no End-of-RIB marker, no path looping through this node's AS, nothing outside the cluster CIDR).")
	m.bgpAccepted = vec("bgp_prefixes_accepted", "bgp mode: prefixes from the peer that netd installs.")
	m.bgpAdvertised = vec("bgp_prefixes_advertised", "bgp mode: prefixes advertised to the peer.")
	m.reg.MustRegister(m.bgpSessionUp, m.bgpReceived, m.bgpAccepted, m.bgpAdvertised)
	m.reg.MustRegister(m.leases, m.peers, m.peerErrors, m.etcdUp, m.leaseExpiry, m.kernelInSync,
		m.reconcileDuration, m.reconcileErrors, m.kernelChanges, m.resyncs, m.leaseAcquisitions,
		m.leasesRejected, m.leaseRejections, m.leaseReclaims, m.rewinds, m.routesRefused, m.routeRefusals,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeSessions publishes the BGP sessions; peers that went away vanish.
func (m *metrics) observeSessions(ss []backend.Session) {
	m.bgpSessionUp.Reset()
	m.bgpReceived.Reset()
	m.bgpAccepted.Reset()
	m.bgpAdvertised.Reset()
	for _, s := range ss {
		up := 0.0
		if s.Established {
			up = 1
		}
		m.bgpSessionUp.WithLabelValues(s.Peer, s.Name).Set(up)
		m.bgpReceived.WithLabelValues(s.Peer, s.Name).Set(float64(s.Received))
		m.bgpAccepted.WithLabelValues(s.Peer, s.Name).Set(float64(s.Accepted))
		m.bgpAdvertised.WithLabelValues(s.Peer, s.Name).Set(float64(s.Advertised))
	}
}

// observeProblems publishes how many peers cannot be connected and how
// many routes are refused.
func (m *metrics) observeProblems(problems []backend.Problem) {
	var peers, refused int
	for _, p := range problems {
		if p.Kind == backend.Refused {
			refused++
		} else {
			peers++
		}
	}
	m.peerErrors.Set(float64(peers))
	m.routesRefused.Set(float64(refused))
}

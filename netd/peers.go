package netd

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/cluster"
)

// peerView is what netd believes about the other nodes: the leases it
// read from the datastore, vetted (cluster.Vet) so that a misbehaving
// writer's key is ignored, logged and counted instead of becoming a
// route, and kept across an etcd that lost its data until the nodes
// wrote theirs again.
type peerView struct {
	network *conf.Network
	ttl     time.Duration // how long a silent node's lease lives
	log     *slog.Logger
	m       *metrics
	ready   chan struct{} // closed once the first set of leases arrived

	mu         sync.Mutex         // guards the fields below
	leases     []cluster.Lease    // in the datastore, as last read
	unreadable []cluster.Rejected // keys in the datastore that are no lease
	held       []cluster.Lease    // read before etcd lost its data; see set
	heldUntil  time.Time
	peers      []cluster.Lease    // the other nodes, vetted
	rejected   []cluster.Rejected // leases ignored, and why
}

func newPeerView(network *conf.Network, ttl time.Duration, log *slog.Logger, m *metrics) *peerView {
	return &peerView{network: network, ttl: ttl, log: log, m: m, ready: make(chan struct{})}
}

// set takes the leases after a change in the datastore. Call vet next.
func (v *peerView) set(c cluster.Change) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if c.Rewound {
		// etcd lost its data: the leases it has now are only the ones
		// written since. Keep routing to the others, as if their keys
		// were still there, until they write them again or for a TTL,
		// the longest a silent node's key would have lived.
		v.held = slices.Clone(v.leases)
		v.heldUntil = time.Now().Add(v.ttl)
	}
	v.leases = c.Leases
	v.unreadable = c.Rejected
	v.m.leases.Set(float64(len(c.Leases)))
	select {
	case <-v.ready:
	default:
		close(v.ready)
	}
}

// vet recomputes the peers from the leases and this node's own lease
// self, and logs each rejected key when it appears or its reason
// changes. It reports whether self's key in the datastore is not as this
// node wrote it (replaced, unreadable or gone), so it must be written
// back.
func (v *peerView) vet(self cluster.Lease) (reclaim bool) {
	v.mu.Lock()
	leases := v.leases
	if len(v.held) > 0 && time.Now().Before(v.heldUntil) {
		leases = withHeld(leases, v.held)
	} else {
		v.held = nil
	}
	peers, rejected := cluster.Vet(v.network, self, leases)
	rejected = append(slices.Clone(v.unreadable), rejected...)
	old := v.rejected
	v.peers, v.rejected = peers, rejected
	if self.Key().IsValid() {
		i := slices.IndexFunc(v.leases, func(l cluster.Lease) bool { return l.Key() == self.Key() })
		reclaim = i < 0 || !v.leases[i].SameRecord(self)
	}
	v.mu.Unlock()

	seen := map[string]string{}
	for _, r := range old {
		seen[r.Key] = r.Err.Error()
	}
	for _, r := range rejected {
		if seen[r.Key] != r.Err.Error() {
			v.log.Error("ignoring a lease in etcd: acting on it would break or hijack traffic", "key", short(r.Key), "err", short(r.Err.Error()))
			v.m.leaseRejections.Inc()
		}
		delete(seen, r.Key)
	}
	for key := range seen {
		v.log.Info("rejected lease key fixed or gone", "key", short(key))
	}
	v.m.leasesRejected.Set(float64(len(rejected)))
	return reclaim
}

// current returns the peers the backend connects, and the ones it
// cannot use at all with why.
func (v *peerView) current() (peers []cluster.Lease, problems []backend.Problem) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, l := range v.peers {
		if l.Mode != v.network.Mode {
			problems = append(problems, backend.Problem{Peer: l.NodeName, Err: fmt.Errorf("its lease says mode %s, the network runs %s", l.Mode, v.network.Mode)})
			continue
		}
		peers = append(peers, l)
	}
	return peers, problems
}

// report returns every vetted peer (whatever its mode) and the rejected
// keys, for status.
func (v *peerView) report() (peers []cluster.Lease, rejected []cluster.Rejected) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.peers, v.rejected
}

// withHeld adds to leases the held ones whose subnet and node nobody
// holds in etcd now.
func withHeld(leases, held []cluster.Lease) []cluster.Lease {
	subnets := map[netip.Prefix]bool{}
	names := map[string]bool{}
	for _, l := range leases {
		subnets[l.Key()], names[l.NodeName] = true, true
	}
	out := slices.Clone(leases)
	for _, l := range held {
		if !subnets[l.Key()] && !names[l.NodeName] {
			out = append(out, l)
		}
	}
	return out
}

// short cuts s for a log line: keys and values come from etcd, where
// anyone with write access may have put a megabyte.
func short(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + "...(" + strconv.Itoa(len(s)) + " bytes)"
}

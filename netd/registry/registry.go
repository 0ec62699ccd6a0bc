// Package registry is a cluster network's state in etcd: its config and
// the nodes' subnet leases.
//
//	<prefix>/networks/<name>/config            conf.Network (JSON), written once
//	<prefix>/networks/<name>/leases/<subnet>   Record (JSON), attached to the
//	                                           node's etcd lease (TTL, kept alive)
//
// <subnet> is written "10.244.3.0-24" so that it is one key segment.
// Every write that could race another node is a transaction that only
// succeeds if the key is as the writer last saw it, so two nodes never
// hold the same subnet.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
)

// DefaultPrefix is the default root of berth's keys.
const DefaultPrefix = "/berth/v1"

// Errors a caller acts on.
var (
	// ErrConflict: the network's stored config disagrees with what this
	// netd was given.
	ErrConflict = errors.New("network config conflict")
	// ErrExhausted: every subnet of the network is leased.
	ErrExhausted = errors.New("no free subnet")
	// ErrNotFound: no such network or lease.
	ErrNotFound = errors.New("not found")
)

// Record is what a node publishes about itself with its subnet.
type Record struct {
	NodeName string `json:"nodeName"`
	// NodeID is kept in the node's state and never changes: another node
	// started with the same name has another (see identity.go). Empty in
	// leases of netds from before node IDs.
	NodeID  string     `json:"nodeID,omitempty"`
	NodeIP  netip.Addr `json:"nodeIP"`
	Mode    string     `json:"mode"`
	VTEPMAC string     `json:"vtepMAC,omitempty"` // vxlan
	VNI     int        `json:"vni,omitempty"`     // vxlan
	ASN     uint32     `json:"asn,omitempty"`     // bgp
	// RouteReflector: this node reflects BGP routes to the others (bgp).
	RouteReflector bool `json:"routeReflector,omitempty"`
}

// Lease is a subnet and the node holding it.
type Lease struct {
	Subnet netip.Prefix
	Record
	// ID is the etcd lease the key is attached to; the key disappears
	// when it expires.
	ID clientv3.LeaseID
	// ModRevision of the key, for compare-and-swap.
	ModRevision int64
	// CreateRevision of the key: the older of two conflicting leases
	// wins (see Vet). Moving a key to a new etcd lease keeps it.
	CreateRevision int64
	// Origin says how Acquire chose the subnet.
	Origin Origin
}

// Origin is how Acquire chose a subnet.
type Origin string

const (
	OriginKept     Origin = "kept"     // still held under the node's name
	OriginPrevious Origin = "previous" // the node's local copy, still free
	OriginNew      Origin = "new"      // a free subnet
)

// Client is the part of the etcd client the registry uses. A
// *clientv3.Client is one; tests wrap one to inject faults.
type Client interface {
	clientv3.KV
	clientv3.Lease
	clientv3.Watcher
}

// Registry reads and writes one network's keys.
type Registry struct {
	cli    Client
	prefix string // <prefix>/networks/<name>/
	// Log gets what Follow recovers from on its own (broken watches).
	Log *slog.Logger
	// RewindCheck is how often Follow checks that etcd's revision has
	// not gone back (DefaultRewindCheck when zero).
	RewindCheck time.Duration
}

// New returns the registry of network under prefix (DefaultPrefix when
// empty).
func New(cli Client, prefix, network string) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Registry{cli: cli, prefix: strings.TrimSuffix(prefix, "/") + "/networks/" + network + "/", Log: slog.Default()}
}

func (r *Registry) configKey() string { return r.prefix + "config" }

// LeasesPrefix is the etcd key prefix of the network's leases.
func (r *Registry) LeasesPrefix() string { return r.prefix + "leases/" }

func (r *Registry) leaseKey(subnet netip.Prefix) string {
	return r.LeasesPrefix() + keyOf(subnet)
}

// MaxValueSize bounds a lease value: a record is about 150 bytes, so a
// much larger one comes from a misbehaving writer and is not even parsed.
const MaxValueSize = 4 << 10

// Rejected is a key under the leases prefix that is not a usable lease:
// it is ignored (no route, no peer) and reported.
type Rejected struct {
	// Key is the key below the leases prefix, e.g. "10.244.3.0-24".
	Key string
	// Subnet is the subnet the key names, when it names one; Acquire
	// treats it as taken all the same.
	Subnet      netip.Prefix
	ModRevision int64
	Err         error
}

// keyOf is subnet's key below the leases prefix.
func keyOf(subnet netip.Prefix) string { return strings.Replace(subnet.String(), "/", "-", 1) }

// subnetOfKey parses the subnet a lease key names. Only the canonical
// spelling is accepted ("10.244.3.0-24"): two spellings of one subnet
// would be two keys, and compare-and-swap on one would not see the other.
func (r *Registry) subnetOfKey(key []byte) (netip.Prefix, error) {
	s := strings.TrimPrefix(string(key), r.LeasesPrefix())
	subnet, err := netip.ParsePrefix(strings.Replace(s, "-", "/", 1))
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("key does not name a subnet: %w", err)
	case !subnet.Addr().Is4():
		return netip.Prefix{}, fmt.Errorf("key names %s, not an IPv4 subnet", subnet)
	case subnet != subnet.Masked():
		return netip.Prefix{}, fmt.Errorf("key names %s, which has host bits set (%s)", subnet, subnet.Masked())
	case r.leaseKey(subnet) != string(key):
		return netip.Prefix{}, fmt.Errorf("key is not the canonical spelling %s", r.leaseKey(subnet))
	}
	return subnet, nil
}

// ParseLease decodes one key and value under LeasesPrefix (as a watch of
// it delivers them). It only checks the form; Vet checks the lease against
// the network and the other leases.
func (r *Registry) ParseLease(kv *mvccpb.KeyValue) (Lease, *Rejected) {
	key := strings.TrimPrefix(string(kv.Key), r.LeasesPrefix())
	subnet, err := r.subnetOfKey(kv.Key)
	if err != nil {
		return Lease{}, &Rejected{Key: key, ModRevision: kv.ModRevision, Err: err}
	}
	reject := func(err error) (Lease, *Rejected) {
		return Lease{}, &Rejected{Key: key, Subnet: subnet, ModRevision: kv.ModRevision, Err: err}
	}
	if len(kv.Value) > MaxValueSize {
		return reject(fmt.Errorf("value of %d bytes, more than the %d a lease may have", len(kv.Value), MaxValueSize))
	}
	l := Lease{Subnet: subnet, ID: clientv3.LeaseID(kv.Lease), ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision}
	if err := json.Unmarshal(kv.Value, &l.Record); err != nil {
		return reject(fmt.Errorf("value is not a lease record: %w", err))
	}
	return l, nil
}

// EnsureConfig returns the network's config. When there is none yet, it
// stores given with defaults filled in (only if still absent, so two
// first nodes agree on one). Otherwise it returns the stored config, or
// ErrConflict naming each field where given disagrees with it.
func (r *Registry) EnsureConfig(ctx context.Context, given conf.Network) (*conf.Network, error) {
	want := given.WithDefaults()
	if err := want.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(want)
	if err != nil {
		return nil, err
	}
	key := r.configKey()
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("storing network config at %s: %w", key, err)
	}
	if resp.Succeeded {
		return &want, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("network config at %s vanished while reading it; try again", key)
	}
	stored, err := conf.ParseNetwork(kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("network config at %s: %w", key, err)
	}
	if c := given.Conflicts(stored); len(c) > 0 {
		return nil, fmt.Errorf("%w: network %s in etcd (%s) differs from this netd's flags: %s; start netd with the network's values, or remove the flags to adopt them",
			ErrConflict, stored.Name, key, strings.Join(c, "; "))
	}
	return stored, nil
}

// Config reads the network's stored config.
func (r *Registry) Config(ctx context.Context) (*conf.Network, error) {
	key := r.configKey()
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading network config %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: no network config at %s", ErrNotFound, key)
	}
	n, err := conf.ParseNetwork(resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("network config at %s: %w", key, err)
	}
	return n, nil
}

// Snapshot is every lease of the network at one etcd revision.
type Snapshot struct {
	Leases []Lease // ordered by key
	// Rejected are the keys that could not be read as a lease (ordered
	// by key). One bad key never hides the others.
	Rejected []Rejected
	Revision int64
}

// List reads every lease.
func (r *Registry) List(ctx context.Context) (Snapshot, error) {
	resp, err := r.cli.Get(ctx, r.LeasesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return Snapshot{}, fmt.Errorf("listing leases under %s: %w", r.LeasesPrefix(), err)
	}
	s := Snapshot{Revision: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		l, bad := r.ParseLease(kv)
		if bad != nil {
			s.Rejected = append(s.Rejected, *bad)
			continue
		}
		s.Leases = append(s.Leases, l)
	}
	return s, nil
}

// Revision is etcd's current revision, read through the quorum. It only
// grows, unless etcd lost its data (restored from an empty data dir or
// an old backup): then it goes back, and a watch from a later revision
// would wait silently.
func (r *Registry) Revision(ctx context.Context) (int64, error) {
	resp, err := r.cli.Get(ctx, r.configKey(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("reading etcd's revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// Reclaim writes self's record back at self's key, attached to self's
// etcd lease, if the key is still as the caller saw it (modRev; 0 when
// the key is absent). It repairs the key when another writer replaced or
// deleted it while self's etcd lease is alive: no well-behaved node
// writes a key that exists. It fails when self's etcd lease is gone.
func (r *Registry) Reclaim(ctx context.Context, self *Lease, modRev int64) (bool, error) {
	value, err := json.Marshal(self.Record)
	if err != nil {
		return false, err
	}
	key := r.leaseKey(self.Subnet)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(self.ID))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("writing lease %s back: %w", key, err)
	}
	return resp.Succeeded, nil
}

// KeepAlive keeps the etcd lease id alive until ctx ends; the channel
// closes when that is no longer possible (the lease expired or ctx ended).
func (r *Registry) KeepAlive(ctx context.Context, id clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	ch, err := r.cli.KeepAlive(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("keeping etcd lease %x alive: %w", id, err)
	}
	return ch, nil
}

// Release gives up the subnet held by the node c claims for: it deletes
// the key and revokes its etcd lease, after checking the key still
// belongs to the node (its name and ID, see Claim.owns). It returns the
// released lease, ErrNotFound, or ErrNodeTaken when another node holds
// the name.
func (r *Registry) Release(ctx context.Context, c Claim) (*Lease, error) {
	snap, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, l := range snap.Leases {
		if l.NodeName != c.Record.NodeName {
			continue
		}
		if !c.owns(&l) {
			return nil, r.taken(ctx, &l)
		}
		key := r.leaseKey(l.Subnet)
		resp, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", l.ModRevision)).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			return nil, fmt.Errorf("deleting lease %s: %w", key, err)
		}
		if !resp.Succeeded {
			return nil, fmt.Errorf("lease %s changed while releasing it; try again", key)
		}
		if l.ID != clientv3.NoLease {
			// Stops a keepalive elsewhere from holding a lease without keys.
			if _, err := r.cli.Revoke(ctx, l.ID); err != nil && !isLeaseNotFound(err) {
				return &l, fmt.Errorf("revoking etcd lease %x of %s: %w", l.ID, key, err)
			}
		}
		return &l, nil
	}
	return nil, fmt.Errorf("%w: no lease of node %s under %s", ErrNotFound, c.Record.NodeName, r.LeasesPrefix())
}

func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound)
}

// ttlSeconds rounds a TTL up to whole seconds, as etcd counts them.
func ttlSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// Package registry is a cluster network's state in etcd: its config and
// the nodes' subnet leases.
//
//	<prefix>/networks/<name>/config            conf.Network (JSON), written once
//	<prefix>/networks/<name>/leases/<subnet>   cluster.Lease (JSON), attached to
//	                                           the node's etcd lease (TTL, kept alive)
//
// <subnet> is written "10.244.3.0-24" so that it is one key segment: the
// node's IPv4 subnet, or on an IPv6-only network its IPv6 subnet
// ("fd00:244:0:3::-64"). A dual-stack lease keeps the IPv4 key and
// carries its IPv6 subnet in the value (cluster.Lease), so netds from
// before dual-stack read it as the IPv4 lease they know.
// Every write that could race another node is a transaction that only
// succeeds if the key is as the writer last saw it, so two nodes never
// hold the same subnet.
//
// Registry is netd's cluster.Store on etcd and Holder its cluster.Holder.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/cluster"
)

// DefaultPrefix is the default root of berth's keys.
const DefaultPrefix = "/berth/v1"

// Errors a caller acts on.
var (
	// ErrConflict: the network's stored config disagrees with what this
	// netd was given.
	ErrConflict = cluster.ErrConflict
	// ErrExhausted: every subnet of the network is leased.
	ErrExhausted = errors.New("no free subnet")
	// ErrNotFound: no such network or lease.
	ErrNotFound = errors.New("not found")
)

// entry is a lease as etcd holds it.
type entry struct {
	cluster.Lease
	// id is the etcd lease the key is attached to; the key disappears
	// when it expires.
	id clientv3.LeaseID
	// modRev of the key, for compare-and-swap.
	modRev int64
}

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
	// not gone back, and that the network's config is still there
	// (DefaultRewindCheck when zero).
	RewindCheck time.Duration

	// config is the network's config as EnsureConfig last found or
	// stored it: Follow writes it back if the key is deleted.
	config atomic.Pointer[conf.Network]
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
	case subnet.Addr().Is4In6() || subnet.Addr().Zone() != "":
		return netip.Prefix{}, fmt.Errorf("key names %s, neither an IPv4 nor an IPv6 subnet", subnet)
	case subnet != subnet.Masked():
		return netip.Prefix{}, fmt.Errorf("key names %s, which has host bits set (%s)", subnet, subnet.Masked())
	case r.leaseKey(subnet) != string(key):
		return netip.Prefix{}, fmt.Errorf("key is not the canonical spelling %s", r.leaseKey(subnet))
	}
	return subnet, nil
}

// ParseLease decodes one key and value under LeasesPrefix (as a watch of
// it delivers them). It only checks the form; cluster.Vet checks the
// lease against the network and the other leases.
func (r *Registry) ParseLease(kv *mvccpb.KeyValue) (cluster.Lease, *cluster.Rejected) {
	e, bad := r.parse(kv)
	return e.Lease, bad
}

func (r *Registry) parse(kv *mvccpb.KeyValue) (entry, *cluster.Rejected) {
	key := strings.TrimPrefix(string(kv.Key), r.LeasesPrefix())
	subnet, err := r.subnetOfKey(kv.Key)
	if err != nil {
		return entry{}, &cluster.Rejected{Key: key, Err: err}
	}
	reject := func(err error) (entry, *cluster.Rejected) {
		return entry{}, &cluster.Rejected{Key: key, Subnet: subnet, Err: err}
	}
	if len(kv.Value) > MaxValueSize {
		return reject(fmt.Errorf("value of %d bytes, more than the %d a lease may have", len(kv.Value), MaxValueSize))
	}
	e := entry{id: clientv3.LeaseID(kv.Lease), modRev: kv.ModRevision}
	if err := json.Unmarshal(kv.Value, &e.Lease); err != nil {
		return reject(fmt.Errorf("value is not a lease record: %w", err))
	}
	e.Created = kv.CreateRevision
	if subnet.Addr().Is4() {
		e.Subnet = subnet
	} else {
		// An IPv6-only network's lease, named by its IPv6 subnet.
		if e.SubnetV6.IsValid() && e.SubnetV6 != subnet {
			return reject(fmt.Errorf("value says subnetV6 %s, the key names %s", e.SubnetV6, subnet))
		}
		e.SubnetV6 = subnet
	}
	return e, nil
}

// EnsureConfig returns the network's config. When there is none yet, it
// stores given with defaults filled in (only if still absent, so two
// first nodes agree on one). Otherwise it returns the stored config, or
// ErrConflict naming each field where given disagrees with it. Given an
// IPv6 network for a stored IPv4 network without one, it adds it (see
// conf.Network.WithIPv6Of): the network becomes dual-stack.
func (r *Registry) EnsureConfig(ctx context.Context, given conf.Network) (*conf.Network, error) {
	n, err := r.ensureConfig(ctx, given)
	if err == nil {
		r.config.Store(n)
	}
	return n, err
}

func (r *Registry) ensureConfig(ctx context.Context, given conf.Network) (*conf.Network, error) {
	want := given.WithDefaults()
	if err := want.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(want)
	if err != nil {
		return nil, err
	}
	key := r.configKey()
	for attempt := range maxAttempts {
		// Every node but the first finds the config: a read, not a write
		// (etcd writes wait for a disk sync). The first read is served by
		// the member netd reached, without a round through the quorum: a
		// linearizable one would also wait until that member applied every
		// write before it, such as the etcd lease a starting netd asks for
		// meanwhile (see Holder.Prepare). Adding IPv6 below is a
		// transaction that compares what was read: a stale read costs a
		// retry there. A member that lags answers with the config as it was
		// a moment before, as a read started a moment earlier would have;
		// the config changes only when an operator recreates the network.
		var opts []clientv3.OpOption
		if attempt == 0 {
			opts = append(opts, clientv3.WithSerializable())
		}
		got, err := r.cli.Get(ctx, key, opts...)
		if err != nil {
			return nil, fmt.Errorf("reading network config at %s: %w", key, err)
		}
		kvs := got.Kvs
		if len(kvs) == 0 {
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
			if kvs = resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 {
				continue // deleted meanwhile: store ours
			}
		}
		stored, err := conf.ParseNetwork(kvs[0].Value)
		if err != nil {
			return nil, fmt.Errorf("network config at %s: %w", key, err)
		}
		if c := given.Conflicts(stored); len(c) > 0 {
			return nil, fmt.Errorf("%w: network %s in etcd (%s) differs from this netd's flags: %s; start netd with the network's values, or remove the flags to adopt them",
				ErrConflict, stored.Name, key, strings.Join(c, "; "))
		}
		extended, ok := stored.WithIPv6Of(given)
		if !ok {
			return stored, nil
		}
		if err := extended.Validate(); err != nil {
			return nil, fmt.Errorf("adding IPv6 to network %s: %w", stored.Name, err)
		}
		ok, err = r.replaceConfig(ctx, kvs[0].ModRevision, &extended)
		if err != nil {
			return nil, err
		}
		if ok {
			r.Log.Info("added IPv6 to the network: it is dual-stack now", "network", stored.Name, "cidr", stored.CIDR, "cidrV6", extended.CIDRv6, "subnetLenV6", extended.SubnetLenV6)
			return &extended, nil
		}
		// Changed meanwhile (another netd added the same): read it again.
	}
	return nil, fmt.Errorf("network config at %s keeps changing while netd reads it; try again", key)
}

// replaceConfig writes n at the config key if it is still at modRev.
func (r *Registry) replaceConfig(ctx context.Context, modRev int64, n *conf.Network) (bool, error) {
	data, err := json.Marshal(n)
	if err != nil {
		return false, err
	}
	key := r.configKey()
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(data))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("updating network config at %s: %w", key, err)
	}
	return resp.Succeeded, nil
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

// List reads every lease.
func (r *Registry) List(ctx context.Context) (cluster.Snapshot, error) {
	entries, s, err := r.list(ctx)
	for _, e := range entries {
		s.Leases = append(s.Leases, e.Lease)
	}
	return s, err
}

// list reads every lease with its etcd metadata; the snapshot has the
// rejected keys and the revision.
func (r *Registry) list(ctx context.Context, opts ...clientv3.OpOption) ([]entry, cluster.Snapshot, error) {
	resp, err := r.cli.Get(ctx, r.LeasesPrefix(), append(opts, clientv3.WithPrefix())...)
	if err != nil {
		return nil, cluster.Snapshot{}, fmt.Errorf("listing leases under %s: %w", r.LeasesPrefix(), err)
	}
	entries, s := r.parseAll(resp.Kvs)
	s.Revision = resp.Header.Revision
	return entries, s, nil
}

// parseAll parses the lease keys kvs; the snapshot holds the rejected.
func (r *Registry) parseAll(kvs []*mvccpb.KeyValue) ([]entry, cluster.Snapshot) {
	var s cluster.Snapshot
	var entries []entry
	for _, kv := range kvs {
		e, bad := r.parse(kv)
		if bad != nil {
			s.Rejected = append(s.Rejected, *bad)
			continue
		}
		entries = append(entries, e)
	}
	return entries, s
}

// Ping reads nothing but the config key's count: whether etcd answers.
func (r *Registry) Ping(ctx context.Context) error {
	_, err := r.cli.Get(ctx, r.configKey(), clientv3.WithCountOnly())
	return err
}

// checkConfig returns etcd's current revision, read through the quorum,
// and writes the network's config back (as EnsureConfig settled on it)
// if its key is gone.
//
// The revision only grows, unless etcd lost its data (restored from an
// empty data dir or an old backup): then it goes back, and a watch from
// a later revision would wait silently.
//
// A config deleted by hand while nodes run would not come back until one
// restarts, and a node started meanwhile with other flags would store
// its own: a second network under the same name, whose nodes and the
// first ones each ignore the others' leases as outside their network.
// (Delete removes a network once no node holds a lease.)
func (r *Registry) checkConfig(ctx context.Context) (int64, error) {
	key := r.configKey()
	resp, err := r.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("reading etcd's revision: %w", err)
	}
	n := r.config.Load()
	if resp.Count > 0 || n == nil {
		return resp.Header.Revision, nil
	}
	data, err := json.Marshal(n)
	if err != nil {
		return resp.Header.Revision, err
	}
	put, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).
		Commit()
	if err != nil {
		return resp.Header.Revision, fmt.Errorf("writing the network config back at %s: %w", key, err)
	}
	if put.Succeeded {
		r.Log.Warn("the network's config was deleted from etcd while this node is in the network; wrote it back (to remove a network, stop its nodes and run `netd leave` on each, then delete it)", "key", key)
	}
	return resp.Header.Revision, nil
}

// Release gives up the subnet held by the node whose record is self: it
// deletes the key and revokes its etcd lease, after checking the key
// still belongs to the node (its name and ID, see cluster.Lease.Owns;
// previous is the subnet its lease file names). It returns the released
// lease, ErrNotFound, or cluster.ErrNodeTaken when another node holds the
// name.
func (r *Registry) Release(ctx context.Context, self cluster.Lease, previous netip.Prefix) (*cluster.Lease, error) {
	entries, _, err := r.list(ctx)
	if err != nil {
		return nil, err
	}
	for _, l := range entries {
		if l.NodeName != self.NodeName {
			continue
		}
		if !self.Owns(l.Lease, previous) {
			return nil, r.taken(ctx, &l)
		}
		key := r.leaseKey(l.Key())
		resp, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", l.modRev)).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			return nil, fmt.Errorf("deleting lease %s: %w", key, err)
		}
		if !resp.Succeeded {
			return nil, fmt.Errorf("lease %s changed while releasing it; try again", key)
		}
		if l.id != clientv3.NoLease {
			// Stops a keepalive elsewhere from holding a lease without keys.
			if _, err := r.cli.Revoke(ctx, l.id); err != nil && !isLeaseNotFound(err) {
				return &l.Lease, fmt.Errorf("revoking etcd lease %x of %s: %w", l.id, key, err)
			}
		}
		return &l.Lease, nil
	}
	return nil, fmt.Errorf("%w: no lease of node %s under %s", ErrNotFound, self.NodeName, r.LeasesPrefix())
}

func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound)
}

// ttlSeconds rounds a TTL up to whole seconds, as etcd counts them.
func ttlSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// Package kubestore is netd's Kubernetes datastore: cluster.Store and
// cluster.Holder on the Kubernetes API instead of etcd.
//
// A node's subnets are its Node's spec.podCIDRs, which
// kube-controller-manager (--allocate-node-cidrs) allocates: one per
// family, so a dual-stack Node gives a dual-stack lease. The rest of the
// lease (what peers need to reach the node: its underlay address of each
// family, VTEP MACs, VNI, BGP AS number, mode) is the node's own netd's
// record in one annotation of its Node, LeaseAnnotation, as JSON with
// the fields of etcd's lease record:
//
//	berth.berthnet.io/lease: {"nodeName":"node1","nodeIP":"192.168.50.1",
//	    "mode":"vxlan","vtepMAC":"0a:58:...","vni":1}
//
// Every netd watches the Nodes with a client-go informer: a Node with a
// podCIDR and the annotation is a peer's lease; a Node deleted from the
// cluster is gone from the leases, so every other node removes its
// routes at once. The network config is netd's own flags (the ConfigMap
// every netd of the DaemonSet reads), checked against the node's
// podCIDRs.
//
// What netd needs from the API: get, list and watch nodes, patch nodes
// (its own Node's annotation).
package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/netd/cluster"
)

// LeaseAnnotation is the Node annotation that carries a node's lease
// record (its subnets are the Node's spec.podCIDRs, not in it).
const LeaseAnnotation = "berth.berthnet.io/lease"

// ErrNoPodCIDR: the Node has no spec.podCIDR (yet). Retried: the
// controller manager allocates it shortly after the node registers.
var ErrNoPodCIDR = errors.New("no spec.podCIDR")

// Store is a network's leases on the Kubernetes API: netd's cluster.Store.
type Store struct {
	cs       kubernetes.Interface
	nodeName string // this node's Node
	log      *slog.Logger
	nodes    listersv1.NodeLister
	synced   cache.InformerSynced
	changed  chan struct{} // an informer event; coalesced

	mu      sync.Mutex // guards network
	network *conf.Network
}

var _ cluster.Store = (*Store)(nil)

// New returns the store of this node (nodeName), watching every Node
// until ctx ends.
func New(ctx context.Context, cs kubernetes.Interface, nodeName string, log *slog.Logger) (*Store, error) {
	s := &Store{cs: cs, nodeName: nodeName, log: log, changed: make(chan struct{}, 1)}
	// No periodic resync: the informer's watch delivers every change,
	// and netd's own timer repairs the kernel.
	f := informers.NewSharedInformerFactory(cs, 0)
	inf := f.Core().V1().Nodes()
	s.nodes, s.synced = inf.Lister(), inf.Informer().HasSynced
	kick := func(any) {
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    kick,
		UpdateFunc: func(_, n any) { kick(n) },
		DeleteFunc: kick,
	}); err != nil {
		return nil, fmt.Errorf("watching nodes: %w", err)
	}
	f.Start(ctx.Done())
	return s, nil
}

// EnsureConfig returns given with defaults filled in, the node subnet
// lengths taken from this node's podCIDRs when not given. There is no
// stored config: every netd of the DaemonSet reads the same ConfigMap,
// and each checks it against its Node's podCIDRs.
func (s *Store) EnsureConfig(ctx context.Context, given conf.Network) (*conf.Network, error) {
	node, err := s.cs.CoreV1().Nodes().Get(ctx, s.nodeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading node %s: %w", s.nodeName, err)
	}
	v4, v6, err := podCIDRs(node)
	if err != nil {
		return nil, err
	}
	if given.SubnetLen == 0 && v4.IsValid() {
		given.SubnetLen = v4.Bits()
	}
	if given.SubnetLenV6 == 0 && v6.IsValid() && given.CIDRv6.IsValid() {
		given.SubnetLenV6 = v6.Bits()
	}
	n := given.WithDefaults()
	if err := n.Validate(); err != nil {
		return nil, err
	}
	if err := fits(&n, node.Name, v4, v6); err != nil {
		return nil, err
	}
	if v6.IsValid() && !n.CIDRv6.IsValid() {
		s.log.Warn("the node has an IPv6 podCIDR, but the network has no IPv6 CIDR: pods get IPv4 only; give network-cidr both families for dual-stack",
			"node", node.Name, "podCIDRv6", v6)
	}
	s.mu.Lock()
	s.network = &n
	s.mu.Unlock()
	return &n, nil
}

// fits checks a node's podCIDRs against the network: each family the
// network has needs a podCIDR that is one of its node subnets.
func fits(n *conf.Network, node string, v4, v6 netip.Prefix) error {
	for _, f := range []struct {
		family, flag string
		cidr, pod    netip.Prefix
	}{
		{"IPv4", "--node-cidr-mask-size(-ipv4)", n.CIDR, v4},
		{"IPv6", "--node-cidr-mask-size-ipv6", n.CIDRv6, v6},
	} {
		if !f.cidr.IsValid() {
			continue
		}
		if !f.pod.IsValid() {
			return fmt.Errorf("%w: node %s has no %s podCIDR, and the network has %s: run kube-controller-manager with a dual-stack --cluster-cidr, or give netd's network-cidr the node's families only",
				cluster.ErrConflict, node, f.family, f.cidr)
		}
		if !n.IsNodeSubnet(f.pod) {
			return fmt.Errorf("%w: node %s's podCIDR %s is not a node subnet of the network %s: network-cidr must be kube-controller-manager's --cluster-cidr, and subnet-len its %s",
				cluster.ErrConflict, node, f.pod, f.cidr, f.flag)
		}
	}
	return nil
}

// Follow calls update with every lease once the informer has listed the
// Nodes, then again after every change, until ctx ends.
func (s *Store) Follow(ctx context.Context, update func(cluster.Change)) error {
	if !cache.WaitForCacheSync(ctx.Done(), s.synced) {
		return ctx.Err()
	}
	for {
		update(cluster.Change{Snapshot: s.snapshot()})
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
		}
	}
}

// snapshot reads every lease from the informer's cache.
func (s *Store) snapshot() cluster.Snapshot {
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil { // the cache's List does not fail
		s.log.Error("listing nodes from the informer", "err", err)
	}
	s.mu.Lock()
	n := s.network
	s.mu.Unlock()
	return Leases(n, nodes)
}

// Leases reads the leases of nodes in network n: a Node with a podCIDR
// and the lease annotation holds one; a Node with only one of them is
// not (yet) a member, and one whose annotation cannot be read is
// rejected.
func Leases(n *conf.Network, nodes []*corev1.Node) cluster.Snapshot {
	var snap cluster.Snapshot
	for _, node := range nodes {
		if rv, err := strconv.ParseInt(node.ResourceVersion, 10, 64); err == nil {
			snap.Revision = max(snap.Revision, rv)
		}
		if _, ok := node.Annotations[LeaseAnnotation]; !ok {
			continue
		}
		l, err := leaseOf(n, node)
		switch {
		case errors.Is(err, ErrNoPodCIDR):
			continue
		case err != nil:
			snap.Rejected = append(snap.Rejected, cluster.Rejected{Key: "node/" + node.Name, Subnet: l.Key(), Err: err})
			continue
		}
		snap.Leases = append(snap.Leases, l)
	}
	slices.SortFunc(snap.Leases, func(a, b cluster.Lease) int { return a.Key().Addr().Compare(b.Key().Addr()) })
	slices.SortFunc(snap.Rejected, func(a, b cluster.Rejected) int { return strings.Compare(a.Key, b.Key) })
	return snap
}

// leaseOf reads node's lease in network n: its podCIDRs of the
// families n has (all of them while n is nil) and its annotation. The
// subnets and the name come from the Node, whatever the annotation says.
func leaseOf(n *conf.Network, node *corev1.Node) (cluster.Lease, error) {
	v4, v6, err := podCIDRs(node)
	if err != nil {
		return cluster.Lease{}, err
	}
	if n != nil && !n.CIDR.IsValid() {
		v4 = netip.Prefix{}
	}
	if n != nil && !n.CIDRv6.IsValid() {
		v6 = netip.Prefix{}
	}
	var l cluster.Lease
	raw := node.Annotations[LeaseAnnotation]
	if len(raw) > maxRecord {
		return cluster.Lease{Subnet: v4, SubnetV6: v6}, fmt.Errorf("annotation %s of %d bytes: a lease record is about 150", LeaseAnnotation, len(raw))
	}
	if err := json.Unmarshal([]byte(raw), &l); err != nil {
		return cluster.Lease{Subnet: v4, SubnetV6: v6}, fmt.Errorf("annotation %s: %w", LeaseAnnotation, err)
	}
	if l.NodeName != "" && l.NodeName != node.Name {
		return cluster.Lease{Subnet: v4, SubnetV6: v6}, fmt.Errorf("annotation %s names node %q (copied from another Node?)", LeaseAnnotation, l.NodeName)
	}
	l.NodeName, l.Subnet, l.SubnetV6 = node.Name, v4, v6
	l.Created = node.CreationTimestamp.UnixNano()
	return l, nil
}

// maxRecord bounds the annotation netd parses (see registry.MaxValueSize).
const maxRecord = 4 << 10

// podCIDRs are node's pod subnets of each family (spec.podCIDRs, or
// spec.podCIDR on an API that has only that).
func podCIDRs(node *corev1.Node) (v4, v6 netip.Prefix, err error) {
	list := node.Spec.PodCIDRs
	if len(list) == 0 && node.Spec.PodCIDR != "" {
		list = []string{node.Spec.PodCIDR}
	}
	if len(list) == 0 {
		return v4, v6, fmt.Errorf("%w on node %s yet: is kube-controller-manager running with --allocate-node-cidrs?", ErrNoPodCIDR, node.Name)
	}
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil || p != p.Masked() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: podCIDR %q is not a subnet", node.Name, s)
		}
		field := &v4
		if p.Addr().Is6() {
			field = &v6
		}
		if field.IsValid() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: podCIDRs %v has two of one family", node.Name, list)
		}
		*field = p
	}
	return v4, v6, nil
}

// Ping reports whether the apiserver answers.
func (s *Store) Ping(ctx context.Context) error {
	return s.cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
}

// Holder keeps this node's lease: its record in its Node's annotation.
// The subnets are the Node's for as long as it exists (podCIDRs never
// change), so there is nothing to renew in the API: KeepAlive renews
// while the Node is there with the same podCIDRs.
type Holder struct {
	s     *Store
	every time.Duration // how often KeepAlive renews
	ttl   time.Duration

	mu   sync.Mutex
	held cluster.Lease
}

var _ cluster.Holder = (*Holder)(nil)

// Holder returns the holder of this node's lease; the lease file netd
// writes stays valid for ttl after each renewal.
func (s *Store) Holder(ttl time.Duration) *Holder {
	return &Holder{s: s, ttl: ttl, every: max(ttl/3, time.Second)}
}

// Acquire writes want's record into this node's annotation and returns
// the lease of the Node's podCIDRs. previous is not needed: a Node keeps
// its podCIDRs for its life.
func (h *Holder) Acquire(ctx context.Context, n *conf.Network, want cluster.Lease, _ netip.Prefix) (cluster.Lease, cluster.Origin, error) {
	nodes := h.s.cs.CoreV1().Nodes()
	node, err := nodes.Get(ctx, h.s.nodeName, metav1.GetOptions{})
	if err != nil {
		return cluster.Lease{}, "", fmt.Errorf("reading node %s: %w", h.s.nodeName, err)
	}
	v4, v6, err := podCIDRs(node)
	if err != nil {
		return cluster.Lease{}, "", err
	}
	if err := fits(n, node.Name, v4, v6); err != nil {
		return cluster.Lease{}, "", err
	}
	if !n.CIDR.IsValid() {
		v4 = netip.Prefix{}
	}
	if !n.CIDRv6.IsValid() {
		v6 = netip.Prefix{}
	}
	held := want
	held.NodeName, held.Subnet, held.SubnetV6, held.Created = node.Name, v4, v6, node.CreationTimestamp.UnixNano()
	origin := cluster.OriginNew
	if old, err := leaseOf(n, node); err == nil && old.SameRecord(held) {
		origin = cluster.OriginKept
	} else if err := h.write(ctx, held); err != nil {
		return cluster.Lease{}, "", err
	}
	h.mu.Lock()
	h.held = held
	h.mu.Unlock()
	return held, origin, nil
}

// write puts l's record into this node's annotation (a merge patch of
// that one key).
func (h *Holder) write(ctx context.Context, l cluster.Lease) error {
	l.SubnetV6 = netip.Prefix{} // the Node's podCIDRs say it (and Subnet is json:"-")
	record, err := json.Marshal(l)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{LeaseAnnotation: string(record)}}})
	if err != nil {
		return err
	}
	if _, err := h.s.cs.CoreV1().Nodes().Patch(ctx, h.s.nodeName, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "berth-netd"}); err != nil {
		return fmt.Errorf("writing annotation %s of node %s: %w", LeaseAnnotation, h.s.nodeName, err)
	}
	return nil
}

// KeepAlive renews the lease while this node's Node is there with the
// podCIDRs of the held lease, as the informer sees it; it returns an
// error when the Node is deleted or its podCIDRs changed (the node was
// deleted and registered again), so that netd acquires again.
func (h *Holder) KeepAlive(ctx context.Context, renewed func(ttl time.Duration)) error {
	t := time.NewTicker(h.every)
	defer t.Stop()
	if !cache.WaitForCacheSync(ctx.Done(), h.s.synced) {
		return nil
	}
	for {
		h.mu.Lock()
		held := h.held
		h.mu.Unlock()
		node, err := h.s.nodes.Get(h.s.nodeName)
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("node %s was deleted from the cluster", h.s.nodeName)
		case err != nil:
			return fmt.Errorf("reading node %s from the informer: %w", h.s.nodeName, err)
		}
		v4, v6, err := podCIDRs(node)
		if err != nil {
			return err
		}
		if (held.Subnet.IsValid() && v4 != held.Subnet) || (held.SubnetV6.IsValid() && v6 != held.SubnetV6) {
			return fmt.Errorf("node %s's podCIDRs are now %s,%s (were %s)", h.s.nodeName, v4, v6, held.Subnets())
		}
		renewed(h.ttl)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Reclaim writes the held record back when the annotation on the Node
// says anything else (someone edited or removed it).
func (h *Holder) Reclaim(ctx context.Context) (bool, error) {
	h.mu.Lock()
	held := h.held
	h.mu.Unlock()
	if !held.Key().IsValid() {
		return false, nil
	}
	node, err := h.s.cs.CoreV1().Nodes().Get(ctx, h.s.nodeName, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("reading node %s: %w", h.s.nodeName, err)
	}
	h.s.mu.Lock()
	n := h.s.network
	h.s.mu.Unlock()
	if l, err := leaseOf(n, node); err == nil && l.SameRecord(held) {
		return false, nil
	}
	if err := h.write(ctx, held); err != nil {
		return false, err
	}
	return true, nil
}

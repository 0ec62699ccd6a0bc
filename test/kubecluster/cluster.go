// Package kubecluster runs a real Kubernetes cluster on the test bed: the
// control plane and every node live in namespaces the test bed creates,
// nothing in the machine's own.
//
//	underlay netns (192.168.50.250 on br0, no route out):
//	    etcd               127.0.0.1:2379 (the apiserver's; Debian's etcd 3.4)
//	    kube-apiserver     192.168.50.250:6443, what kubelets, kubectl and pods dial
//	    controller-manager 127.0.0.1:10257, --allocate-node-cidrs (spec.podCIDR per node)
//	    scheduler          127.0.0.1:10259
//	node<N> netns (eth0 = 192.168.50.N, default route via the underlay)
//	  + a private mount namespace, held by a `sleep` started with unshare:
//	    containerd         its socket /run/containerd/containerd.sock inside
//	    kubelet            node name node<N>, node IP 192.168.50.N, port 10250
//
// The apiserver listens on the underlay's own address, so every node
// reaches it over the test bed's L2 segment and it reaches the kubelets on
// their node IPs (--kubelet-preferred-address-types=InternalIP: no DNS).
//
// A node's mount namespace is what makes the node a machine of its own:
// its directories replace /run, /var/lib, /var/log, /etc/cni and /opt,
// so the kubelet's and containerd's hard-coded paths (/var/lib/kubelet,
// /var/log/containers, /run/containerd, /run/netns), the CNI dirs
// (/etc/cni/net.d, /opt/cni/bin) and berth's (/run/berth,
// /var/lib/cni/networks), including hostPath volumes of pods, land in
// <node dir>/root/... Files with the values the kubelet insists on are
// bound over /proc/sys/vm/overcommit_memory, kernel/panic,
// kernel/panic_on_oops (and the other tunables it checks), so it never
// writes the machine's. The kubelet and containerd run in cgroups below
// /<test bed id>/<node>, where the pods go too (kubelet cgroupRoot), so
// that Close, and the sweep after a crashed run, kills everything.
//
// Images come from OCI tars (internal/ociimage), imported into each node's
// containerd: the pause image is a static Go binary, test images are
// busybox-static and iperf3. Nothing is pulled.
package kubecluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// Version is the Kubernetes version make test-k8s builds.
const Version = "1.37.2"

// Defaults of the cluster's address ranges.
var (
	DefaultClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
)

// APIServerPort is the apiserver's port on testbed.UnderlayIP.
const APIServerPort = 6443

// Options shape the cluster.
type Options struct {
	Nodes       int          // nodes running a kubelet, default 2
	ClusterCIDR netip.Prefix // controller manager's --cluster-cidr, default 10.244.0.0/16
	// ClusterCIDRv6 makes the cluster dual-stack: nodes get an IPv6
	// podCIDR (/64) of it too, and kubelets both node addresses.
	ClusterCIDRv6 netip.Prefix
	ServiceCIDR   netip.Prefix // default 10.96.0.0/16
	// KubeBinDir holds kube-apiserver, kube-controller-manager,
	// kube-scheduler, kubelet and kubectl; default $BERTH_K8S_BIN.
	KubeBinDir string
}

// Cluster is a running Kubernetes cluster on a test bed.
type Cluster struct {
	TB         *testbed.Testbed
	Dir        string // the cluster's files: PKI, kubeconfigs, node directories
	KubeBinDir string
	Options    Options
	// APIServer is https://192.168.50.250:6443, reachable from the
	// underlay and every node.
	APIServer string
	// Kubeconfig is the admin's (system:masters).
	Kubeconfig string
	Nodes      []*Node

	pki  *pki
	etcd *testbed.Process
	ctrl []*testbed.Process // apiserver, controller manager, scheduler
}

// KubeBinDirFromEnv is where make test-k8s put the Kubernetes binaries.
func KubeBinDirFromEnv() string { return os.Getenv("BERTH_K8S_BIN") }

// ForTest starts a cluster for t on a new test bed and removes it when t
// ends. It skips t when the Kubernetes binaries are not built (make
// test-k8s builds them and sets BERTH_K8S_BIN).
func ForTest(t testing.TB, ctx context.Context, opts Options) *Cluster {
	t.Helper()
	testenv.RequireRoot(t)
	if opts.KubeBinDir == "" {
		opts.KubeBinDir = KubeBinDirFromEnv()
	}
	if opts.KubeBinDir == "" {
		t.Skip("no Kubernetes binaries: run make test-k8s (it builds them and sets BERTH_K8S_BIN)")
	}
	tb := testbed.ForTest(t, testbed.Options{Nodes: max(opts.Nodes, 2)})
	c, err := Start(ctx, tb, opts)
	// Registered after the test bed's, so it runs before it: the
	// kubelets and containerds go before their namespaces do.
	t.Cleanup(func() {
		if c == nil {
			return
		}
		if t.Failed() {
			c.logState(t)
		}
		if err := c.Close(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Start starts the control plane in tb's underlay and a kubelet on each
// of tb's first opts.Nodes nodes, and waits until every node is
// registered. Nodes stay NotReady until a network (a CNI conflist) is
// installed. On error, what was started is left for Close.
func Start(ctx context.Context, tb *testbed.Testbed, opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Nodes > len(tb.Nodes) {
		return nil, fmt.Errorf("kubecluster: %d nodes asked, the test bed has %d", opts.Nodes, len(tb.Nodes))
	}
	if !opts.ClusterCIDR.IsValid() {
		opts.ClusterCIDR = DefaultClusterCIDR
	}
	if !opts.ServiceCIDR.IsValid() {
		opts.ServiceCIDR = DefaultServiceCIDR
	}
	for _, bin := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"} {
		if _, err := os.Stat(filepath.Join(opts.KubeBinDir, bin)); err != nil {
			return nil, fmt.Errorf("kubecluster: %w (build them with test/kubecluster/build-kubernetes.sh)", err)
		}
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "etcd", "unshare", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("kubecluster: %s is not installed (.ci/deps installs it): %w", bin, err)
		}
	}
	c := &Cluster{
		TB:         tb,
		Dir:        filepath.Join(tb.Dir, "kube"),
		KubeBinDir: opts.KubeBinDir,
		Options:    opts,
		APIServer:  fmt.Sprintf("https://%s:%d", testbed.UnderlayIP, APIServerPort),
	}
	var err error
	if c.pki, err = newPKI(filepath.Join(c.Dir, "pki")); err != nil {
		return c, fmt.Errorf("kubecluster: %w", err)
	}
	if err := c.startControlPlane(ctx); err != nil {
		return c, err
	}
	for _, n := range tb.Nodes[:opts.Nodes] {
		node, err := c.startNode(ctx, n)
		if node != nil {
			c.Nodes = append(c.Nodes, node)
		}
		if err != nil {
			return c, err
		}
	}
	return c, c.waitRegistered(ctx)
}

// Close stops the kubelets, containerds, their pods and shims, removes
// their cgroups and mount namespaces, then the control plane. The test
// bed (namespaces, directories) is the caller's to close afterwards.
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes {
		errs = append(errs, n.stop())
	}
	for _, p := range c.ctrl {
		errs = append(errs, p.Kill())
	}
	if c.etcd != nil {
		errs = append(errs, c.etcd.Kill())
	}
	// The test bed removes its cgroups from the runner's hierarchies only;
	// the kubelets and containerds used all of them.
	errs = append(errs, testbed.RemoveCgroupTree("/"+c.TB.ID))
	return errors.Join(errs...)
}

// waitRegistered waits until every node has registered with the
// apiserver.
func (c *Cluster) waitRegistered(ctx context.Context) error {
	return c.poll(ctx, 2*time.Minute, "nodes registered", func() error {
		nodes, err := c.NodeList(ctx)
		if err != nil {
			return err
		}
		if len(nodes.Items) < len(c.Nodes) {
			var kubeletLog string
			for _, n := range c.Nodes {
				if n.kubelet.Exited() {
					kubeletLog = fmt.Sprintf("; kubelet of %s exited, log %s", n.Name, n.kubelet.LogPath)
				}
			}
			return fmt.Errorf("%d of %d nodes registered%s", len(nodes.Items), len(c.Nodes), kubeletLog)
		}
		return nil
	})
}

// poll calls f every 500ms until it returns nil, timeout passes or ctx
// ends, and returns f's last error named after what.
func (c *Cluster) poll(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if errors.Is(err, errExited) {
			return fmt.Errorf("kubecluster: waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubecluster: waiting for %s: %w", what, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// logState logs what a person debugging a failed test looks at first.
func (c *Cluster) logState(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
	} {
		out, err := c.Kubectl(ctx, args...)
		if err != nil {
			out = err.Error()
		}
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("--- kubectl %s:\n%s", strings.Join(args, " "), strings.Join(lines, "\n"))
	}
}

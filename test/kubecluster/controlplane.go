package kubecluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/berthnet/berth/test/testbed"
)

// The apiserver's etcd: on the underlay's loopback, apart from the etcd
// the test bed may run on the underlay address for netd.
const kubeEtcdURL = "http://127.0.0.1:2379"

// startControlPlane starts etcd, the apiserver, the controller manager and
// the scheduler in the underlay namespace.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	p := c.pki
	api := testbed.UnderlayIP
	serviceIP := c.Options.ServiceCIDR.Masked().Addr().Next() // the kubernetes service
	serving, err := p.issue("apiserver", "kube-apiserver", nil,
		[]netip.Addr{api, netip.MustParseAddr("127.0.0.1"), serviceIP},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	kubeletClient, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	users := []struct{ name, cn, group string }{
		{"admin", "berth-test-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
	}
	kubeconfigs := map[string]string{}
	for _, u := range users {
		var groups []string
		if u.group != "" {
			groups = []string{u.group}
		}
		cert, err := p.issue(u.name, u.cn, groups, nil, nil)
		if err != nil {
			return fmt.Errorf("kubecluster: %w", err)
		}
		kubeconfigs[u.name] = filepath.Join(c.Dir, u.name+".kubeconfig")
		if err := p.kubeconfig(kubeconfigs[u.name], c.APIServer, u.cn, cert); err != nil {
			return fmt.Errorf("kubecluster: %w", err)
		}
	}
	c.Kubeconfig = kubeconfigs["admin"]

	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	c.etcd, err = c.TB.Underlay.Start(testbed.ProcSpec{Name: "kube-etcd", Path: etcdBin, Args: []string{
		"--name", "kube-etcd", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", kubeEtcdURL, "--advertise-client-urls", kubeEtcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "kube-etcd=http://127.0.0.1:2380",
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
		// The default 100ms heartbeat misses on a busy 2-core machine.
		"--heartbeat-interval", "250", "--election-timeout", "2500",
	}})
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	if err := c.poll(ctx, 30*time.Second, "the apiserver's etcd", func() error {
		body, err := c.TB.Underlay.Get(ctx, kubeEtcdURL+"/health")
		if err == nil && !strings.Contains(string(body), `"health":"true"`) {
			err = fmt.Errorf("etcd /health: %s", body)
		}
		return exitedOr(c.etcd, err)
	}); err != nil {
		return err
	}

	apiserver, err := c.TB.Underlay.Start(testbed.ProcSpec{Name: "kube-apiserver", Path: c.bin("kube-apiserver"), Args: []string{
		"--etcd-servers=" + kubeEtcdURL,
		"--bind-address=" + api.String(), "--advertise-address=" + api.String(),
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--tls-cert-file=" + serving.Cert, "--tls-private-key-file=" + serving.Key,
		"--client-ca-file=" + p.Cert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPub, "--service-account-signing-key-file=" + p.SAKey,
		"--service-cluster-ip-range=" + c.Options.ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + kubeletClient.Cert, "--kubelet-client-key=" + kubeletClient.Key,
		// Node names are not in any DNS here (and the namespace has no
		// route out): reach kubelets at their node IPs.
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true", "--profiling=false", "--enable-priority-and-fairness=false",
		"--v=1",
	}})
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	c.ctrl = append(c.ctrl, apiserver)
	client, err := c.httpClient()
	if err != nil {
		return err
	}
	if err := c.poll(ctx, 2*time.Minute, "kube-apiserver /readyz", func() error {
		resp, err := client.Get(c.APIServer + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("/readyz: %s", resp.Status)
			}
		}
		return exitedOr(apiserver, err)
	}); err != nil {
		return err
	}

	kcm, err := c.TB.Underlay.Start(testbed.ProcSpec{Name: "kube-controller-manager", Path: c.bin("kube-controller-manager"), Args: []string{
		"--kubeconfig=" + kubeconfigs["controller-manager"],
		"--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.SAKey, "--root-ca-file=" + p.Cert,
		// spec.podCIDR for every node, what flannel-style networks (and
		// berth's kubernetes datastore) give each node's pods.
		"--allocate-node-cidrs=true", "--cluster-cidr=" + c.clusterCIDRs(), "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
		"--service-cluster-ip-range=" + c.Options.ServiceCIDR.String(),
		"--v=1",
	}})
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	c.ctrl = append(c.ctrl, kcm)
	scheduler, err := c.TB.Underlay.Start(testbed.ProcSpec{Name: "kube-scheduler", Path: c.bin("kube-scheduler"), Args: []string{
		"--kubeconfig=" + kubeconfigs["scheduler"],
		"--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false",
		"--v=1",
	}})
	if err != nil {
		return fmt.Errorf("kubecluster: %w", err)
	}
	c.ctrl = append(c.ctrl, scheduler)
	return nil
}

func (c *Cluster) bin(name string) string { return filepath.Join(c.KubeBinDir, name) }

// httpClient is an admin HTTPS client of the apiserver whose connections
// start in the underlay namespace.
func (c *Cluster) httpClient() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.pki.Dir(), "admin.pem"), filepath.Join(c.pki.Dir(), "admin-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("kubecluster: %w", err)
	}
	caPEM, err := os.ReadFile(c.pki.Cert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := c.TB.Underlay.HTTPClient()
	client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}
	return client, nil
}

// errExited ends a wait at once: what it waits for will not come.
var errExited = errors.New("exited")

// exitedOr is err, or that p exited (with its log's tail) when it did.
func exitedOr(p *testbed.Process, err error) error {
	if err != nil && p.Exited() {
		log := p.Log()
		if len(log) > 3000 {
			log = log[len(log)-3000:]
		}
		return fmt.Errorf("%s %w; log %s:\n%s", p.Name, errExited, p.LogPath, log)
	}
	return err
}

// clusterCIDRs is the controller manager's --cluster-cidr: IPv4, and
// IPv6 on a dual-stack cluster.
func (c *Cluster) clusterCIDRs() string {
	if c.Options.ClusterCIDRv6.IsValid() {
		return c.Options.ClusterCIDR.String() + "," + c.Options.ClusterCIDRv6.String()
	}
	return c.Options.ClusterCIDR.String()
}

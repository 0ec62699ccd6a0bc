package testbed

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Etcd is one member of a real etcd server (the Debian etcd-server
// binary) running in the underlay namespace on its own address, with its
// own data directory.
type Etcd struct {
	Name      string
	IP        netip.Addr
	ClientURL string // http://<IP>:2379, what netd's --etcd-endpoints take
	PeerURL   string
	DataDir   string
	// TLS is set when clients must use TLS with a client certificate.
	TLS *TLSFiles

	tb   *Testbed
	args []string
	proc *Process
}

// EtcdCluster is a multi-member etcd for fault tests.
type EtcdCluster struct {
	Members []*Etcd
}

// Endpoints are the client URLs of all members.
func (c *EtcdCluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// StartEtcd starts a single-member etcd on UnderlayIP and waits until it
// is healthy.
func (tb *Testbed) StartEtcd(ctx context.Context) (*Etcd, error) {
	c, err := tb.startEtcd(ctx, []netip.Addr{UnderlayIP}, nil)
	if err != nil {
		return nil, err
	}
	return c.Members[0], nil
}

// StartEtcdTLS is StartEtcd with clients on https, verified against a
// test CA, and required to present a client certificate (etcd's
// --client-cert-auth). The files are in Etcd.TLS.
func (tb *Testbed) StartEtcdTLS(ctx context.Context) (*Etcd, error) {
	files, err := newTLSFiles(filepath.Join(tb.Dir, "etcd-tls"), []netip.Addr{UnderlayIP})
	if err != nil {
		return nil, err
	}
	c, err := tb.startEtcd(ctx, []netip.Addr{UnderlayIP}, files)
	if err != nil {
		return nil, err
	}
	return c.Members[0], nil
}

// StartEtcdCluster starts an n-member etcd cluster (members on
// 192.168.50.241, .242, ... in the underlay) and waits until every
// member is healthy.
func (tb *Testbed) StartEtcdCluster(ctx context.Context, n int) (*EtcdCluster, error) {
	if n < 1 || n > 9 {
		return nil, fmt.Errorf("testbed: etcd cluster of %d members: use 1..9", n)
	}
	var ips []netip.Addr
	for i := 1; i <= n; i++ {
		ip := nthAddr(Segment1, 240+i)
		if err := tb.Underlay.Do(func() error { return addAddr(bridge1, netip.PrefixFrom(ip, Segment1.Bits())) }); err != nil {
			return nil, fmt.Errorf("testbed: etcd cluster: %w", err)
		}
		ips = append(ips, ip)
	}
	return tb.startEtcd(ctx, ips, nil)
}

func (tb *Testbed) startEtcd(ctx context.Context, ips []netip.Addr, files *TLSFiles) (*EtcdCluster, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("testbed: the etcd server binary is not installed (apt-get install etcd-server): %w", err)
	}
	c := &EtcdCluster{}
	var initial []string
	scheme := "http"
	if files != nil {
		scheme = "https"
	}
	for i, ip := range ips {
		m := &Etcd{
			Name:      fmt.Sprintf("etcd%d", i+1),
			IP:        ip,
			ClientURL: scheme + "://" + net.JoinHostPort(ip.String(), "2379"),
			PeerURL:   "http://" + net.JoinHostPort(ip.String(), "2380"),
			TLS:       files,
			tb:        tb,
		}
		if len(ips) == 1 {
			m.Name = "etcd"
		}
		m.DataDir = filepath.Join(tb.Dir, m.Name)
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", tb.ID,
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
		}
		if files != nil {
			m.args = append(m.args, "--cert-file", files.ServerCert, "--key-file", files.ServerKey,
				"--trusted-ca-file", files.CA, "--client-cert-auth")
		}
		if m.proc, err = tb.Underlay.Start(ProcSpec{Name: m.Name, Path: bin, Args: m.args}); err != nil {
			return nil, err
		}
	}
	for _, m := range c.Members {
		if err := m.WaitHealthy(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// WaitHealthy waits until the member answers /health with a leader.
func (e *Etcd) WaitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := e.tb.Underlay.HTTPClient()
	if e.TLS != nil {
		cfg, err := e.TLS.ClientConfig()
		if err != nil {
			return fmt.Errorf("testbed: %s: %w", e.Name, err)
		}
		client.Transport.(*http.Transport).TLSClientConfig = cfg
	}
	for {
		body, err := get(ctx, client, e.ClientURL+"/health")
		if err == nil && strings.Contains(string(body), `"health":"true"`) {
			return nil
		}
		if e.proc.Exited() {
			return fmt.Errorf("testbed: %s exited: %v; log %s:\n%s", e.Name, e.proc.Wait(ctx), e.proc.LogPath, e.proc.Log())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: %s not healthy: %v %s", e.Name, err, body)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Process is the member's server process.
func (e *Etcd) Process() *Process { return e.proc }

// Stop ends the member with SIGTERM (SIGKILL after 10s).
func (e *Etcd) Stop() error { return e.proc.Stop(10 * time.Second) }

// Kill ends the member with SIGKILL, as a crash would.
func (e *Etcd) Kill() error { return e.proc.Kill() }

// Restart starts a stopped member again on the same data directory (the
// initial-cluster flags are ignored once the data exists) and waits until
// it is healthy. In a cluster, a quorum must be up for it to be healthy.
func (e *Etcd) Restart(ctx context.Context) error {
	if !e.proc.Exited() {
		return errors.New("testbed: " + e.Name + " is still running")
	}
	p, err := e.tb.Underlay.Start(ProcSpec{Name: e.Name, Path: e.proc.cmd.Path, Args: e.args})
	if err != nil {
		return err
	}
	e.proc = p
	return e.WaitHealthy(ctx)
}

// Client is an etcd client of this member for the test itself, with TLS
// when the member requires it; see Testbed.Client.
func (e *Etcd) Client() (*clientv3.Client, error) {
	var cfg *tls.Config
	if e.TLS != nil {
		var err error
		if cfg, err = e.TLS.ClientConfig(); err != nil {
			return nil, err
		}
	}
	return e.tb.client(cfg, e.ClientURL)
}

// Client is an etcd client for the test itself. Its connections start
// inside the underlay namespace: the endpoints are not reachable from
// the machine's own namespace.
func (tb *Testbed) Client(endpoints ...string) (*clientv3.Client, error) {
	return tb.client(nil, endpoints...)
}

func (tb *Testbed) client(tlsCfg *tls.Config, endpoints ...string) (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		// grpc hands over "host:port" or a "unix://"-less address.
		return tb.Underlay.DialContext(ctx, "tcp", addr)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial),
			// gRPC's default reconnect backoff grows to two minutes: after
			// a test's etcd outage the test's own reads would wait that
			// long after etcd is back (netd caps it at 3s too).
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: 5 * time.Second,
			})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

package netd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// etcdTLS is the TLS config for etcd from the flags; nil without TLS.
func etcdTLS(cfg *Config) (*tls.Config, error) {
	if cfg.EtcdCAFile == "" && cfg.EtcdCertFile == "" {
		return nil, nil
	}
	info := transport.TLSInfo{CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile, TrustedCAFile: cfg.EtcdCAFile}
	tlsCfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS (--etcd-cafile, --etcd-certfile, --etcd-keyfile): %w", err)
	}
	return tlsCfg, nil
}

// ErrEtcdTLS: etcd and netd do not trust each other's certificates.
var ErrEtcdTLS = errors.New("etcd TLS")

// tlsProblem explains a failed TLS handshake with the etcd at ep when it
// is about certificates, which no retry fixes (ErrEtcdTLS); nil otherwise.
func tlsProblem(cfg *Config, ep string, err error) error {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	// A TLS alert from the server: crypto/tls reports it as a
	// *net.OpError "remote error" (AlertError is only for QUIC).
	var remote *net.OpError
	rejected := errors.As(err, &remote) && remote.Op == "remote error"
	switch {
	case errors.As(err, &unknownCA) || errors.As(err, &verify) || errors.As(err, &invalid):
		return fmt.Errorf("%w: etcd at %s presents a certificate that --etcd-cafile %s does not verify: %v; give the CA that signed etcd's server certificate",
			ErrEtcdTLS, ep, cfg.EtcdCAFile, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("%w: etcd at %s: %v; use an endpoint address that its certificate names", ErrEtcdTLS, ep, err)
	case rejected && cfg.EtcdCertFile == "":
		return fmt.Errorf("%w: etcd at %s wants a client certificate (%v); give --etcd-certfile and --etcd-keyfile (or run `netd join` on this node)",
			ErrEtcdTLS, ep, err)
	case rejected:
		return fmt.Errorf("%w: etcd at %s refused netd's client certificate (--etcd-certfile %s): %v; give a certificate signed by the CA etcd trusts (its --trusted-ca-file)",
			ErrEtcdTLS, ep, cfg.EtcdCertFile, err)
	}
	return nil
}

// newClient connects to etcd (lazily: the first request waits for it).
func newClient(cfg *Config, endpoints []string) (*clientv3.Client, error) {
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to two minutes: after a
		// long etcd outage netd would stay degraded that long after etcd
		// is back, and its lease could expire meanwhile.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// embedded is an etcd server inside netd, for a cluster that has none.
type embedded struct {
	etcd      *embed.Etcd
	log       *etcdLog
	Endpoints []string
}

// startEmbedded starts a single-member etcd serving clients on the node IP
// (for the other nodes) and loopback. Its peer port only listens on
// loopback: there are no other members.
func startEmbedded(ctx context.Context, cfg *Config, nodeIP netip.Addr, log *slog.Logger) (*embedded, error) {
	if err := os.MkdirAll(cfg.EtcdDataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	u := func(host string, port int) url.URL {
		return url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(port))}
	}
	ec := embed.NewConfig()
	ec.Name = cfg.NodeName
	ec.Dir = cfg.EtcdDataDir
	ec.ListenClientUrls = []url.URL{u(nodeIP.String(), cfg.EtcdClientPort), u("127.0.0.1", cfg.EtcdClientPort)}
	ec.AdvertiseClientUrls = []url.URL{u(nodeIP.String(), cfg.EtcdClientPort)}
	ec.ListenPeerUrls = []url.URL{u("127.0.0.1", cfg.EtcdPeerPort)}
	ec.AdvertisePeerUrls = ec.ListenPeerUrls
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	elog := newEtcdLog(log)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(elog.Logger())
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", cfg.EtcdDataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(time.Minute):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after a minute", cfg.EtcdDataDir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	adv := u(nodeIP.String(), cfg.EtcdClientPort)
	m := &embedded{etcd: e, log: elog, Endpoints: []string{adv.String()}}
	log.Info("started embedded etcd; other nodes use it with --etcd-endpoints", "endpoints", m.Endpoints[0], "dataDir", cfg.EtcdDataDir)
	return m, nil
}

func (m *embedded) Close() {
	m.log.Closing()
	m.etcd.Close()
}

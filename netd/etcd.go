package netd

import (
	"context"
	"crypto/tls"
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
)

// newClient connects to etcd (lazily: the first request waits for it).
func newClient(cfg *Config, endpoints []string) (*clientv3.Client, error) {
	var tlsCfg *tls.Config
	if cfg.EtcdCAFile != "" || cfg.EtcdCertFile != "" {
		info := transport.TLSInfo{CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile, TrustedCAFile: cfg.EtcdCAFile}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS (--etcd-cafile, --etcd-certfile, --etcd-keyfile): %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// embedded is an etcd server inside netd, for a cluster that has none.
type embedded struct {
	etcd      *embed.Etcd
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
	ec.LogLevel = "error"
	ec.LogOutputs = []string{"stderr"}
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
	m := &embedded{etcd: e, Endpoints: []string{adv.String()}}
	log.Info("started embedded etcd; other nodes use it with --etcd-endpoints", "endpoints", m.Endpoints[0], "dataDir", cfg.EtcdDataDir)
	return m, nil
}

func (m *embedded) Close() { m.etcd.Close() }

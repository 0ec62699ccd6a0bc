package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/berthnet/berth/netd/etcdserver"
)

// server is a started etcd.
type server struct {
	etcd *embed.Etcd
	log  *zapLog
}

// startServer starts etcd and returns once it serves clients, fails, or ctx
// ends; log gets its errors.
func startServer(ctx context.Context, c etcdserver.Config, log *slog.Logger) (*server, error) {
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.DataDir
	var err error
	if ec.ListenClientUrls, err = parseURLs(c.ClientURLs); err != nil {
		return nil, err
	}
	if ec.AdvertiseClientUrls, err = parseURLs(c.AdvertiseClientURLs); err != nil {
		return nil, err
	}
	if ec.ListenPeerUrls, err = parseURLs([]string{c.PeerURL}); err != nil {
		return nil, err
	}
	ec.AdvertisePeerUrls = ec.ListenPeerUrls
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	zl := newZapLog(log)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl.Logger())
	if c.TLS != nil {
		ec.ClientTLSInfo = transport.TLSInfo{CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile, TrustedCAFile: c.TLS.TrustedCAFile, ClientCertAuth: true}
		ec.PeerTLSInfo = ec.ClientTLSInfo
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", c.DataDir, err)
	}
	s := &server{etcd: e, log: zl}
	select {
	case <-e.Server.ReadyNotify():
		return s, nil
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(time.Minute):
		s.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after a minute", c.DataDir)
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
}

// Err reports a listener's failure after the start.
func (s *server) Err() <-chan error { return s.etcd.Err() }

// Close stops etcd; what it says while closing is not worth logging.
func (s *server) Close() {
	s.log.Closing()
	s.etcd.Close()
}

func parseURLs(in []string) ([]url.URL, error) {
	out := make([]url.URL, 0, len(in))
	for _, s := range in {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: URL %q: %w", s, err)
		}
		out = append(out, *u)
	}
	return out, nil
}

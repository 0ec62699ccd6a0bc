package netd

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"

	"github.com/berthnet/berth/netd/pki"
)

// etcdAccess is the etcd a netd command uses and how it reaches it.
type etcdAccess struct {
	Endpoints []string
	TLS       *tls.Config // nil: plain HTTP
	emb       *embedded   // the embedded etcd this netd runs, if any
}

// openEtcd finds this node's etcd: --etcd-endpoints; else the one it
// joined (`netd join` stored the endpoints in --pki-dir); else an
// embedded etcd started here (with the join server when serveJoin). The
// TLS files default to --pki-dir's: the embedded etcd's CA and this
// node's client certificate, or what `netd join` fetched.
func openEtcd(ctx context.Context, cfg *Config, nodeIPs []netip.Addr, log *slog.Logger, serveJoin bool) (*etcdAccess, error) {
	a := &etcdAccess{Endpoints: cfg.EtcdEndpoints}
	dir := pki.Dir(cfg.PKIDir)
	if len(a.Endpoints) == 0 {
		joined, err := dir.Joined()
		if err != nil {
			return nil, fmt.Errorf("--pki-dir: %w", err)
		}
		a.Endpoints = joined
	}
	if len(a.Endpoints) == 0 {
		emb, err := startEmbedded(ctx, cfg, nodeIPs, log, serveJoin)
		if err != nil {
			return nil, err
		}
		a.emb, a.Endpoints = emb, emb.Endpoints
	}
	if cfg.EtcdCAFile == "" && cfg.EtcdCertFile == "" && anyScheme(a.Endpoints, "https") && dir.HasClient() {
		cfg.EtcdCAFile, cfg.EtcdCertFile, cfg.EtcdKeyFile = dir.Path(pki.CAFile), dir.Path(pki.ClientFile), dir.Path(pki.ClientKeyFile)
	}
	var err error
	if a.TLS, err = etcdTLS(cfg); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Close stops the embedded etcd, if this command started one.
func (a *etcdAccess) Close() {
	if a.emb != nil {
		a.emb.Close()
	}
}

func anyScheme(endpoints []string, scheme string) bool {
	for _, ep := range endpoints {
		if u, err := url.Parse(ep); err == nil && u.Scheme == scheme {
			return true
		}
	}
	return false
}

// etcdWarnings are what netd status says about etcd being reachable in
// plain HTTP, without authentication.
func etcdWarnings(cfg *Config, endpoints []string) []string {
	var out []string
	if len(cfg.EtcdEndpoints) == 0 && cfg.EtcdPlainHTTP {
		out = append(out, "this node's embedded etcd serves plain HTTP without authentication (--etcd-plain-http): anyone who reaches "+
			strings.Join(endpoints, ",")+" can rewrite every lease and reroute the cluster's traffic")
	} else if anyScheme(endpoints, "http") {
		out = append(out, "etcd is reached in plain HTTP ("+strings.Join(endpoints, ",")+"): unencrypted and unauthenticated; use https:// endpoints with certificates")
	}
	return out
}

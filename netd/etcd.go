package netd

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/berthnet/berth/netd/etcdserver"
	"github.com/berthnet/berth/netd/pki"
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
func newClient(endpoints []string, tlsCfg *tls.Config) (*clientv3.Client, error) {
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
		}), grpc.WithDefaultCallOptions(grpc.ForceCodecV2(newEtcdCodec()))},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// embedded is the etcd netd runs for a cluster that has none (its child
// process netd-etcd, package etcdserver), and the join server that gives
// other nodes their certificates.
type embedded struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	exited    chan struct{} // closed once cmd is waited for
	join      *http.Server  // nil without TLS
	Endpoints []string
}

// startEmbedded starts a single-member etcd serving clients on the node's
// addresses, the preferred one first (for the other nodes, whichever
// family they reach it by), and loopback, with TLS and client certificates
// of the CA in --pki-dir (made at the first start), or in plain HTTP with
// --etcd-plain-http. Its peer port only listens on loopback: there are no
// other members. With serveJoin, other nodes get their certificates from
// the join server on --join-port (`netd join`).
func startEmbedded(ctx context.Context, cfg *Config, nodeIPs []netip.Addr, log *slog.Logger, serveJoin bool) (*embedded, error) {
	if err := os.MkdirAll(cfg.EtcdDataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	scheme := "https"
	if cfg.EtcdPlainHTTP {
		scheme = "http"
	}
	u := func(host string, port int) string {
		return (&url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port))}).String()
	}
	ec := etcdserver.Config{Name: cfg.NodeName, DataDir: cfg.EtcdDataDir, PeerURL: u("127.0.0.1", cfg.EtcdPeerPort)}
	for _, ip := range nodeIPs {
		ec.AdvertiseClientURLs = append(ec.AdvertiseClientURLs, u(ip.String(), cfg.EtcdClientPort))
	}
	ec.ClientURLs = append(slices.Clone(ec.AdvertiseClientURLs), u("127.0.0.1", cfg.EtcdClientPort))
	var ca *pki.Authority
	if !cfg.EtcdPlainHTTP {
		var err error
		if ca, err = embeddedPKI(cfg, nodeIPs); err != nil {
			return nil, err
		}
		d := ca.Dir
		ec.TLS = &etcdserver.TLSFiles{CertFile: d.Path(pki.ServerFile), KeyFile: d.Path(pki.ServerKeyFile), TrustedCAFile: d.Path(pki.CAFile)}
	}
	m, err := startEtcdServer(ctx, ec)
	for deadline := time.Now().Add(5 * time.Second); errors.Is(err, errEtcdBusy) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		m, err = startEtcdServer(ctx, ec)
	}
	if err != nil {
		return nil, err
	}
	m.Endpoints = ec.AdvertiseClientURLs
	if cfg.EtcdPlainHTTP {
		log.Info("started embedded etcd in plain HTTP (--etcd-plain-http); other nodes use it with --etcd-endpoints", "endpoints", strings.Join(m.Endpoints, ","), "dataDir", cfg.EtcdDataDir)
		return m, nil
	}
	log.Info("started embedded etcd (TLS, client certificates); other nodes use it after `netd join`", "endpoints", strings.Join(m.Endpoints, ","), "dataDir", cfg.EtcdDataDir, "pki", cfg.PKIDir)
	if serveJoin {
		if err := m.serveJoin(cfg, ca, nodeIPs[0], log); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// errEtcdBusy: netd-etcd found its ports or data directory still held.
var errEtcdBusy = errors.New("embedded etcd busy")

// etcdServerBinary is netd-etcd: next to netd's own binary (make install,
// the image and bin/ keep them together), else from PATH.
func etcdServerBinary() (string, error) {
	const name = "netd-etcd"
	var beside string
	if exe, err := os.Executable(); err == nil {
		beside = filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(beside); err == nil {
			return beside, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("embedded etcd: %s is neither next to netd (%s) nor in PATH: install it beside netd (make install does), or give --etcd-endpoints", name, beside)
}

// startEtcdServer runs netd-etcd with settings ec and waits until it
// serves, fails, or ctx ends. Its errors go to netd's stderr, in netd's
// format.
func startEtcdServer(ctx context.Context, ec etcdserver.Config) (*embedded, error) {
	bin, err := etcdServerBinary()
	if err != nil {
		return nil, err
	}
	settings, err := json.Marshal(ec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	m := &embedded{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		answer <- strings.TrimSpace(line)
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(m.exited)
	}()
	fmt.Fprintf(stdin, "%s\n", settings)
	select {
	case a := <-answer:
		if a == etcdserver.AnswerReady {
			return m, nil
		}
		m.Close()
		if msg, ok := strings.CutPrefix(a, etcdserver.AnswerBusy); ok {
			return nil, fmt.Errorf("%w: %s", errEtcdBusy, msg)
		}
		if msg, ok := strings.CutPrefix(a, etcdserver.AnswerError); ok {
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("embedded etcd (%s) ended before it served; its log is above", bin)
	case <-time.After(time.Minute):
		m.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after a minute", ec.DataDir)
	case <-ctx.Done():
		m.Close()
		return nil, ctx.Err()
	}
}

// embeddedPKI makes sure the CA, etcd's server certificate (for the
// node's addresses) and this node's client certificate exist, and points
// netd's etcd client at them.
func embeddedPKI(cfg *Config, nodeIPs []netip.Addr) (*pki.Authority, error) {
	ca, err := pki.OpenAuthority(cfg.PKIDir, cfg.NodeName)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd certificates (--pki-dir): %w", err)
	}
	if err := ca.EnsureServer(cfg.NodeName, nodeIPs); err != nil {
		return nil, fmt.Errorf("embedded etcd certificates (--pki-dir): %w", err)
	}
	if err := ca.EnsureClient(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("embedded etcd certificates (--pki-dir): %w", err)
	}
	if cfg.EtcdCAFile == "" && cfg.EtcdCertFile == "" {
		cfg.EtcdCAFile, cfg.EtcdCertFile, cfg.EtcdKeyFile = ca.Dir.Path(pki.CAFile), ca.Dir.Path(pki.ClientFile), ca.Dir.Path(pki.ClientKeyFile)
	}
	return ca, nil
}

// serveJoin serves the join server on the node's preferred address and
// --join-port, and
// prints the join token when it is new.
func (m *embedded) serveJoin(cfg *Config, ca *pki.Authority, nodeIP netip.Addr, log *slog.Logger) error {
	addr := net.JoinHostPort(nodeIP.String(), strconv.Itoa(cfg.JoinPort))
	_, statErr := os.Stat(ca.Dir.Path(pki.TokenFile))
	token, err := ca.EnsureToken(addr)
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	tlsCfg, err := ca.ServerTLS()
	if err != nil {
		return fmt.Errorf("join server: %w", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("join server on %s (--join-port): %w", addr, err)
	}
	m.join = &http.Server{Handler: ca.JoinHandler(m.Endpoints, log), TLSConfig: tlsCfg, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go m.join.ServeTLS(l, "", "")
	if errors.Is(statErr, os.ErrNotExist) {
		log.Info("new join token: on each other node run `netd join "+token.String()+"`; print it again with `netd token`", "join", addr)
	} else {
		log.Info("other nodes join with `netd join TOKEN`; `netd token` prints TOKEN", "join", addr)
	}
	return nil
}

// Close stops the join server and etcd: netd-etcd stops on Stop within
// 2 seconds, and is killed if it has not after 5.
func (m *embedded) Close() {
	if m.join != nil {
		m.join.Close()
	}
	fmt.Fprintln(m.stdin, etcdserver.Stop)
	m.stdin.Close()
	select {
	case <-m.exited:
	case <-time.After(5 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
	}
}

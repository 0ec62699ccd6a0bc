package netd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// probeTimeout bounds each step of probing an etcd endpoint, so that
// netd says what is wrong within 2s of starting.
const probeTimeout = time.Second

// probeEtcd checks that an etcd answers at the client URL ep the way the
// etcd client will talk to it (plain HTTP or TLS with tlsCfg), and says
// otherwise what failed and what to check: an address nobody answers at,
// a port nothing listens on, a scheme that does not match what the
// server speaks (https to a plain etcd, or http to one with TLS), or a
// certificate (then the error is ErrEtcdTLS: waiting will not fix it).
func probeEtcd(ctx context.Context, cfg *Config, ep string, tlsCfg *tls.Config) error {
	u, err := parseEndpoint(ep)
	if err != nil {
		return err
	}
	err = probeAs(ctx, cfg, ep, u, u.Scheme, tlsCfg)
	var dial dialError
	if err == nil || errors.Is(err, ErrEtcdTLS) || errors.As(err, &dial) {
		return err
	}
	// Something answers, but not as etcd in the URL's scheme: does it in
	// the other one? (etcd closes a connection that starts in the
	// scheme it does not serve.)
	switch {
	case u.Scheme == "https" && probeAs(ctx, cfg, ep, u, "http", nil) == nil:
		return fmt.Errorf("%s: etcd there speaks plain HTTP, not TLS (scheme mismatch); use http://%s, or serve etcd with TLS", ep, u.Host)
	case u.Scheme == "http" && speaksTLS(ctx, hostPort(u)):
		return fmt.Errorf("%s: etcd there speaks TLS, not plain HTTP (scheme mismatch); use https://%s with --etcd-cafile (and a client certificate)", ep, u.Host)
	}
	return err
}

// parseEndpoint parses an etcd client URL: http:// or https:// and a
// host.
func parseEndpoint(ep string) (*url.URL, error) {
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not a URL like https://10.0.0.5:2379", ep)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%s: scheme %q; use http:// or https://", ep, u.Scheme)
	}
	return u, nil
}

// probeAs connects to u in scheme and checks that etcd answers.
func probeAs(ctx context.Context, cfg *Config, ep string, u *url.URL, scheme string, tlsCfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", hostPort(u))
	if err != nil {
		return dialError{dialProblem(ep, u, err)}
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if scheme == "https" {
		return probeTLS(ctx, cfg, ep, u, conn, tlsCfg)
	}
	return probePlain(ep, u, conn)
}

// hostPort is the address the etcd client dials for u: without a port,
// the scheme's (as gRPC does).
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "443"
	if u.Scheme == "http" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// dialError: no connection to the endpoint at all.
type dialError struct{ error }

func (e dialError) Unwrap() error { return e.error }

// speaksTLS reports whether a TLS server answers at addr, whatever its
// certificate and whether it wants one from the client.
func speaksTLS(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer raw.Close()
	err = tls.Client(raw, &tls.Config{InsecureSkipVerify: true}).HandshakeContext(ctx)
	var remote *net.OpError
	return err == nil || errors.As(err, &remote) && remote.Op == "remote error"
}

// dialProblem says why nothing answered at u.
func dialProblem(ep string, u *url.URL, err error) error {
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		_, port, _ := net.SplitHostPort(hostPort(u))
		return fmt.Errorf("%s: connection refused: nothing listens on port %s of %s; is etcd running there, with this port in its --listen-client-urls?", ep, port, u.Hostname())
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("%s: %s is unreachable (%v); check the address and this node's route to it", ep, u.Hostname(), err)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%s: no answer from %s within %s; check the address, that the host is up, and firewalls on the way", ep, u.Hostname(), probeTimeout)
	case errors.As(err, &dns):
		return fmt.Errorf("%s: cannot resolve %s: %v", ep, u.Hostname(), err)
	}
	return fmt.Errorf("%s: %v", ep, err)
}

// probeTLS shakes hands as the etcd client does (ALPN h2) and waits for
// the server's first HTTP/2 frame: with TLS 1.3 a server rejects the
// client's certificate only after the client's side of the handshake.
func probeTLS(ctx context.Context, cfg *Config, ep string, u *url.URL, raw net.Conn, tlsCfg *tls.Config) error {
	c := &tls.Config{}
	if tlsCfg != nil {
		c = tlsCfg.Clone()
	}
	c.NextProtos = []string{"h2"}
	if c.ServerName == "" {
		c.ServerName = u.Hostname()
	}
	conn := tls.Client(raw, c)
	err := conn.HandshakeContext(ctx)
	if err == nil {
		// The HTTP/2 client preface and an empty SETTINGS frame; the
		// server answers with its SETTINGS, or with an alert if it
		// refused us.
		_, err = conn.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0))
		if err == nil {
			var b [1]byte
			_, err = conn.Read(b[:])
		}
	}
	var record tls.RecordHeaderError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &record):
		return fmt.Errorf("%s: etcd there speaks plain HTTP, not TLS (scheme mismatch); use http://%s, or serve etcd with TLS", ep, u.Host)
	case tlsProblem(cfg, ep, err) != nil:
		return tlsProblem(cfg, ep, err)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%s: the server closed the connection during the TLS handshake (%v); is this etcd's client port?", ep, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%s: accepted the connection but did not complete a TLS handshake within %s; is this etcd's client port?", ep, probeTimeout)
	}
	return fmt.Errorf("%s: TLS: %v", ep, err)
}

// probePlain asks GET /version in plain HTTP, which etcd answers on its
// client port with {"etcdserver": ...}.
func probePlain(ep string, u *url.URL, conn net.Conn) error {
	fmt.Fprintf(conn, "GET /version HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", u.Host)
	answer, err := io.ReadAll(io.LimitReader(conn, 4096))
	switch {
	case bytes.HasPrefix(answer, []byte("HTTP/1.")) && bytes.Contains(answer, []byte("etcdserver")):
		return nil
	case len(answer) > 0 && (answer[0] == 0x15 || answer[0] == 0x16) || bytes.Contains(answer, []byte("HTTP request to an HTTPS server")):
		return fmt.Errorf("%s: etcd there speaks TLS, not plain HTTP (scheme mismatch); use https://%s with --etcd-cafile (and a client certificate)", ep, u.Host)
	case bytes.HasPrefix(answer, []byte("HTTP/1.")):
		status, _, _ := bytes.Cut(answer, []byte("\r\n"))
		return fmt.Errorf("%s: answers HTTP, but not as etcd does (GET /version: %s); is this etcd's client port?", ep, status)
	case len(answer) == 0 && (err == nil || errors.Is(err, syscall.ECONNRESET)):
		return fmt.Errorf("%s: closed the connection on a plain HTTP request; if etcd there serves TLS, use https://%s", ep, u.Host)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%s: accepted the connection but did not answer within %s; is this etcd's client port?", ep, probeTimeout)
	}
	return fmt.Errorf("%s: no etcd answer to GET /version (%q, %v)", ep, answer[:min(len(answer), 40)], err)
}

// etcdProblems probes every endpoint at once: nil when one answers as
// etcd, else what is wrong with each.
func (d *daemon) etcdProblems(ctx context.Context, tlsCfg *tls.Config) []error {
	return probeAll(ctx, d.cfg, d.endpoints, tlsCfg)
}

func probeAll(ctx context.Context, cfg *Config, endpoints []string, tlsCfg *tls.Config) []error {
	problems := make([]error, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Go(func() { problems[i] = probeEtcd(ctx, cfg, ep, tlsCfg) })
	}
	wg.Wait()
	if slices.Contains(problems, nil) {
		return nil
	}
	return problems
}

// explainEtcd adds to err, a failed etcd request, what is wrong with the
// endpoints, if a probe finds something.
func (d *daemon) explainEtcd(ctx context.Context, err error) error {
	tlsCfg, tlsErr := etcdTLS(d.cfg)
	if tlsErr != nil {
		return err
	}
	if problems := d.etcdProblems(ctx, tlsCfg); len(problems) > 0 {
		return fmt.Errorf("%w; %w", err, errors.Join(problems...))
	}
	return err
}

// probeAfter is how long netd's first request to etcd may take before a
// probe looks for what is wrong: a healthy etcd answers well within it,
// and then no probe competes with the request.
const probeAfter = 200 * time.Millisecond

// connectEtcd returns a client of etcd once etcd answers, and whether
// first, netd's first request, succeeded on it. first runs as soon as
// the client dials; the probe, which is there to say what is wrong when
// etcd does not answer, runs only when first failed or takes longer than
// probeAfter. When the probe finds no endpoint answering, first is
// stopped and netd waits for etcd (waitEtcd, which returns ErrEtcdTLS
// when a certificate is refused), then dials again: a client that dialed
// a dead etcd could sit in gRPC's reconnect backoff for seconds after
// etcd is back.
func (d *daemon) connectEtcd(ctx context.Context, tlsCfg *tls.Config, first func(context.Context, *clientv3.Client) error) (*clientv3.Client, bool, error) {
	var problems []error // what the probe found; nil: probe again
	if cli, err := newClient(d.endpoints, tlsCfg); err == nil {
		fctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		defer cancel()
		tried := make(chan error, 1)
		go func() { tried <- first(fctx, cli) }()
		select {
		case err := <-tried:
			if err == nil {
				return cli, true, nil
			}
			if problems = d.etcdProblems(ctx, tlsCfg); problems == nil {
				return cli, false, nil // etcd answers; the caller retries
			}
		case <-time.After(probeAfter):
			if problems = d.etcdProblems(ctx, tlsCfg); problems == nil {
				return cli, <-tried == nil, nil
			}
			cancel()
			<-tried
		}
		cli.Close()
	}
	if err := d.waitEtcd(ctx, tlsCfg, problems); err != nil {
		return nil, false, err
	}
	cli, err := newClient(d.endpoints, tlsCfg)
	return cli, false, err
}

// waitEtcd returns once one endpoint answers as etcd, or with ErrEtcdTLS
// when none answers and one refused the certificates. Meanwhile it says
// what is wrong with each endpoint: in the log (at once, whenever it
// changes, and every 30s) and as the status ("waiting for etcd at ...").
// problems are what a probe just found (said at once), or nil.
func (d *daemon) waitEtcd(ctx context.Context, tlsCfg *tls.Config, problems []error) error {
	wait := time.Second
	var last []string
	var lastLogged time.Time
	for ; ; problems = nil {
		if problems == nil {
			problems = d.etcdProblems(ctx, tlsCfg)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if problems == nil {
			return nil
		}
		var texts []string
		for _, err := range problems {
			if errors.Is(err, ErrEtcdTLS) {
				return err
			}
			texts = append(texts, err.Error())
		}
		d.setStarting("waiting for etcd at " + strings.Join(texts, "; "))
		if !slices.Equal(texts, last) || time.Since(lastLogged) > 30*time.Second {
			for _, t := range texts {
				d.log.Error("waiting for etcd", "problem", t)
			}
			last, lastLogged = texts, time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

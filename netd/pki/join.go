package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// A node joins the cluster of a node that runs the embedded etcd with a
// token printed there ("netd token"):
//
//	ADDRESS/SECRET/sha256:FINGERPRINT
//
// ADDRESS is that node's join port, SECRET 128 random bits, FINGERPRINT
// the SHA-256 of its CA certificate. The token authenticates both sides:
// the joining node accepts only a server whose certificate chains to the
// CA with that fingerprint (no certificate is trusted on first use), and
// sends the secret only then; the server signs a client certificate only
// for a request that carries the secret. The joining node's private key
// never leaves it (it sends a certificate request).

// Token is a join token.
type Token struct {
	Addr   string // host:port of the join server
	Secret string // hex
	CA     string // the CA certificate's SHA-256, hex
}

const tokenPrefix = "sha256:"

func (t Token) String() string { return t.Addr + "/" + t.Secret + "/" + tokenPrefix + t.CA }

// ParseToken reads a token as String writes it.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	if len(parts) != 3 || !strings.HasPrefix(parts[2], tokenPrefix) {
		return Token{}, errors.New("a join token looks like 192.168.50.1:2378/<32 hex digits>/sha256:<64 hex digits>; get it with `netd token` on the node that runs the embedded etcd")
	}
	t := Token{Addr: parts[0], Secret: parts[1], CA: strings.TrimPrefix(parts[2], tokenPrefix)}
	if _, _, err := net.SplitHostPort(t.Addr); err != nil {
		return Token{}, fmt.Errorf("join token: address %q: %v", t.Addr, err)
	}
	if !isHex(t.Secret, 32) {
		return Token{}, errors.New("join token: the secret is not 32 hex digits")
	}
	if !isHex(t.CA, 64) {
		return Token{}, errors.New("join token: the CA fingerprint is not 64 hex digits")
	}
	return t, nil
}

func isHex(s string, n int) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b)*2 == n && strings.ToLower(s) == s
}

// ReadToken reads the token in dir.
func ReadToken(dir string) (Token, error) {
	data, err := os.ReadFile(Dir(dir).Path(TokenFile))
	if err != nil {
		return Token{}, err
	}
	return ParseToken(string(data))
}

// EnsureToken returns the join token of this CA for the join server at
// addr: the stored one (its address updated), or a new one.
func (a *Authority) EnsureToken(addr string) (Token, error) {
	t, err := ReadToken(string(a.Dir))
	if err != nil || t.CA != a.Fingerprint() {
		return a.RotateToken(addr)
	}
	if t.Addr != addr {
		t.Addr = addr
		return t, writeFile(a.Dir.Path(TokenFile), []byte(t.String()+"\n"), 0o600)
	}
	return t, nil
}

// RotateToken stores a new secret: the old token no longer joins.
func (a *Authority) RotateToken(addr string) (Token, error) {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return Token{}, err
	}
	t := Token{Addr: addr, Secret: hex.EncodeToString(secret), CA: a.Fingerprint()}
	return t, writeFile(a.Dir.Path(TokenFile), []byte(t.String()+"\n"), 0o600)
}

// ServerTLS is the TLS config of the join server: etcd's server
// certificate with the CA in its chain, so that a joining node can find
// the CA its token pins.
func (a *Authority) ServerTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(a.Dir.Path(ServerFile), a.Dir.Path(ServerKeyFile))
	if err != nil {
		return nil, err
	}
	cert.Certificate = append(cert.Certificate, a.cert.Raw)
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// joinRequest and joinResponse are the body of POST /v1/join.
type joinRequest struct {
	Secret string `json:"secret"`
	Node   string `json:"node"`
	CSR    []byte `json:"csr"` // DER
}

type joinResponse struct {
	CA        string   `json:"ca"`   // PEM
	Cert      string   `json:"cert"` // PEM
	Endpoints []string `json:"endpoints"`
}

// JoinHandler serves POST /v1/join: given the current token's secret
// (read at each request, so `netd token --rotate` takes effect at once),
// it signs the node's certificate request and returns it with the CA
// and etcd's client URLs.
func (a *Authority) JoinHandler(endpoints []string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/join", func(w http.ResponseWriter, r *http.Request) {
		var req joinRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			http.Error(w, "bad join request: "+err.Error(), http.StatusBadRequest)
			return
		}
		t, err := ReadToken(string(a.Dir))
		if err != nil {
			log.Error("join: no join token", "err", err)
			http.Error(w, "this node has no join token", http.StatusServiceUnavailable)
			return
		}
		if subtle.ConstantTimeCompare([]byte(req.Secret), []byte(t.Secret)) != 1 {
			log.Warn("join refused: wrong secret", "from", r.RemoteAddr, "node", short(req.Node))
			http.Error(w, "wrong join token: get the current one with `netd token` on the node that runs the embedded etcd", http.StatusForbidden)
			return
		}
		if !validName(req.Node) {
			http.Error(w, "bad node name", http.StatusBadRequest)
			return
		}
		cert, err := a.SignClient(req.CSR, req.Node)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		log.Info("node joined: signed its etcd client certificate", "node", req.Node, "from", r.RemoteAddr)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(joinResponse{CA: string(a.CAPEM()), Cert: string(cert), Endpoints: endpoints})
	})
	return mux
}

// validName: what netd accepts as a node name.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func short(s string) string { return s[:min(len(s), 64)] }

// ErrNotThatServer: the join server is not the one the token names.
var ErrNotThatServer = errors.New("join server does not have the token's CA")

// Join gets this node (name) an etcd client certificate from the join
// server t names and stores it in dir with the CA and etcd's endpoints,
// which it returns.
func Join(ctx context.Context, t Token, name, dir string) ([]string, error) {
	d := Dir(dir)
	if _, err := os.Stat(d.Path(CAKeyFile)); err == nil {
		return nil, fmt.Errorf("%s holds a CA key: this node runs an embedded etcd of its own; join from another --pki-dir (or --root-dir)", dir)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(joinRequest{Secret: t.Secret, Node: name, CSR: csr})
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: pinned(t.CA)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+t.Addr+"/v1/join", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("joining at %s: %w", t.Addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("joining at %s: %s: %s", t.Addr, resp.Status, strings.TrimSpace(string(msg)))
	}
	var jr joinResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&jr); err != nil {
		return nil, fmt.Errorf("joining at %s: %w", t.Addr, err)
	}
	caBlock, _ := pem.Decode([]byte(jr.CA))
	if caBlock == nil || Fingerprint(caBlock.Bytes) != t.CA {
		return nil, fmt.Errorf("%w: it sent another CA", ErrNotThatServer)
	}
	certBlock, _ := pem.Decode([]byte(jr.Cert))
	if certBlock == nil {
		return nil, fmt.Errorf("joining at %s: no certificate in the answer", t.Addr)
	}
	if len(jr.Endpoints) == 0 {
		return nil, fmt.Errorf("joining at %s: no etcd endpoints in the answer", t.Addr)
	}
	if err := os.MkdirAll(dir, dirPermissions); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, dirPermissions); err != nil {
		return nil, err
	}
	if err := writeKey(d.Path(ClientKeyFile), key); err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{ClientFile, []byte(jr.Cert)}, {CAFile, []byte(jr.CA)}, {EndpointsFile, []byte(strings.Join(jr.Endpoints, "\n") + "\n")}} {
		if err := writeFile(d.Path(f.name), f.data, 0o644); err != nil {
			return nil, err
		}
	}
	return jr.Endpoints, nil
}

// pinned trusts only a server whose certificate chains to the CA with
// the SHA-256 fingerprint fp, which the server sends in its chain.
func pinned(fp string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified below against the pinned CA instead of the system's.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: it presented no certificate", ErrNotThatServer)
			}
			roots := x509.NewCertPool()
			for _, c := range cs.PeerCertificates {
				if c.IsCA && Fingerprint(c.Raw) == fp {
					roots.AddCert(c)
				}
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err != nil {
				return fmt.Errorf("%w (sha256:%s): %v", ErrNotThatServer, fp, err)
			}
			return nil
		},
	}
}

package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

func authority(t *testing.T) *Authority {
	t.Helper()
	a, err := OpenAuthority(filepath.Join(t.TempDir(), "pki"), "node1")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureServer("node1", []netip.Addr{netip.MustParseAddr("192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	return a
}

// The CA is made once and kept; keys are readable by root only, even
// under umask 000; the server certificate follows the node IP.
func TestAuthority(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "pki")
	a, err := OpenAuthority(dir, "node1")
	if err != nil {
		t.Fatal(err)
	}
	ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if err := a.EnsureServer("node1", []netip.Addr{ip1}); err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureClient("node1"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700, CAKeyFile: 0o600, ServerKeyFile: 0o600, ClientKeyFile: 0o600, CAFile: 0o644, ServerFile: 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s/%s: %v %v, want %v", dir, name, st.Mode().Perm(), err, want)
		}
	}
	server := func() []byte { b, _ := os.ReadFile(filepath.Join(dir, ServerFile)); return b }
	first := server()
	again, err := OpenAuthority(dir, "node1")
	if err != nil || again.Fingerprint() != a.Fingerprint() {
		t.Fatalf("reopened: %v, fingerprint %s, was %s", err, again.Fingerprint(), a.Fingerprint())
	}
	if err := again.EnsureServer("node1", []netip.Addr{ip1}); err != nil || string(server()) != string(first) {
		t.Fatalf("same IP: the server certificate was replaced (%v)", err)
	}
	if err := again.EnsureServer("node1", []netip.Addr{ip2}); err != nil || string(server()) == string(first) {
		t.Fatalf("new node IP: the server certificate was kept (%v)", err)
	}
	block, _ := pem.Decode(server())
	cert, _ := x509.ParseCertificate(block.Bytes)
	if err := cert.VerifyHostname("192.0.2.2"); err != nil {
		t.Error(err)
	}
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
}

func TestToken(t *testing.T) {
	a := authority(t)
	tok, err := a.EnsureToken("192.0.2.1:2378")
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseToken(tok.String() + "\n")
	if err != nil || parsed != tok {
		t.Fatalf("parsed %+v %v, want %+v", parsed, err, tok)
	}
	if again, _ := a.EnsureToken("192.0.2.9:2378"); again.Secret != tok.Secret || again.Addr != "192.0.2.9:2378" {
		t.Errorf("new address: %+v; want the same secret", again)
	}
	if rotated, _ := a.RotateToken("192.0.2.9:2378"); rotated.Secret == tok.Secret {
		t.Error("rotate kept the secret")
	}
	for _, bad := range []string{"", "192.0.2.1:2378", "192.0.2.1/" + tok.Secret + "/sha256:" + tok.CA, "192.0.2.1:2378/xyz/sha256:" + tok.CA,
		"192.0.2.1:2378/" + tok.Secret + "/" + tok.CA, "192.0.2.1:2378/" + tok.Secret + "/sha256:" + tok.CA[:10]} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

// joinServer serves a's join handler over TLS on a random loopback port
// and counts the requests that reached it.
func joinServer(t *testing.T, a *Authority) (addr string, requests *atomic.Int32) {
	t.Helper()
	cfg, err := a.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	requests = new(atomic.Int32)
	h := a.JoinHandler([]string{"https://192.0.2.1:2379"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		h.ServeHTTP(w, r)
	}))
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://"), requests
}

// The token authenticates both sides: the right one gets a client
// certificate of the CA (the key never leaves the node); a wrong secret
// gets nothing; a server without the pinned CA never sees the secret.
func TestJoin(t *testing.T) {
	a := authority(t)
	addr, requests := joinServer(t, a)
	tok, err := a.EnsureToken(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("right token", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "pki")
		eps, err := Join(ctx, tok, "node2", dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(eps) != 1 || eps[0] != "https://192.0.2.1:2379" {
			t.Errorf("endpoints %q", eps)
		}
		if stored, _ := Dir(dir).Joined(); len(stored) != 1 || !Dir(dir).HasClient() {
			t.Errorf("stored endpoints %q, has client %v", stored, Dir(dir).HasClient())
		}
		cert, err := tls.LoadX509KeyPair(filepath.Join(dir, ClientFile), filepath.Join(dir, ClientKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(a.CAPEM())
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || leaf.Subject.CommonName != "node2" {
			t.Errorf("client certificate %s: %v", leaf.Subject, err)
		}
		if st, _ := os.Stat(filepath.Join(dir, ClientKeyFile)); st.Mode().Perm() != 0o600 {
			t.Errorf("client key mode %v", st.Mode().Perm())
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "pki")
		bad := tok
		bad.Secret = strings.Repeat("0", 32)
		if _, err := Join(ctx, bad, "node2", dir); err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "netd token") {
			t.Fatalf("wrong secret: %v", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("files written after a refused join: %v", err)
		}
	})
	t.Run("rotated token", func(t *testing.T) {
		if _, err := a.RotateToken(addr); err != nil {
			t.Fatal(err)
		}
		if _, err := Join(ctx, tok, "node2", filepath.Join(t.TempDir(), "pki")); err == nil {
			t.Fatal("the token from before the rotation still joins")
		}
		tok, _ = ReadToken(string(a.Dir))
	})
	t.Run("server without the pinned CA", func(t *testing.T) {
		impostor := authority(t) // another CA, at the address the token names
		addr2, seen := joinServer(t, impostor)
		stolen := tok
		stolen.Addr = addr2
		before := requests.Load()
		_, err := Join(ctx, stolen, "node2", filepath.Join(t.TempDir(), "pki"))
		if !errors.Is(err, ErrNotThatServer) {
			t.Fatalf("join with an impostor server: %v, want ErrNotThatServer", err)
		}
		if seen.Load() != 0 || requests.Load() != before {
			t.Fatal("the secret was sent to a server that is not the token's")
		}
	})
}

package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"os"
	"testing"
)

// A server certificate verifies for its address against the CA and is
// good for client authentication too; a client certificate serves nobody.
func TestIssue(t *testing.T) {
	ca, err := New(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(ca.Cert)
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("reading %s: %v", ca.Cert, err)
	}
	ip := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name       string
		subject    Subject
		servesIP   bool
		wantGroups int
	}{
		{"server", Subject{CommonName: "etcd", IPs: []netip.Addr{ip}}, true, 0},
		{"client", Subject{CommonName: "admin", Groups: []string{"system:masters"}}, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ca.Issue(tc.name, tc.subject)
			if err != nil {
				t.Fatal(err)
			}
			pair, err := tls.LoadX509KeyPair(p.Cert, p.Key)
			if err != nil {
				t.Fatal(err)
			}
			cert := pair.Leaf
			if len(cert.Subject.Organization) != tc.wantGroups {
				t.Errorf("groups %v, want %d", cert.Subject.Organization, tc.wantGroups)
			}
			client := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
			if _, err := cert.Verify(client); err != nil {
				t.Errorf("as a client: %v", err)
			}
			server := x509.VerifyOptions{Roots: roots, DNSName: ip.String()}
			if _, err := cert.Verify(server); (err == nil) != tc.servesIP {
				t.Errorf("serving %s: %v, want served %v", ip, err, tc.servesIP)
			}
		})
	}
}

package kubecluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/berthnet/berth/internal/testpki"
)

// pki is the cluster's certificate authority (it signs every certificate;
// kubelets and the apiserver trust clients it signed) and the files made
// from it.
type pki struct {
	*testpki.CA
	// Service account token keys (the apiserver verifies, signs; the
	// controller manager signs for its controllers).
	SAKey, SAPub string
}

// pair is a certificate and its key, as PEM files.
type pair = testpki.Pair

func newPKI(dir string) (*pki, error) {
	ca, err := testpki.New(dir, "berth test cluster CA")
	if err != nil {
		return nil, err
	}
	p := &pki{CA: ca, SAKey: filepath.Join(dir, "sa-key.pem"), SAPub: filepath.Join(dir, "sa-pub.pem")}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := testpki.WriteKey(p.SAKey, saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	return p, testpki.WritePEM(p.SAPub, "PUBLIC KEY", pub)
}

// issue signs a certificate named name: a client certificate for user cn
// in groups, a server certificate for ips and dnsNames when any is given.
func (p *pki) issue(name, cn string, groups []string, ips []netip.Addr, dnsNames []string) (pair, error) {
	return p.Issue(name, testpki.Subject{CommonName: cn, Groups: groups, IPs: ips, DNSNames: dnsNames})
}

// kubeconfig writes a kubeconfig for user (certificate c) of the cluster
// at server.
func (p *pki) kubeconfig(path, server, user string, c pair) error {
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: berth-test
  context:
    cluster: berth-test
    user: %s
current-context: berth-test
`, server, p.Cert, user, c.Cert, c.Key, user)
	return os.WriteFile(path, []byte(data), 0o600)
}

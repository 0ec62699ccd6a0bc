// Package testpki makes throwaway certificate authorities for tests: a CA
// and the client and server certificates it signs, as the PEM files etcd,
// netd and Kubernetes' components take.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// validity is long enough for any test run and short enough that a
// leftover certificate is worthless.
const validity = 7 * 24 * time.Hour

// CA is a certificate authority whose files are in one directory.
type CA struct {
	dir string
	// Cert is the CA certificate's PEM file (ca.pem), what peers trust.
	Cert   string
	cert   *x509.Certificate
	key    crypto.Signer
	serial int64
}

// Pair is a certificate and its key, as PEM files.
type Pair struct{ Cert, Key string }

// Subject says whom a certificate names. Every certificate is good for
// client authentication; one with IPs or DNSNames also serves them.
type Subject struct {
	CommonName string
	// Groups are the Organization entries, which Kubernetes reads as the
	// user's groups.
	Groups   []string
	IPs      []netip.Addr
	DNSNames []string
}

// New makes a CA named name in dir (ca.pem, ca-key.pem).
func New(dir, name string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{dir: dir, Cert: filepath.Join(dir, "ca.pem"), cert: cert, key: key, serial: 1}
	if err := WritePEM(ca.Cert, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	return ca, WriteKey(filepath.Join(dir, "ca-key.pem"), key)
}

// Dir is where the CA writes its files.
func (ca *CA) Dir() string { return ca.dir }

// Issue signs a certificate for s, written as <name>.pem and
// <name>-key.pem in the CA's directory. It is not safe for concurrent use.
func (ca *CA) Issue(name string, s Subject) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	ca.serial++
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial),
		Subject:      pkix.Name{CommonName: s.CommonName, Organization: s.Groups},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     s.DNSNames,
	}
	for _, ip := range s.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	if len(s.IPs) > 0 || len(s.DNSNames) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("signing %s: %w", name, err)
	}
	p := Pair{Cert: filepath.Join(ca.dir, name+".pem"), Key: filepath.Join(ca.dir, name+"-key.pem")}
	if err := WritePEM(p.Cert, "CERTIFICATE", der); err != nil {
		return Pair{}, err
	}
	return p, WriteKey(p.Key, key)
}

// WriteKey writes key as a PKCS #8 PEM file only its owner reads.
func WriteKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return WritePEM(path, "PRIVATE KEY", der)
}

// WritePEM writes one PEM block of type kind, readable by its owner only.
func WritePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

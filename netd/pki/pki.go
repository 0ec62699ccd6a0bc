// Package pki keeps the certificates of netd's embedded etcd: the
// cluster's CA, the server certificate etcd presents, the netds' client
// certificates, and the join token with which another node gets its own
// (see Token, Authority.JoinHandler and Join).
//
// Files in the directory (0700; keys and the token 0600):
//
//	ca.pem, ca-key.pem          the CA (on the node that runs the embedded etcd)
//	server.pem, server-key.pem  etcd's certificate: the node IP, 127.0.0.1, localhost
//	client.pem, client-key.pem  this node's client certificate
//	ca.pem                      on a joined node: the CA, fetched by Join
//	join-token                  the token other nodes join with
//	endpoints                   on a joined node: etcd's client URLs, one a line
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names in the directory.
const (
	CAFile         = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerFile     = "server.pem"
	ServerKeyFile  = "server-key.pem"
	ClientFile     = "client.pem"
	ClientKeyFile  = "client-key.pem"
	TokenFile      = "join-token"
	EndpointsFile  = "endpoints"
	validity       = 10 * 365 * 24 * time.Hour
	renewBefore    = 30 * 24 * time.Hour
	backdate       = time.Hour // clocks of the nodes may differ a little
	dirPermissions = 0o700
)

// Dir is a pki directory.
type Dir string

// Path is the path of one of the files.
func (d Dir) Path(name string) string { return filepath.Join(string(d), name) }

// HasClient reports whether the directory holds a CA and a client
// certificate, as on a node that joined or runs the embedded etcd.
func (d Dir) HasClient() bool {
	for _, f := range []string{CAFile, ClientFile, ClientKeyFile} {
		if _, err := os.Stat(d.Path(f)); err != nil {
			return false
		}
	}
	return true
}

// Joined returns the etcd endpoints a Join stored; none when the node
// did not join.
func (d Dir) Joined() ([]string, error) {
	data, err := os.ReadFile(d.Path(EndpointsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(data)), nil
}

// Authority is the CA on the node that runs the embedded etcd.
type Authority struct {
	Dir  Dir
	cert *x509.Certificate
	key  crypto.Signer
}

// OpenAuthority loads the CA in dir, or makes one there when the
// directory has none yet (name goes into its subject). A directory that
// holds a joined node's files (a CA without its key) is refused: that
// node uses another node's etcd.
func OpenAuthority(dir, name string) (*Authority, error) {
	d := Dir(dir)
	if err := os.MkdirAll(dir, dirPermissions); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, dirPermissions); err != nil {
		return nil, err
	}
	cert, key, err := load(d.Path(CAFile), d.Path(CAKeyFile))
	switch {
	case err == nil:
		if !cert.IsCA {
			return nil, fmt.Errorf("%s is not a CA certificate", d.Path(CAFile))
		}
		return &Authority{Dir: d, cert: cert, key: key}, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	if _, err := os.Stat(d.Path(CAFile)); err == nil {
		return nil, fmt.Errorf("%s holds a CA without its key (%s): this node joined another node's etcd (netd join); give it --etcd-endpoints, or another --pki-dir to run an etcd of its own", dir, CAKeyFile)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "berth etcd CA (" + name + ")"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := sign(tmpl, nil, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	if err := writeKey(d.Path(CAKeyFile), caKey); err != nil {
		return nil, err
	}
	if err := writePEM(d.Path(CAFile), "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Dir: d, cert: cert, key: caKey}, nil
}

// Fingerprint is the SHA-256 of the CA certificate, in hex: what a join
// token pins (`openssl x509 -in ca.pem -noout -fingerprint -sha256`
// shows the same digits).
func (a *Authority) Fingerprint() string { return Fingerprint(a.cert.Raw) }

// Fingerprint is the SHA-256 of a DER certificate, in lower-case hex.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// EnsureServer makes sure server.pem is a certificate of this CA for
// every address in ips, 127.0.0.1 and localhost that is valid for a
// while yet; it issues a new one otherwise (the node IP changed). It is
// good for both ends of TLS, as etcd's peer port wants.
func (a *Authority) EnsureServer(name string, ips []netip.Addr) error {
	ips = append(slices.Clone(ips), netip.MustParseAddr("127.0.0.1"))
	cert, _, err := load(a.Dir.Path(ServerFile), a.Dir.Path(ServerKeyFile))
	if err == nil && a.current(cert) && covers(cert, ips) {
		return nil
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	return a.issue(tmpl, a.Dir.Path(ServerFile), a.Dir.Path(ServerKeyFile))
}

// EnsureClient makes sure client.pem is a client certificate of this CA
// (for the netd on this node).
func (a *Authority) EnsureClient(name string) error {
	cert, _, err := load(a.Dir.Path(ClientFile), a.Dir.Path(ClientKeyFile))
	if err == nil && a.current(cert) {
		return nil
	}
	return a.issue(clientTemplate(name), a.Dir.Path(ClientFile), a.Dir.Path(ClientKeyFile))
}

// CAPEM is the CA certificate, PEM-encoded.
func (a *Authority) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw})
}

// SignClient issues a client certificate for the public key of a
// certificate request (its signature checked): the joining node keeps its
// private key to itself.
func (a *Authority) SignClient(csrDER []byte, name string) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	der, err := sign(clientTemplate(name), a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// current: signed by this CA and not expiring soon.
func (a *Authority) current(cert *x509.Certificate) bool {
	return cert.CheckSignatureFrom(a.cert) == nil && time.Until(cert.NotAfter) > renewBefore
}

func (a *Authority) issue(tmpl *x509.Certificate, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := sign(tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writePEM(certPath, "CERTIFICATE", der, 0o644)
}

func clientTemplate(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// sign fills serial and validity and signs tmpl with parent (nil: self-signed).
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-backdate)
	tmpl.NotAfter = time.Now().Add(validity)
	if parent == nil {
		parent = tmpl
	}
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
}

func covers(cert *x509.Certificate, ips []netip.Addr) bool {
	for _, ip := range ips {
		if !slices.ContainsFunc(cert.IPAddresses, func(have net.IP) bool { return have.Equal(ip.AsSlice()) }) {
			return false
		}
	}
	return true
}

// load reads a certificate and its key.
func load(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not belong to %s", keyPath, certPath)
	}
	return cert, key, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, perm fs.FileMode) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), perm)
}

// writeFile writes data atomically with perm, whatever the umask.
func writeFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

package testbed

import (
	"crypto/tls"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/berthnet/berth/internal/testpki"
)

// TLSFiles are the PEM files of a test CA, a server certificate for the
// etcd members' addresses and a client certificate, as etcd and netd's
// --etcd-cafile/--etcd-certfile/--etcd-keyfile take them.
type TLSFiles struct {
	CA                    string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
}

// ClientConfig is the TLS config of a client presenting the client
// certificate and trusting the CA.
func (f *TLSFiles) ClientConfig() (*tls.Config, error) {
	return (&transport.TLSInfo{CertFile: f.ClientCert, KeyFile: f.ClientKey, TrustedCAFile: f.CA}).ClientConfig()
}

// NewTLSFiles makes a CA of its own with a server certificate for
// serverIPs and a client certificate in dir, e.g. to show that a client
// trusting another CA, or presenting another CA's certificate, is
// refused by a member started with StartEtcdTLS.
func NewTLSFiles(dir string, serverIPs ...netip.Addr) (*TLSFiles, error) {
	return newTLSFiles(dir, serverIPs)
}

// newTLSFiles makes a CA and certificates in dir.
func newTLSFiles(dir string, serverIPs []netip.Addr) (*TLSFiles, error) {
	ca, err := testpki.New(dir, "berth testbed CA")
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue("server", testpki.Subject{CommonName: "etcd", IPs: serverIPs})
	if err != nil {
		return nil, fmt.Errorf("testbed: server certificate: %w", err)
	}
	client, err := ca.Issue("client", testpki.Subject{CommonName: "netd"})
	if err != nil {
		return nil, fmt.Errorf("testbed: client certificate: %w", err)
	}
	return &TLSFiles{
		CA:         ca.Cert,
		ServerCert: server.Cert, ServerKey: server.Key,
		ClientCert: client.Cert, ClientKey: client.Key,
	}, nil
}

// Package etcdserver is what netd and its embedded etcd share: netd runs
// the single-member etcd of a cluster that has none as a child process,
// cmd/netd-etcd. The server lives in that binary so that netd does not
// link etcd's server: its package initialisation alone doubled netd's
// start-up time and cost 4-5 MiB of resident memory on every node, where
// only one node runs it.
//
// netd and netd-etcd speak over the child's standard streams: netd writes
// the Config as one JSON line on stdin; netd-etcd answers one line on
// stdout: AnswerReady once etcd serves, or AnswerError or AnswerBusy and
// the reason, and exits; a later Stop line on stdin stops etcd cleanly,
// and stdin closing without it (netd died) ends netd-etcd at once, as
// netd's crash ended the etcd it ran in process before.
package etcdserver

// The lines of the protocol.
const (
	AnswerReady = "ready"
	AnswerError = "error: "
	// AnswerBusy: a port or the data directory is still held, by the
	// netd-etcd of a netd that just died, which is ending: try again.
	AnswerBusy = "busy: "
	Stop       = "stop"
)

// Config is what netd asks of its embedded etcd.
type Config struct {
	Name    string `json:"name"`
	DataDir string `json:"dataDir"`
	// ClientURLs are where etcd listens for clients; AdvertiseClientURLs
	// what it tells them.
	ClientURLs          []string `json:"clientURLs"`
	AdvertiseClientURLs []string `json:"advertiseClientURLs"`
	// PeerURL is the peer listener: loopback, as there are no other
	// members.
	PeerURL string `json:"peerURL"`
	// TLS, when set, is etcd's server certificate and the CA its clients'
	// certificates must be signed by; unset: plain HTTP.
	TLS *TLSFiles `json:"tls,omitempty"`
}

// TLSFiles are PEM files.
type TLSFiles struct {
	CertFile      string `json:"certFile"`
	KeyFile       string `json:"keyFile"`
	TrustedCAFile string `json:"trustedCAFile"`
}

package testbed

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/netnsdir"
)

// netnsDir is where `ip netns` keeps the bind mounts of named namespaces.
const netnsDir = "/run/netns"

// NetNS is a named network namespace of the test bed (visible in
// `ip netns list`, so a person can look inside while a test runs).
type NetNS struct {
	Name string // e.g. berthtb-1234x5f3a-node1
	ns.NetNS
	tb *Testbed
}

// newNetNS creates the named namespace /run/netns/name. `ip netns add`
// takes care of the shared mount propagation the bind mount needs.
func newNetNS(tb *Testbed, name string) (*NetNS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("creating network namespace %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	h, err := ns.GetNS(filepath.Join(netnsDir, name))
	if err != nil {
		deleteNetNS(name)
		return nil, fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	n := &NetNS{Name: name, NetNS: h, tb: tb}
	err = n.Do(func() error { return linkUp("lo") })
	if err != nil {
		n.Close()
		deleteNetNS(name)
		return nil, fmt.Errorf("bringing up lo in %s: %w", name, err)
	}
	return n, nil
}

// deleteNetNS unmounts and removes a named namespace; it is gone once the
// last process inside it has exited. The directory the CNI plugins kept
// for it (internal/netnsdir: locks, host port claims) goes first.
func deleteNetNS(name string) error {
	netnsdir.Remove(filepath.Join(netnsDir, name))
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err != nil {
		if _, statErr := os.Stat(filepath.Join(netnsDir, name)); os.IsNotExist(statErr) {
			return nil
		}
		return fmt.Errorf("deleting network namespace %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Do runs f with the calling goroutine's thread inside the namespace.
func (n *NetNS) Do(f func() error) error {
	return n.NetNS.Do(func(ns.NetNS) error { return f() })
}

// Run runs a command inside the namespace and returns its combined output.
// The error includes the output, so a test can print just the error.
func (n *NetNS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out []byte
	err := n.Do(func() error {
		var err error
		// The child is forked from this thread, so it starts in the namespace.
		out, err = exec.CommandContext(ctx, name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		return out, fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// DialContext opens a connection from inside the namespace. The socket
// belongs to the namespace it was created in, whichever thread uses it.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient is an HTTP client whose connections start inside the
// namespace, e.g. for a daemon's metrics endpoint on the node's loopback.
func (n *NetNS) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true},
	}
}

// Get fetches url from inside the namespace and returns the body; a
// status other than 200 is an error carrying the body.
func (n *NetNS) Get(ctx context.Context, url string) ([]byte, error) {
	return get(ctx, n.HTTPClient(), url)
}

func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// Start starts a long-running process inside the namespace; see Process.
func (n *NetNS) Start(spec ProcSpec) (*Process, error) {
	return n.tb.start(n, spec)
}

// inode identifies the namespace, to find the processes inside it.
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

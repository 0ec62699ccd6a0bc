package netd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berthnet/berth/test/testbed"
)

// Nodes 1 and 2 share an L2 segment; node 3 is behind a router. Two
// networks run side by side on the same nodes: hostgw (which cannot reach
// node 3 and says so) and vxlan with directRouting (plain routes to the
// neighbour, VXLAN across the router). Neither touches the other's routes.
func TestSegments(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 3, Segment2: []int{3}})
	etcd := []string{startEtcd(t, tb).ClientURL}
	hg := newCluster(t, tb, etcd, "hg", 9473, "--network-cidr", "10.10.0.0/16", "--mode", "hostgw")
	dr := newCluster(t, tb, etcd, "dr", 9474, "--network-cidr", "10.20.0.0/16", "--mode", "vxlan", "--vni", "2", "--direct-routing")
	for i := 1; i <= 3; i++ {
		hg.start(i)
		dr.start(i)
	}
	sub := func(c *cluster, i int) netip.Prefix { return c.lease(i).Subnet }
	for i := 1; i <= 3; i++ {
		hg.converged(i, 2)
		dr.converged(i, 2)
	}
	n1 := tb.Node(1)

	t.Run("hostgw", func(t *testing.T) {
		if l := hg.lease(1); l.MTU != 1500 || l.Mode != "hostgw" {
			t.Errorf("lease: %+v", l)
		}
		r := routes(t, n1)
		if got, want := r[sub(hg, 2).String()], fmt.Sprintf("%s via 192.168.50.2 dev eth0", sub(hg, 2)); got != want {
			t.Errorf("route to node2: %q, want %q", got, want)
		}
		if got := r[sub(hg, 3).String()]; got != "" {
			t.Errorf("route to node3 behind the router: %q", got)
		}
		st, err := hg.status(1)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Peers {
			switch p.Name {
			case "node2":
				if p.Error != "" {
					t.Errorf("node2: %s", p.Error)
				}
			case "node3":
				if !strings.Contains(p.Error, "192.168.60.3 is not on this node's L2 segment") || !strings.Contains(p.Error, "via 192.168.50.254") {
					t.Errorf("node3 error: %q", p.Error)
				}
			}
		}
		out, err := n1.Run(context.Background(), hg.bin, "status", "--metrics-address", hg.metricsAddr())
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "ERROR: node IP 192.168.60.3") {
			t.Errorf("netd status should exit 2 naming node3: %v\n%s", err, out)
		}
		m, _ := n1.Get(context.Background(), "http://"+hg.metricsAddr()+"/metrics")
		if !strings.Contains(string(m), `berth_netd_peer_errors{network="hg"} 1`) {
			t.Errorf("peer_errors metric missing or wrong")
		}
		if !strings.Contains(hg.netd[1].Log(), "cannot connect peer") {
			t.Errorf("node3's problem not logged")
		}
		ping(t, n1, gateway(t, n1, sub(hg, 1), "gw"), gateway(t, tb.Node(2), sub(hg, 2), "gw"))
	})

	t.Run("vxlan directRouting", func(t *testing.T) {
		r := routes(t, n1)
		if got, want := r[sub(dr, 2).String()], fmt.Sprintf("%s via 192.168.50.2 dev eth0", sub(dr, 2)); got != want {
			t.Errorf("route to node2 (same segment): %q, want %q", got, want)
		}
		if got, want := r[sub(dr, 3).String()], fmt.Sprintf("%s via %s dev berth.2 onlink", sub(dr, 3), sub(dr, 3).Addr()); got != want {
			t.Errorf("route to node3 (behind the router): %q, want %q", got, want)
		}
		gws := map[int]netip.Addr{}
		for i := 1; i <= 3; i++ {
			gws[i] = gateway(t, tb.Node(i), sub(dr, i), "gw")
		}
		for i := 1; i <= 3; i++ {
			for j := 1; j <= 3; j++ {
				if i != j {
					ping(t, tb.Node(i), gws[i], gws[j])
				}
			}
		}
	})

	// Both networks' routes are in place on every node and each netd
	// still finds its part of the kernel as it wants it.
	for i := 1; i <= 3; i++ {
		hg.converged(i, 2)
		dr.converged(i, 2)
	}
}

// Without --etcd-endpoints the first netd runs an embedded etcd that the
// other nodes use after `netd join`; nothing else is needed. It serves
// TLS on each of the node's addresses (IPv4 preferred here, then IPv6)
// and wants client certificates of its CA. A joined node started
// while that etcd is down says it waits for it, and then joins.
func TestEmbeddedEtcd(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	c := newCluster(t, tb, nil, "berth", 9472)
	c.start(1)
	c.join(2)
	if err := c.netd[1].Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	early, err := tb.Node(2).Start(testbed.ProcSpec{Name: "netd-berth-node2", Path: c.bin, Args: c.flags(2)})
	if err != nil {
		t.Fatal(err)
	}
	c.netd[2] = early
	etcdURL, etcdURL6 := tb.Node(1).EtcdURL(), tb.Node(1).EtcdURL6()
	c.eventually("node2 to say that it waits for node1's etcd", 10*time.Second, func() error {
		s, err := c.status(2)
		if err != nil {
			return err
		}
		if !strings.Contains(s.Starting, "waiting for etcd at "+etcdURL+": connection refused") {
			return fmt.Errorf("status says %q", s.Starting)
		}
		return nil
	})
	c.start(1)
	c.lease(2)
	c.converged(1, 1)
	st := c.converged(2, 1)
	if !slices.Equal(st.EtcdEndpoints, []string{etcdURL, etcdURL6}) || st.Mode != "vxlan" || st.CIDR != "10.244.0.0/16" || len(st.Warnings) > 0 {
		t.Errorf("status: %+v", st)
	}
	s1, s2 := c.lease(1).Subnet, c.lease(2).Subnet
	if s1 == s2 {
		t.Fatalf("both nodes hold %s", s1)
	}
	ping(t, tb.Node(2), gateway(t, tb.Node(2), s2, "gw"), gateway(t, tb.Node(1), s1, "gw"))

	// What node1 exposes: etcd wants a client certificate of its CA,
	// plain HTTP gets nothing, and the join port only signs for the token.
	pkiDir := filepath.Join(tb.Node(2).Dir, "pki")
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "client.pem"), filepath.Join(pkiDir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, url string
		tls               *tls.Config
		want              string // in the answer or error; "" for success
	}{
		{"CA but no client certificate", "GET", etcdURL + "/version", &tls.Config{RootCAs: roots}, "certificate required"},
		{"plain HTTP", "GET", "http://192.168.50.1:2379/version", nil, "EOF"},
		{"node2's client certificate", "GET", etcdURL + "/version", &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}, ""},
		{"node2's client certificate over IPv6", "GET", etcdURL6 + "/version", &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}, ""},
		{"plain HTTP over IPv6", "GET", "http://[fd00:50::1]:2379/version", nil, "EOF"},
		{"join without the secret", "POST", "https://192.168.50.1:2378/v1/join", &tls.Config{RootCAs: roots}, "wrong join token"},
	} {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: tb.Node(2).DialContext, TLSClientConfig: tc.tls}}
		req, _ := http.NewRequest(tc.method, tc.url, strings.NewReader(`{"secret":"00","node":"x"}`))
		var answer string
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answer = resp.Status + " " + string(body)
		}
		switch {
		case tc.want == "" && (err != nil || !strings.Contains(answer, "etcdserver")):
			t.Errorf("%s: %v %s", tc.name, err, answer)
		case tc.want != "" && !strings.Contains(fmt.Sprint(err)+answer, tc.want):
			t.Errorf("%s: %v %s; want %q", tc.name, err, answer, tc.want)
		}
	}
	// The embedded etcd is netd's child netd-etcd: a netd killed with -9
	// takes it down at once, and started again serves it again.
	child := childProcess(t, c.netd[1].PID, "netd-etcd")
	if err := c.netd[1].Kill(); err != nil {
		t.Fatal(err)
	}
	c.eventually("netd-etcd to end with the netd killed", 2*time.Second, func() error {
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child)); err == nil && !strings.Contains(string(stat), ") Z ") {
			return fmt.Errorf("pid %d still runs: %s", child, stat)
		}
		return nil
	})
	c.start(1)
	c.converged(1, 1)
	c.converged(2, 1)
}

// childProcess is the pid of parent's child named comm.
func childProcess(t *testing.T, parent int, comm string) int {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		stat, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		name, rest, ok := strings.Cut(string(stat), ") ")
		if !ok || !strings.HasSuffix(name, "("+comm) {
			continue
		}
		var state string
		var ppid, pid int
		fmt.Sscanf(rest, "%s %d", &state, &ppid)
		fmt.Sscanf(name, "%d", &pid)
		if ppid == parent {
			return pid
		}
	}
	t.Fatalf("no child %s of pid %d", comm, parent)
	return 0
}

// netd talks to an etcd that requires TLS with client certificates.
func TestEtcdTLS(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	e, err := tb.StartEtcdTLS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{e.ClientURL}, "tls", 9472, "--mode", "hostgw",
		"--etcd-cafile", e.TLS.CA, "--etcd-certfile", e.TLS.ClientCert, "--etcd-keyfile", e.TLS.ClientKey)
	c.start(1)
	c.start(2)
	c.converged(1, 1)
	c.converged(2, 1)
	cli, err := e.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "/berth/v1/networks/tls/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil || len(resp.Kvs) != 3 {
		t.Fatalf("keys under /berth/v1/networks/tls/: %v %v", resp, err)
	}
	for _, kv := range resp.Kvs {
		t.Logf("%s", kv.Key)
	}
}

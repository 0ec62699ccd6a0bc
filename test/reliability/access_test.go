package reliability

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthnet/berth/internal/testenv"
	"github.com/berthnet/berth/test/testbed"
)

// netd and etcd must trust each other's certificates: netd refuses to
// start, with an error naming the flag to fix, when etcd's certificate
// is not signed by --etcd-cafile or etcd refuses netd's client
// certificate; it does not retry forever as it does for an etcd that is
// merely unreachable.
func TestEtcdTLSRefused(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 1})
	e, err := tb.StartEtcdTLS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	other, err := testbed.NewTLSFiles(filepath.Join(tb.Dir, "other-ca"), testbed.UnderlayIP)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{e.ClientURL})
	for _, tc := range []struct {
		name             string
		ca, cert, key    string
		want1, want2     string
		starts           bool
		describeExitTime string
	}{
		{name: "wrong CA", ca: other.CA, cert: e.TLS.ClientCert, key: e.TLS.ClientKey,
			want1: "presents a certificate that --etcd-cafile " + other.CA + " does not verify", want2: "give the CA that signed etcd's server certificate"},
		{name: "client certificate of another CA", ca: e.TLS.CA, cert: other.ClientCert, key: other.ClientKey,
			want1: "refused netd's client certificate (--etcd-certfile " + other.ClientCert + ")", want2: "signed by the CA etcd trusts"},
		{name: "right files", ca: e.TLS.CA, cert: e.TLS.ClientCert, key: e.TLS.ClientKey, starts: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(c.flags(1), "--metrics-address", "", "--etcd-cafile", tc.ca, "--etcd-certfile", tc.cert, "--etcd-keyfile", tc.key)
			if tc.starts {
				p, err := tb.Node(1).Start(testbed.ProcSpec{Name: "netd-tls", Path: c.bin, Args: args})
				if err != nil {
					t.Fatal(err)
				}
				if err := waitLease(tb.Node(1), c.network, p); err != nil {
					t.Fatal(err)
				}
				p.Stop(10 * time.Second)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			out, err := tb.Node(1).Run(ctx, c.bin, args...)
			if ctx.Err() != nil {
				t.Fatalf("netd still running after 30s instead of refusing to start:\n%s", tail(string(out), 10))
			}
			if err == nil || !strings.Contains(string(out), tc.want1) || !strings.Contains(string(out), tc.want2) {
				t.Fatalf("netd: %v\n%s\nwant an error saying %q ... %q", err, out, tc.want1, tc.want2)
			}
			report(t, "netd exits with status 1 in %s: %s", time.Since(start).Round(time.Millisecond), lastLine(string(out)))
		})
	}
}

// /metrics, /healthz and /status listen on the node's loopback unless
// told otherwise: another node cannot reach them.
func TestMetricsOnLocalhostByDefault(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	e, err := tb.StartEtcd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, tb, []string{e.ClientURL})
	var args []string
	for k, f := 0, c.flags(1); k < len(f); k++ {
		if f[k] == "--metrics-address" {
			k++ // the default, not the test's
			continue
		}
		args = append(args, f[k])
	}
	p, err := tb.Node(1).Start(testbed.ProcSpec{Name: "netd-node1", Path: c.bin, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	if err := waitLease(tb.Node(1), c.network, p); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Node(1).Get(context.Background(), "http://127.0.0.1:9472/healthz"); err != nil {
		t.Errorf("on the node itself: %v", err)
	}
	node1 := tb.Node(1).IP.String()
	if _, err := tb.Node(2).Get(context.Background(), "http://"+node1+":9472/metrics"); err == nil {
		t.Errorf("node2 reached node1's metrics at %s:9472", node1)
	}
	if _, err := tb.Node(1).Get(context.Background(), "http://"+node1+":9472/metrics"); err == nil {
		t.Errorf("node1's metrics answer on its node IP %s", node1)
	}
	out, err := tb.Node(1).Run(context.Background(), "ss", "-Hltn", "sport = :9472")
	if err != nil || strings.TrimSpace(string(out)) == "" || !strings.Contains(string(out), "127.0.0.1:9472") || strings.Contains(string(out), "*:9472") || strings.Contains(string(out), "0.0.0.0:9472") {
		t.Errorf("listeners on port 9472: %v\n%s", err, out)
	}
	report(t, "default --metrics-address: %s", strings.Join(strings.Fields(string(out)), " "))
}

// State netd and the plugins write is not writable by other users, even
// under umask 000: netd's lease dir and file, its conflist, the embedded
// etcd's data dir, the IPAM data dir and the plugins' state dir.
func TestStateNotWorldWritable(t *testing.T) {
	testenv.BinDir(t, "berth-vxlan")
	tb := testbed.ForTest(t, testbed.Options{Nodes: 1})
	n := tb.Node(1)
	fresh := filepath.Join(n.Dir, "fresh")
	// The components create every directory themselves.
	n.LeaseDir, n.CNIConfDir = filepath.Join(fresh, "lease"), filepath.Join(fresh, "net.d")
	n.StateDir, n.IPAMDataDir = filepath.Join(fresh, "state"), filepath.Join(fresh, "ipam")
	etcdDir, pkiDir := filepath.Join(fresh, "etcd"), filepath.Join(fresh, "pki")
	c := newCluster(t, tb, nil, "--etcd-data-dir", etcdDir, "--pki-dir", pkiDir, "--node-id-file", filepath.Join(fresh, "id", "node-id")) // embedded etcd
	args := c.flags(1)
	quoted := make([]string, len(args))
	for k, a := range args {
		quoted[k] = "'" + a + "'"
	}
	p, err := n.Start(testbed.ProcSpec{Name: "netd-node1", Path: "/bin/sh",
		Args: []string{"-c", "umask 000; exec " + c.bin + " " + strings.Join(quoted, " ")}})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.netd[1] = p
	c.mu.Unlock()
	c.lease(1)

	// A container attached under umask 000 too: the plugins run as the
	// runtime's children and inherit it.
	old := syscall.Umask(0)
	ctr := addContainer(t, n, "ctr")
	syscall.Umask(old)
	defer ctr.rt.Del(ctr.att)

	checked := 0
	var modes []string
	for _, dir := range []string{n.LeaseDir, n.CNIConfDir, etcdDir, pkiDir, filepath.Join(fresh, "id"), n.IPAMDataDir, n.StateDir} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode().Type()&fs.ModeSymlink != 0 {
				return nil
			}
			checked++
			if info.Mode().Perm()&0o002 != 0 {
				t.Errorf("%s is world-writable: %s", path, info.Mode())
			}
			// Keys and the join token: for root's eyes only.
			if secret := strings.HasSuffix(path, "-key.pem") || d.Name() == "join-token"; secret && info.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s is readable by others: %s", path, info.Mode())
			}
			if path == dir || d.Name() == "pods.json" || strings.HasSuffix(path, ".conflist") || d.Name() == "ca-key.pem" || d.Name() == "node-id" {
				rel, _ := filepath.Rel(fresh, path)
				modes = append(modes, fmt.Sprintf("%s %s", rel, info.Mode().Perm()))
			}
			return nil
		})
		if err != nil {
			t.Errorf("walking %s: %v", dir, err)
		}
	}
	for _, dir := range []string{etcdDir, pkiDir} {
		if info, err := os.Stat(dir); err != nil || info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v %v, want no access for group and others", dir, info.Mode(), err)
		}
	}
	report(t, "under umask 000: %d files and dirs checked, 0 world-writable (%s)", checked, strings.Join(modes, ", "))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// The embedded etcd serves plain HTTP only when told so, and then netd
// warns in its log and in `netd status` on that node and on the nodes
// that use it (status stays healthy: it works, it is just not safe).
func TestEtcdPlainHTTPWarns(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 2})
	ctx := context.Background()
	nd1, err := tb.StartNetd(ctx, tb.Node(1), testbed.NetdOptions{Args: []string{"--etcd-plain-http"}})
	if err != nil {
		t.Fatal(err)
	}
	plain := "http://" + tb.Node(1).IP.String() + ":2379"
	nd2, err := tb.StartNetd(ctx, tb.Node(2), testbed.NetdOptions{Etcd: []string{plain}})
	if err != nil {
		t.Fatal(err)
	}
	if err := nd2.WaitConverged(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		nd   *testbed.Netd
		want string
	}{
		{nd1, "embedded etcd serves plain HTTP without authentication (--etcd-plain-http): anyone who reaches"},
		{nd2, "etcd is reached in plain HTTP (" + plain + "): unencrypted and unauthenticated"},
	} {
		if !strings.Contains(tc.nd.Process().Log(), tc.want) {
			t.Errorf("%s's log lacks %q:\n%s", tc.nd.Node.Host, tc.want, tail(tc.nd.Process().Log(), 5))
		}
		out, err := tc.nd.Node.Run(ctx, nd1.Bin, "status", "--metrics-address", tc.nd.MetricsAddr())
		if err != nil || !strings.Contains(string(out), "WARNING") || !strings.Contains(string(out), tc.want) {
			t.Errorf("netd status on %s: %v; want exit 0 and a warning %q:\n%s", tc.nd.Node.Host, err, tc.want, out)
		}
	}
}

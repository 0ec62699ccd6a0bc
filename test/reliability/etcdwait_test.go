package reliability

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthnet/berth/test/testbed"
)

// With etcd not answering at --etcd-endpoints, netd says within 2s which
// endpoint, what failed and what to check, and `netd status` says that it
// waits (exit 2) rather than that netd is not running. Before, the first
// line came after 10s ("context deadline exceeded", no endpoint) and
// status said "netd is not running".
func TestEtcdUnreachableExplained(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 1})
	ctx := context.Background()
	plain, err := tb.StartEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := plain.IP.String()
	for _, tc := range []struct {
		name, endpoint string
		etcd           func() error // what runs at the endpoint
		want           string
	}{
		{name: "nothing listens", endpoint: "http://" + host + ":2999",
			want: "connection refused: nothing listens on port 2999 of " + host + "; is etcd running there"},
		{name: "no such host", endpoint: "http://192.168.50.99:2379",
			want: "no answer from 192.168.50.99 within 1s; check the address, that the host is up, and firewalls"},
		{name: "https to a plain etcd", endpoint: "https://" + host + ":2379",
			want: "etcd there speaks plain HTTP, not TLS (scheme mismatch); use http://" + host + ":2379"},
		{name: "http to a TLS etcd", endpoint: "http://" + host + ":2379", etcd: func() error {
			if err := plain.Kill(); err != nil {
				return err
			}
			_, err := tb.StartEtcdTLS(ctx)
			return err
		}, want: "etcd there speaks TLS, not plain HTTP (scheme mismatch); use https://" + host + ":2379"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.etcd != nil {
				if err := tc.etcd(); err != nil {
					t.Fatal(err)
				}
			}
			c := newCluster(t, tb, []string{tc.endpoint})
			start := time.Now()
			p := c.launch(1)
			defer c.stop(1)
			var took time.Duration
			eventually(t, "netd to say what is wrong with etcd", 10*time.Second, func() error {
				if !strings.Contains(p.Log(), tc.want) {
					return errors.New("not yet")
				}
				took = time.Since(start)
				return nil
			})
			if took > 2*time.Second {
				t.Errorf("the first word about etcd came after %s:\n%s", took, tail(p.Log(), 5))
			}
			if !strings.Contains(p.Log(), tc.endpoint) {
				t.Errorf("the log does not name %s:\n%s", tc.endpoint, tail(p.Log(), 5))
			}
			out, err := tb.Node(1).Run(ctx, c.bin, "status", "--metrics-address", metricsAddr)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "waiting for etcd at "+tc.endpoint) ||
				!strings.Contains(string(out), tc.want) {
				t.Errorf("netd status while waiting: %v\n%s", err, out)
			}
			report(t, "first log line about etcd after %s: %s", took.Round(time.Millisecond), tc.want)
		})
	}
}

// Stopping the netd that runs the embedded etcd is quiet: no error lines,
// no stack traces, no JSON between netd's lines (before: seven error-level
// JSON lines with stack traces, "use of closed network connection").
func TestEmbeddedEtcdStopsQuietly(t *testing.T) {
	tb := testbed.ForTest(t, testbed.Options{Nodes: 1})
	nd, err := tb.StartNetd(context.Background(), tb.Node(1), testbed.NetdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.Stop(); err != nil {
		t.Fatal(err)
	}
	log := nd.Process().Log()
	for _, bad := range []string{"level=ERROR", "stacktrace", `{"level"`} {
		if strings.Contains(log, bad) {
			t.Errorf("the log has %q:\n%s", bad, tail(log, 15))
		}
	}
	if !strings.Contains(log, "stopped; datapath and lease left in place") {
		t.Errorf("no clean stop:\n%s", tail(log, 5))
	}
}

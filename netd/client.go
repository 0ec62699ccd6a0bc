package netd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthnet/berth/conf"
)

// ErrNotRunning: no netd answers on the metrics address.
var ErrNotRunning = errors.New("netd is not running")

// FetchStatus asks the netd serving on addr (its --metrics-address).
func FetchStatus(ctx context.Context, addr string) (*Status, error) {
	if addr == "" {
		return nil, errors.New("--metrics-address is empty: the daemon serves no status")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w (nothing answers on %s: %v)", ErrNotRunning, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("netd on %s: %s: %s", addr, resp.Status, body)
	}
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("netd on %s: decoding status: %w", addr, err)
	}
	return &s, nil
}

// Print renders the status for a person.
func (s *Status) Print(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s (%s on %s)\n", s.Node, join(s.NodeIP, s.NodeIPv6), s.Iface)
	for _, w := range s.Warnings {
		fmt.Fprintf(tw, "WARNING\t%s\n", w)
	}
	if s.Starting != "" {
		fmt.Fprintf(tw, "network\t%s\n", s.Network)
		fmt.Fprintf(tw, "STARTING\t%s\n", s.Starting)
		tw.Flush()
		return
	}
	fmt.Fprintf(tw, "network\t%s, %s mode, %s datapath, %s\n", s.Network, s.Mode, cmp.Or(s.Datapath, conf.DatapathIptables), join(s.CIDR, s.CIDRv6))
	expiry := "expired"
	if left := s.LeaseExpires.Sub(now); left > 0 {
		expiry = "expires in " + left.Round(time.Second).String()
	}
	fmt.Fprintf(tw, "lease\t%s, MTU %d, %s\n", join(s.Subnet, s.SubnetV6), s.MTU, expiry)
	etcd := "reachable"
	if !s.EtcdUp {
		etcd = "UNREACHABLE (degraded: the datapath keeps the last known leases)"
		if !s.EtcdDownSince.IsZero() {
			etcd = fmt.Sprintf("UNREACHABLE for %s (degraded: the datapath keeps the last known leases)", now.Sub(s.EtcdDownSince).Round(time.Second))
		}
	}
	fmt.Fprintf(tw, "etcd\t%s %s\n", strings.Join(s.EtcdEndpoints, ","), etcd)
	kernel := "matches the leases"
	if !s.KernelMatches {
		kernel = "DIFFERS from the leases:"
	}
	fmt.Fprintf(tw, "kernel\t%s (last reconcile %s ago)\n", kernel, now.Sub(s.LastReconcile).Round(time.Millisecond))
	for _, p := range s.Pending {
		fmt.Fprintf(tw, "\t  %s\n", p)
	}
	if s.LastError != "" {
		fmt.Fprintf(tw, "error\t%s\n", s.LastError)
	}
	fmt.Fprintf(tw, "peers\t%d\n", len(s.Peers))
	for _, p := range s.Peers {
		state := "ok"
		switch {
		case p.Pending:
			state = "waiting: " + p.Error
		case p.Error != "":
			state = "ERROR: " + p.Error
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", p.Name, join(p.NodeIP, p.NodeIPv6), join(p.Subnet, p.SubnetV6), state)
	}
	if len(s.BGP) > 0 {
		fmt.Fprintf(tw, "bgp sessions\t%d\n", len(s.BGP))
		for _, b := range s.BGP {
			since := ""
			switch {
			case b.Since.IsZero():
			case b.Established:
				since = "up " + now.Sub(b.Since).Round(time.Second).String()
			default:
				since = "down " + now.Sub(b.Since).Round(time.Second).String()
			}
			filtered := ""
			if b.Filtered > 0 {
				filtered = fmt.Sprintf(" (and %d outside the cluster, ignored)", b.Filtered)
			}
			fmt.Fprintf(tw, "  %s\t%s\tAS %d\t%s\t%s %s\treceived %d%s, accepted %d, advertised %d\n",
				b.Peer, b.Name, b.ASN, b.Family, b.State, since, b.Received, filtered, b.Accepted, b.Advertised)
			switch {
			case b.Pending:
				fmt.Fprintf(tw, "\t  waiting: %s\n", b.Problem)
			case b.Problem != "":
				fmt.Fprintf(tw, "\t  ERROR: %s\n", b.Problem)
			}
		}
	}
	if len(s.Refused) > 0 {
		fmt.Fprintf(tw, "REFUSED\t%d routes offered by peers are not installed (a misconfigured router or a hijack?)\n", len(s.Refused))
		for _, r := range s.Refused {
			fmt.Fprintf(tw, "  %s\n", r)
		}
	}
	for _, p := range s.Problems {
		fmt.Fprintf(tw, "ERROR\t%s\n", p)
	}
	if len(s.Rejected) > 0 {
		fmt.Fprintf(tw, "IGNORED\t%d keys in etcd are not usable leases (a misbehaving writer?)\n", len(s.Rejected))
		for _, r := range s.Rejected {
			fmt.Fprintf(tw, "  %s\t%s\n", r.Key, r.Error)
		}
	}
	tw.Flush()
}

// join lists the values of both families that are set: "10.244.3.0/24,
// fd00:244:0:3::/64".
func join(v4, v6 string) string {
	switch {
	case v4 == "":
		return v6
	case v6 == "":
		return v4
	}
	return v4 + "," + v6
}

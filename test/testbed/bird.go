package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// BIRDPeer is one BGP session BIRD opens: over IPv4 carrying IPv4
// routes, or over IPv6 (IP is an IPv6 address) carrying IPv6 routes.
type BIRDPeer struct {
	Name     string // protocol name, e.g. node1
	IP       string
	ASN      uint32
	Password string // TCP MD5; empty: none
}

// BIRDOptions configure the router's BIRD.
type BIRDOptions struct {
	ASN   uint32 // BIRD's own AS
	Peers []BIRDPeer
	// Hijack also offers every peer a default route and 198.51.100.0/24
	// (IPv6 peers ::/0 and 2001:db8:100::/48), as a misbehaving router
	// would.
	Hijack bool
	// Listen, when set, is the only address BIRD listens on and sends
	// from (strict bind), so FRR (with its Listen) can run beside it.
	Listen netip.Addr
}

// BIRD is BIRD 2 running in the router namespace: eBGP with the peers,
// and what it learns (of both families) installed in the router's kernel
// so that it routes between the segments.
type BIRD struct {
	Sock string // control socket, for birdc -s
	proc *Process
	tb   *Testbed
	conf string // the configuration it started with
}

// StartBIRD starts /usr/sbin/bird (Debian bird2) in the router namespace.
func (tb *Testbed) StartBIRD(ctx context.Context, opts BIRDOptions) (*BIRD, error) {
	if tb.Router == nil {
		return nil, fmt.Errorf("testbed: BIRD runs in the router namespace; build the test bed with Router or Segment2")
	}
	if _, err := os.Stat("/usr/sbin/bird"); err != nil {
		return nil, fmt.Errorf("testbed: bird2 is not installed (apt-get install bird2): %w", err)
	}
	var b strings.Builder
	router := RouterIP1 // a router ID is 32 bits, whatever the families
	if opts.Listen.Is4() {
		router = opts.Listen
	}
	fmt.Fprintf(&b, "router id %s;\nprotocol device {}\nprotocol direct { ipv4; ipv6; }\n", router)
	b.WriteString("protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n")
	b.WriteString("protocol kernel { ipv6 { import none; export where source = RTS_BGP; }; }\n")
	export := "source = RTS_BGP"
	if opts.Hijack {
		b.WriteString("protocol static hijack { ipv4; route 0.0.0.0/0 blackhole; route 198.51.100.0/24 blackhole; }\n")
		b.WriteString("protocol static hijack6 { ipv6; route ::/0 blackhole; route 2001:db8:100::/48 blackhole; }\n")
		export += ` || proto = "hijack" || proto = "hijack6"`
	}
	for _, p := range opts.Peers {
		fmt.Fprintf(&b, "protocol bgp %s {\n  local as %d;\n  neighbor %s as %d;\n  hold time 9;\n  connect retry time 2;\n", p.Name, opts.ASN, p.IP, p.ASN)
		if opts.Listen.IsValid() && opts.Listen.Is6() == strings.Contains(p.IP, ":") {
			fmt.Fprintf(&b, "  local %s as %d;\n  strict bind yes;\n", opts.Listen, opts.ASN)
		}
		if p.Password != "" {
			fmt.Fprintf(&b, "  password %q;\n", p.Password)
		}
		// As README shows it: accept the nodes' blocks (netd checks them
		// against its leases), send what BGP learned.
		channel, blocks := "ipv4", "10.0.0.0/8+"
		if strings.Contains(p.IP, ":") {
			channel, blocks = "ipv6", "fd00::/8+"
		}
		fmt.Fprintf(&b, "  %s { import where net ~ [ %s ]; export where %s; };\n}\n", channel, blocks, export)
	}
	dir := filepath.Join(tb.Dir, "bird")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "bird.ctl")
	p, err := tb.Router.Start(ProcSpec{Name: "bird", Path: "/usr/sbin/bird", Args: []string{"-f", "-c", cfg, "-s", sock}})
	if err != nil {
		return nil, err
	}
	bird := &BIRD{Sock: sock, proc: p, tb: tb, conf: b.String()}
	err = waitFor(10*time.Second, func() error { _, err := bird.Show(ctx, "status"); return err })
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("testbed: BIRD did not start: %w\n%s", err, p.Log())
	}
	return bird, nil
}

// Show runs `birdc show ARGS` and returns its output.
func (b *BIRD) Show(ctx context.Context, args ...string) (string, error) {
	out, err := b.tb.Router.Run(ctx, "birdc", append([]string{"-s", b.Sock, "show"}, args...)...)
	return string(out), err
}

// Announce makes BIRD originate prefixes too, as a misbehaving router
// would: it is reconfigured with a static protocol whose routes are
// exported to every peer.
func (b *BIRD) Announce(ctx context.Context, prefixes ...netip.Prefix) error {
	var extra strings.Builder
	for _, v6 := range []bool{false, true} {
		name, channel := "announced", "ipv4"
		if v6 {
			name, channel = "announced6", "ipv6"
		}
		fmt.Fprintf(&extra, "protocol static %s { %s; ", name, channel)
		for _, p := range prefixes {
			if p.Addr().Is6() == v6 {
				fmt.Fprintf(&extra, "route %s blackhole; ", p)
			}
		}
		extra.WriteString("}\n")
	}
	// To the peers only: the kernel protocol does not take static routes.
	conf := strings.ReplaceAll(b.conf, "+ ]; export where ", `+ ]; export where proto = "announced" || proto = "announced6" || `)
	path := filepath.Join(filepath.Dir(b.Sock), "bird.conf")
	if err := os.WriteFile(path, []byte(conf+extra.String()), 0o644); err != nil {
		return err
	}
	out, err := b.tb.Router.Run(ctx, "birdc", "-s", b.Sock, "configure")
	if err != nil || !strings.Contains(string(out), "Reconfigured") {
		return fmt.Errorf("birdc configure: %v: %s", err, out)
	}
	return nil
}

// Config is BIRD's configuration file, for showing.
func (b *BIRD) Config() string {
	data, _ := os.ReadFile(filepath.Join(filepath.Dir(b.Sock), "bird.conf"))
	return string(data)
}

// Stop stops BIRD.
func (b *BIRD) Stop() error { return b.proc.Stop(5 * time.Second) }

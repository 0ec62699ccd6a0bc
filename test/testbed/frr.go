package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// FRRPeer is one BGP neighbor of FRR. An IPv6 neighbor's session carries
// IPv6 unicast only, an IPv4 one's IPv4 unicast only (as netd peers: one
// session per family).
type FRRPeer struct {
	IP       string
	ASN      uint32
	Password string // TCP MD5; empty: none
	// NoPolicy leaves this neighbor without route-maps. FRR 8 enforces
	// RFC 8212 on eBGP sessions by default (bgp ebgp-requires-policy):
	// such a neighbor is sent nothing and nothing it sends is accepted,
	// the mistake a status must make visible.
	NoPolicy bool
}

// FRROptions configure the router's FRR.
type FRROptions struct {
	ASN   uint32
	Peers []FRRPeer
	// Announce are prefixes FRR originates to every peer of their family (network
	// statements, with no route behind them: the router's own kernel is
	// not changed), e.g. a misbehaving router's more-specific of a
	// node's block or a block no node leases.
	Announce []netip.Prefix
	// Listen, when set, is the only address bgpd listens on and sends
	// from (its -l and update-source); FRR then installs nothing in the
	// kernel (-l implies -n), so another routing daemon (BIRD with
	// Listen) can run beside it on the router's other address.
	Listen netip.Addr
	// Port is the port bgpd listens on (default 179); FRR then waits for
	// the nodes to dial it there (passive neighbors).
	Port int
}

// FRR is FRRouting 8 (Debian frr) running in the router namespace: zebra
// and bgpd with their own configuration, pid, vty and zserv socket paths
// in the test bed's directory (never /etc/frr or /var/run/frr), eBGP with
// the peers, with the route-maps a network engineer writes (accept the
// cluster's blocks, announce everything learned), and graceful restart.
type FRR struct {
	Dir   string // configuration, sockets and FRR's own logs
	Conf  string // bgpd's configuration, for showing
	asn   uint32
	zebra *Process
	bgpd  *Process
	tb    *Testbed
}

// frrDaemons is where Debian installs zebra and bgpd.
const frrDaemons = "/usr/lib/frr"

// StartFRR starts zebra and bgpd in the router namespace and waits until
// bgpd answers on its vty.
func (tb *Testbed) StartFRR(ctx context.Context, opts FRROptions) (*FRR, error) {
	if tb.Router == nil {
		return nil, fmt.Errorf("testbed: FRR runs in the router namespace; build the test bed with Router or Segment2")
	}
	if _, err := os.Stat(filepath.Join(frrDaemons, "bgpd")); err != nil {
		return nil, fmt.Errorf("testbed: frr is not installed (apt-get install frr): %w", err)
	}
	dir, err := frrDir(tb)
	if err != nil {
		return nil, err
	}
	f := &FRR{Dir: dir, Conf: filepath.Join(dir, "bgpd.conf"), asn: opts.ASN, tb: tb}
	for name, content := range map[string]string{"zebra.conf": "hostname router\n", "vtysh.conf": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(f.Conf, []byte(frrConfig(opts)), 0o644); err != nil {
		return nil, err
	}
	zserv := filepath.Join(dir, "zserv.api")
	// Both daemons drop to the frr user (zebra insists on it); vty on no
	// TCP port, only the socket in dir.
	common := func(name, conf string) []string {
		return []string{"-z", zserv, "-i", filepath.Join(dir, name+".pid"), "--vty_socket", dir,
			"-f", conf, "-P", "0", "--log", "file:" + filepath.Join(dir, name+".log"), "--log-level", "debugging"}
	}
	// zebra always: bgpd resolves next hops through it.
	f.zebra, err = tb.Router.Start(frrDaemon(dir, "zebra", common("zebra", filepath.Join(dir, "zebra.conf"))))
	if err != nil {
		return nil, err
	}
	if err := waitFor(10*time.Second, func() error { _, err := os.Stat(zserv); return err }); err != nil {
		f.Stop()
		return nil, fmt.Errorf("testbed: zebra did not start: %w\n%s", err, f.zebra.Log())
	}
	args := common("bgpd", f.Conf)
	if opts.Listen.IsValid() {
		args = append(args, "-l", opts.Listen.String())
	}
	if opts.Port != 0 {
		args = append(args, "-p", fmt.Sprint(opts.Port))
	}
	f.bgpd, err = tb.Router.Start(frrDaemon(dir, "bgpd", args))
	if err != nil {
		f.Stop()
		return nil, err
	}
	err = waitFor(10*time.Second, func() error { _, err := f.VTY(ctx, "show bgp summary"); return err })
	if err != nil {
		f.Stop()
		return nil, fmt.Errorf("testbed: bgpd did not start: %w\n%s", err, f.bgpd.Log())
	}
	return f, nil
}

// frrDaemon runs an FRR daemon in a private mount namespace whose
// /var/tmp is dir/tmp: FRR writes its crash log and log buffers to
// /var/tmp/frr, a path it does not let one change, and the machine's must
// stay untouched. unshare and sh exec, so the daemon keeps their PID.
func frrDaemon(dir, name string, args []string) ProcSpec {
	tmp := filepath.Join(dir, "tmp")
	script := fmt.Sprintf(`mkdir -p -m 1777 %[1]s && mount --bind %[1]s /var/tmp && exec "$0" "$@"`, tmp)
	return ProcSpec{Name: "frr-" + name, Path: "/usr/bin/unshare",
		Args: append([]string{"--mount", "--propagation", "private", "sh", "-c", script, filepath.Join(frrDaemons, name)}, args...)}
}

// frrDir makes the directory FRR's daemons write to: they run as the frr
// user, so it is theirs and the test bed's directory must be traversable.
func frrDir(tb *Testbed) (string, error) {
	u, err := user.Lookup("frr")
	if err != nil {
		return "", fmt.Errorf("testbed: the frr user is missing (apt-get install frr): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chmod(tb.Dir, 0o711); err != nil {
		return "", err
	}
	dir := filepath.Join(tb.Dir, "frr")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.Chown(dir, uid, gid)
}

// frrConfig is bgpd's configuration: the one README shows, per peer,
// each family in its address-family block.
func frrConfig(opts FRROptions) string {
	var b strings.Builder
	router := RouterIP1
	if opts.Listen.Is4() {
		router = opts.Listen
	}
	fmt.Fprintf(&b, "frr defaults traditional\nhostname router\n!\n")
	// What the nodes may announce: their blocks (any length inside the
	// cluster's private ranges; netd checks them against its leases).
	b.WriteString("ip prefix-list BERTH-BLOCKS seq 10 permit 10.0.0.0/8 le 32\n")
	b.WriteString("ipv6 prefix-list BERTH-BLOCKS6 seq 10 permit fd00::/8 le 128\n!\n")
	b.WriteString("route-map BERTH-IN permit 10\n match ip address prefix-list BERTH-BLOCKS\nexit\n!\n")
	b.WriteString("route-map BERTH-IN6 permit 10\n match ipv6 address prefix-list BERTH-BLOCKS6\nexit\n!\n")
	b.WriteString("route-map BERTH-OUT permit 10\nexit\n!\n")
	fmt.Fprintf(&b, "!\nrouter bgp %d\n bgp router-id %s\n no bgp network import-check\n", opts.ASN, router)
	b.WriteString(" bgp graceful-restart\n timers bgp 3 9\n")
	for _, p := range opts.Peers {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s timers connect 2\n", p.IP, p.ASN, p.IP)
		if opts.Listen.IsValid() {
			fmt.Fprintf(&b, " neighbor %s update-source %s\n neighbor %s disable-connected-check\n", p.IP, opts.Listen, p.IP)
		}
		if opts.Port != 0 {
			fmt.Fprintf(&b, " neighbor %s passive\n", p.IP)
		}
		if p.Password != "" {
			fmt.Fprintf(&b, " neighbor %s password %s\n", p.IP, p.Password)
		}
	}
	for _, af := range []struct {
		v6               bool
		name, routeMapIn string
	}{{false, "ipv4", "BERTH-IN"}, {true, "ipv6", "BERTH-IN6"}} {
		fmt.Fprintf(&b, " !\n address-family %s unicast\n", af.name)
		for _, p := range opts.Announce {
			if p.Addr().Is6() == af.v6 {
				fmt.Fprintf(&b, "  network %s\n", p)
			}
		}
		for _, p := range opts.Peers {
			if isIPv6(p.IP) != af.v6 {
				if !af.v6 {
					fmt.Fprintf(&b, "  no neighbor %s activate\n", p.IP) // traditional defaults activate IPv4 for every neighbor
				}
				continue
			}
			if af.v6 {
				fmt.Fprintf(&b, "  neighbor %s activate\n", p.IP)
			}
			if !p.NoPolicy {
				fmt.Fprintf(&b, "  neighbor %s route-map %s in\n  neighbor %s route-map BERTH-OUT out\n", p.IP, af.routeMapIn, p.IP)
			}
		}
		b.WriteString(" exit-address-family\n")
	}
	b.WriteString("exit\n!\n")
	return b.String()
}

func isIPv6(ip string) bool { return strings.Contains(ip, ":") }

// afi is FRR's name of a family's unicast address family.
func afi(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// VTY runs FRR's vtysh commands (each a -c) and returns the output.
func (f *FRR) VTY(ctx context.Context, commands ...string) (string, error) {
	args := []string{"--config_dir", f.Dir, "--vty_socket", f.Dir}
	for _, c := range commands {
		args = append(args, "-c", c)
	}
	out, err := f.tb.Router.Run(ctx, "vtysh", args...)
	return string(out), err
}

// JSON runs one vtysh show command ending in "json" and decodes its output.
func (f *FRR) JSON(ctx context.Context, command string, v any) error {
	out, err := f.VTY(ctx, command)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("vtysh %q: %w: %s", command, err, out)
	}
	return nil
}

// FRRRoute is one path in FRR's BGP table.
type FRRRoute struct {
	Prefix  string
	NextHop string
	ASPath  string // e.g. "65001"
	Best    bool
}

// Routes lists FRR's IPv4 and IPv6 unicast BGP tables; an IPv6 path's
// next hop is its global one.
func (f *FRR) Routes(ctx context.Context) ([]FRRRoute, error) {
	var out []FRRRoute
	for _, v6 := range []bool{false, true} {
		var table struct {
			Routes map[string][]struct {
				Valid    bool   `json:"valid"`
				BestPath bool   `json:"bestpath"`
				Path     string `json:"path"`
				NextHops []struct {
					IP    string `json:"ip"`
					Scope string `json:"scope"`
				} `json:"nexthops"`
			} `json:"routes"`
		}
		if err := f.JSON(ctx, "show bgp "+afi(v6)+" unicast json", &table); err != nil {
			return nil, err
		}
		for prefix, paths := range table.Routes {
			for _, p := range paths {
				r := FRRRoute{Prefix: prefix, ASPath: p.Path, Best: p.BestPath}
				for _, nh := range p.NextHops {
					if nh.Scope != "link-local" {
						r.NextHop = nh.IP
						break
					}
				}
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// Announce makes FRR originate prefixes too, as a misbehaving router
// would (network statements; the router's kernel is not changed).
func (f *FRR) Announce(ctx context.Context, prefixes ...netip.Prefix) error {
	for _, v6 := range []bool{false, true} {
		cmds := []string{"configure terminal", fmt.Sprintf("router bgp %d", f.asn), "address-family " + afi(v6) + " unicast"}
		for _, p := range prefixes {
			if p.Addr().Is6() == v6 {
				cmds = append(cmds, "network "+p.String())
			}
		}
		if len(cmds) == 3 {
			continue
		}
		if _, err := f.VTY(ctx, cmds...); err != nil {
			return err
		}
	}
	return nil
}

// RemovePolicy removes the route-maps of the neighbor at ip and resets
// its session: with FRR 8's default bgp ebgp-requires-policy, FRR then
// sends it nothing and accepts nothing from it.
func (f *FRR) RemovePolicy(ctx context.Context, ip string) error {
	af, in := afi(isIPv6(ip)), "BERTH-IN"
	if isIPv6(ip) {
		in = "BERTH-IN6"
	}
	_, err := f.VTY(ctx, "configure terminal", fmt.Sprintf("router bgp %d", f.asn), "address-family "+af+" unicast",
		"no neighbor "+ip+" route-map "+in+" in", "no neighbor "+ip+" route-map BERTH-OUT out", "end", "clear bgp "+af+" unicast "+ip)
	return err
}

// Log is bgpd's own log (debugging level).
func (f *FRR) Log() string {
	data, _ := os.ReadFile(filepath.Join(f.Dir, "bgpd.log"))
	return string(data)
}

// Stop stops bgpd and zebra.
func (f *FRR) Stop() error {
	var err error
	if f.bgpd != nil {
		err = f.bgpd.Stop(5 * time.Second)
	}
	if f.zebra != nil {
		if e := f.zebra.Stop(5 * time.Second); err == nil {
			err = e
		}
	}
	return err
}

// Command demo shows berth across nodes on one machine: a few nodes
// (network namespaces of test/testbed), netd on each in one of its modes
// (node 1 runs the embedded etcd), and containers started with
// `runner run --net=<mode>` pinging each other and serving HTTP across
// the nodes, with a port published on a node's underlay address. It
// prints each step, the command behind it and its output, and removes
// everything on exit, on failure and on Ctrl-C. `demo -clean` removes
// what a killed run left behind.
//
//	go run ./test/demo/cmd/demo -mode vxlan    # or: make demo
//	go run ./test/demo/cmd/demo -mode hostgw   # or: make demo MODE=hostgw
//	go run ./test/demo/cmd/demo -clean         # or: make demo-clean
//
// A mode is an entry in modes below: the flags that make netd run it and
// the commands that show the datapath it built.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/berthnet/berth/netd"
	"github.com/berthnet/berth/test/testbed"
)

// mode is what differs between the demo's modes.
type mode struct {
	// summary says in a line how the nodes are connected.
	summary string
	// netdMode is netd's --mode, which is also the CNI network's name.
	netdMode string
	// with, when set, says in a few words what runs besides netd (shown
	// after "netd in <netdMode> mode").
	with string
	// prepare, when set, runs after the nodes exist and before netd
	// starts (e.g. a router to peer with).
	prepare func(ctx context.Context, d *demo) error
	// farNodes, when set, says which nodes sit on a second L2 segment
	// behind a router (the last one by default).
	farNodes func(nodes int) []int
	// nodeArgs are node-specific netd flags (e.g. a BGP peer).
	nodeArgs func(n *testbed.Node) []string
	// datapath are commands run on node 1 to show what netd built there,
	// each with what to look at in its output.
	datapath []show
}

// show is a command whose output the demo explains.
type show struct {
	cmd  []string
	note string
}

// routesNote goes with `ip route show proto 73`, with what else to see there.
func routesNote(more string) string {
	return "(routes with protocol 73 are netd's: reconcile owns them and nothing else" + more + ")"
}

// unreachableNote explains the route vxlan and hostgw keep to the network.
const unreachableNote = "; the unreachable route refuses the network's addresses no node holds, instead of the default route"

var modes = map[string]mode{
	"vxlan": {
		summary:  "an overlay: a VXLAN device per node with a static FDB entry, neighbour and route per peer",
		netdMode: "vxlan",
		datapath: []show{
			{[]string{"ip", "-d", "link", "show", "berth.1"}, "(the VTEP: vxlan id 1, local = this node's address, dstport 8472, nolearning: netd writes the FDB)"},
			{[]string{"bridge", "fdb", "show", "dev", "berth.1"}, "(one entry per peer: its VTEP's MAC -> its node address)"},
			{[]string{"ip", "neigh", "show", "dev", "berth.1"}, "(one per peer: the .0 of its subnet -> its VTEP's MAC, permanent)"},
			{[]string{"ip", "route", "show", "proto", "73"}, routesNote(unreachableNote)},
		},
	},
	"hostgw": {
		summary:  "plain routing: a route per peer's subnet via the peer's node address (nodes share an L2 segment)",
		netdMode: "hostgw",
		datapath: []show{
			{[]string{"ip", "route", "show", "proto", "73"}, routesNote(unreachableNote)},
		},
	},
	"bgp": {
		summary:  "routing learned over BGP: an embedded GoBGP speaker per node in a full iBGP mesh announces the node's block; containers get a /32 and no bridge",
		netdMode: "bgp",
		with:     "a full iBGP mesh between the nodes",
		datapath: []show{
			{[]string{"ip", "route", "show", "proto", "73"}, routesNote("; the blackhole is this node's own block")},
			{[]string{"netd", "status"}, "(a BGP session per peer, established)"},
		},
	},
	"bgp-bird": {
		summary:  "BGP across L3: the last node sits on a second segment behind a router running BIRD; every node peers with BIRD over eBGP, BIRD learns every block and routes between the segments (where host-gw cannot)",
		netdMode: "bgp",
		with:     "no node mesh: every node peers with BIRD on the router (eBGP)",
		farNodes: func(nodes int) []int { return []int{nodes} },
		nodeArgs: func(n *testbed.Node) []string {
			router := testbed.RouterIP1
			if n.Segment == 2 {
				router = testbed.RouterIP2
			}
			return []string{"--bgp-node-mesh=false", "--bgp-asn", fmt.Sprint(65000 + n.Index), "--bgp-peers", router.String() + ":64600"}
		},
		prepare: func(ctx context.Context, d *demo) error {
			d.step("BIRD on the router (AS 64600), an eBGP session to every node (AS 6500N)")
			var peers []testbed.BIRDPeer
			for _, n := range d.tb.Nodes {
				peers = append(peers, testbed.BIRDPeer{Name: n.Host, IP: n.IP.String(), ASN: uint32(65000 + n.Index)})
			}
			bird, err := d.tb.StartBIRD(ctx, testbed.BIRDOptions{ASN: 64600, Peers: peers})
			if err != nil {
				return err
			}
			d.bird = bird
			d.say("%s", strings.TrimSpace(bird.Config()))
			return nil
		},
		datapath: []show{
			{[]string{"ip", "route", "show", "proto", "73"}, routesNote("; the other nodes' blocks go via the router, learned from BIRD")},
		},
	},
}

func main() {
	names := slices.Sorted(maps.Keys(modes))
	modeName := flag.String("mode", "vxlan", "how nodes are connected: "+strings.Join(names, ", "))
	nodes := flag.Int("nodes", 3, "number of nodes, 2..9")
	keep := flag.Bool("keep", false, "keep the cluster up after the demo until Ctrl-C, to look around")
	clean := flag.Bool("clean", false, "only remove what an interrupted or killed demo left behind")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: demo [-mode MODE] [-nodes N] [-keep] | demo -clean\n\n"+
			"Runs berth on a few nodes of one machine (network namespaces), in MODE.\n"+
			"Needs root and `make build`. Example: demo -mode hostgw -nodes 4\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	if os.Geteuid() != 0 {
		fatal(errors.New("run as root: the demo creates network namespaces"))
	}
	if *clean {
		left := testbed.Leftovers()
		if len(left) == 0 {
			fmt.Println("demo: nothing left behind by earlier runs")
			return
		}
		if err := testbed.Sweep(); err != nil {
			fatal(err)
		}
		fmt.Printf("demo: removed what %d earlier run(s) left behind (namespaces, processes, cgroups, directories): %s\n", len(left), strings.Join(left, " "))
		return
	}
	m, ok := modes[*modeName]
	if !ok {
		fatal(fmt.Errorf("-mode %q: choose one of %s", *modeName, strings.Join(names, ", ")))
	}
	if *nodes < 2 || *nodes > 9 {
		fatal(fmt.Errorf("-nodes %d: use 2..9", *nodes))
	}

	// Ctrl-C (or SIGTERM) cancels the steps; cleanup then runs to the
	// end, and further Ctrl-C are ignored so that it is not cut short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{mode: m, name: *modeName, nodes: *nodes, out: os.Stdout}
	err := d.run(ctx)
	switch {
	case err != nil && ctx.Err() != nil:
		err = errors.New("interrupted")
	case err != nil:
		err = fmt.Errorf("FAILED at step %q: %w", d.current, err)
	case err == nil && *keep:
		d.explore()
		<-ctx.Done() // with -keep, Ctrl-C is how the demo ends
	}
	d.cleanup()
	if err != nil {
		fatal(err)
	}
	fmt.Println("\ndemo finished")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "demo:", err)
	os.Exit(1)
}

// demo is one run.
type demo struct {
	mode  mode
	name  string // the demo's -mode (netd's mode is mode.netdMode)
	nodes int
	out   io.Writer

	current    string // the step being shown, for the failure message
	tb         *testbed.Testbed
	bird       *testbed.BIRD // bgp-bird demo
	netd       []*testbed.Netd
	containers map[*testbed.Node][]string // names, by node
}

// webCmd serves HTTP on port 80 with busybox httpd; its CGI script says
// who answers and which source address it saw.
const webCmd = `mkdir -p /www/cgi-bin && ` +
	`echo -e "#!/bin/sh\necho\necho hello from \$(hostname), you came from \$REMOTE_ADDR" >/www/cgi-bin/hello && ` +
	`chmod +x /www/cgi-bin/hello && exec httpd -f -p 0.0.0.0:80 -h /www`

func (d *demo) run(ctx context.Context) error {
	if err := testbed.Sweep(); err != nil {
		d.say("removing what earlier runs left behind failed (go on): %v", err)
	}
	d.step("%d nodes on this machine: network namespaces on one underlay bridge (192.168.50.0/24)", d.nodes)
	opts := testbed.Options{Nodes: d.nodes}
	if d.mode.farNodes != nil {
		opts.Segment2 = d.mode.farNodes(d.nodes)
		d.say("%v on a second segment (192.168.60.0/24) behind a router", opts.Segment2)
	}
	tb, err := testbed.New(opts)
	if err != nil {
		return err
	}
	d.tb = tb
	// The commands shown say "netd" and "runner": make that true.
	os.Setenv("PATH", tb.BinDir+":"+os.Getenv("PATH"))
	d.say("underlay  netns %s  br0 %s", tb.Underlay.Name, testbed.UnderlayIP)
	for _, n := range tb.Nodes {
		d.say("%-8s  netns %s  eth0 %s", n.Host, n.Name, n.Prefix)
	}
	if d.mode.prepare != nil {
		if err := d.mode.prepare(ctx, d); err != nil {
			return err
		}
	}

	if err := d.startNetd(ctx); err != nil {
		return err
	}
	n1, n2, last := tb.Node(1), tb.Node(2), tb.Node(d.nodes)

	d.step("What netd wrote on node2 for the CNI plugins and for runtimes")
	for _, path := range []string{d.netd[1].LeasePath(), d.netd[1].ConflistPath()} {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		d.say("%s:\n%s", path, strings.TrimSpace(string(data)))
	}
	if err := d.sh(ctx, "node1", n1.NetNS, "netd", "status", "--metrics-address", d.netd[0].MetricsAddr()); err != nil {
		return err
	}

	d.step("Containers: `runner run --net=%s` on the nodes", d.network())
	r1, err := n1.Runner()
	if err != nil {
		return err
	}
	d.say("runner on a node is: %s ...", strings.Join(r1.Args(), " "))
	web1, err := d.start(ctx, n1, "web1", "-p", "8080:80", "--", "sh", "-c", webCmd)
	if err != nil {
		return err
	}
	web2, err := d.start(ctx, n2, "web2", "--", "sh", "-c", webCmd)
	if err != nil {
		return err
	}
	client, err := d.start(ctx, last, "client", "--", "sleep", "86400")
	if err != nil {
		return err
	}

	d.step("%s (%s) pings the web servers on node1 and node2", client.Name, client.Node.Host)
	for _, web := range []*testbed.Container{web1, web2} {
		if err := d.ping(ctx, client, web.IP.String(), 3); err != nil {
			return err
		}
	}

	d.step("HTTP across nodes: the servers see the client's own address %s (no NAT inside the cluster)", client.IP)
	for _, web := range []*testbed.Container{web1, web2} {
		// The server in a container just started may not listen yet.
		err := d.retry(ctx, 10*time.Second, func() error {
			return d.exec(ctx, client, "wget", "-q", "-O", "-", "http://"+web.IP.String()+"/cgi-bin/hello")
		})
		if err != nil {
			return err
		}
	}

	d.step("web1 publishes port 8080 on node1's underlay address %s", n1.IP)
	url := fmt.Sprintf("http://%s:8080/cgi-bin/hello", n1.IP)
	d.say("from node2 (the node itself, not a container):")
	if err := d.sh(ctx, "node2", n2.NetNS, "busybox", "wget", "-q", "-O", "-", url); err != nil {
		return err
	}
	d.say("from the underlay, outside the cluster:")
	if err := d.sh(ctx, "underlay", tb.Underlay, "busybox", "wget", "-q", "-O", "-", url); err != nil {
		return err
	}

	d.step("Leaving the cluster network is masqueraded: %s pings the underlay %s, which has no route back to the containers", client.Name, testbed.UnderlayIP)
	if err := d.ping(ctx, client, testbed.UnderlayIP.String(), 2); err != nil {
		return err
	}

	d.step("The datapath netd built on node1 (%s mode): %s", d.mode.netdMode, d.mode.summary)
	for _, s := range d.mode.datapath {
		if err := d.sh(ctx, "node1", n1.NetNS, s.cmd[0], s.cmd[1:]...); err != nil {
			return err
		}
		d.say("%s", s.note)
	}
	if d.bird != nil {
		d.step("What BIRD learned: every node's block, from the node itself")
		out, err := d.bird.Show(ctx, "route")
		if err != nil {
			return err
		}
		fmt.Fprint(d.out, out)
	}
	return nil
}

// startNetd starts netd on node 1 with the embedded etcd, then on the
// other nodes as its clients, and waits until every node sees the others.
func (d *demo) startNetd(ctx context.Context) error {
	tb := d.tb
	n1 := tb.Node(1)
	with := ""
	if d.mode.with != "" {
		with = "; " + d.mode.with
	}
	d.step("netd on node1, in %s mode, with its embedded etcd (nothing else to install)%s", d.mode.netdMode, with)
	opts := testbed.NetdOptions{Network: d.network(), Args: append([]string{"--mode", d.mode.netdMode}, d.nodeArgs(n1)...)}
	nd1, err := d.startOneNetd(ctx, n1, opts)
	if err != nil {
		return err
	}
	d.step("netd on the other nodes, using node1's etcd at %s (TLS): each joins once with node1's token", n1.EtcdURL())
	token, err := nd1.JoinToken(ctx)
	if err != nil {
		return err
	}
	d.cmd(n1, []string{"netd", "token", "--root-dir", n1.Dir})
	d.say("%s", token)
	opts.Join = nd1
	for _, n := range tb.Nodes[1:] {
		opts.Args = d.nodeArgs(n)
		d.cmd(n, []string{"netd", "join", token, "--root-dir", n.Dir, "--node-name", n.Host})
		if _, err := d.startOneNetd(ctx, n, opts); err != nil {
			return err
		}
	}
	d.say("waiting until every node holds its lease, reaches every peer and has a route to each peer's subnet ...")
	for _, nd := range d.netd {
		if err := nd.WaitConverged(ctx, d.nodes-1); err != nil {
			return err
		}
		var st *netd.Status
		err := d.retry(ctx, time.Minute, func() (err error) {
			st, err = d.ready(ctx, nd)
			return err
		})
		if err != nil {
			return err
		}
		sessions := ""
		if len(st.BGP) > 0 {
			sessions = fmt.Sprintf(", %d BGP session(s) established", len(st.BGP))
		}
		d.say("%s holds %s; its kernel routes to the %d peers%s", nd.Node.Host, st.Subnet, len(st.Peers), sessions)
	}
	if d.bird != nil {
		d.say("waiting until BIRD has every session established ...")
		err := d.retry(ctx, time.Minute, func() error {
			out, err := d.bird.Show(ctx, "protocols")
			if err != nil {
				return err
			}
			return birdSessionsUp(out, d.nodes)
		})
		if err != nil {
			return err
		}
		d.say("BIRD: %d sessions established", d.nodes)
	}
	return nil
}

// ready checks that netd on one node is ready for traffic: healthy (lease
// held, etcd up, kernel matching the leases, no peer error), every BGP
// session established, and a protocol 73 route to each peer's subnet in
// the kernel. The error says what is missing.
func (d *demo) ready(ctx context.Context, nd *testbed.Netd) (*netd.Status, error) {
	// Fresh each time: decoding into an old one would keep a peer's
	// error that netd no longer reports (omitempty).
	st := &netd.Status{}
	if err := nd.Status(ctx, st); err != nil {
		return nil, err
	}
	host := nd.Node.Host
	if !st.Healthy() {
		return nil, fmt.Errorf("netd on %s is not healthy yet: kernel matches %v, pending %v, last error %q, etcd up %v, peers %+v",
			host, st.KernelMatches, st.Pending, st.LastError, st.EtcdUp, st.Peers)
	}
	if d.mode.netdMode == "bgp" && len(st.BGP) == 0 {
		return nil, fmt.Errorf("netd on %s has no BGP session yet", host)
	}
	for _, s := range st.BGP {
		if !s.Established {
			return nil, fmt.Errorf("netd on %s: BGP session with %s (%s) is %s, not established", host, s.Peer, s.Name, s.State)
		}
	}
	out, err := nd.Node.Run(ctx, "ip", "route", "show", "proto", "73")
	if err != nil {
		return nil, err
	}
	if missing := missingRoutes(string(out), st.Peers); len(missing) > 0 {
		return nil, fmt.Errorf("%s has no route yet to %s", host, strings.Join(missing, ", "))
	}
	return st, nil
}

// missingRoutes lists the peer subnets with no route in routes (the
// output of `ip route show proto 73`).
func missingRoutes(routes string, peers []netd.PeerStatus) []string {
	var missing []string
	for _, p := range peers {
		found := false
		for _, line := range strings.Split(routes, "\n") {
			if strings.HasPrefix(line, p.Subnet+" ") {
				found = true
			}
		}
		if !found {
			missing = append(missing, p.Subnet+" ("+p.Name+")")
		}
	}
	return missing
}

// birdSessionsUp checks `birdc show protocols` for n BGP sessions, all
// established.
func birdSessionsUp(protocols string, n int) error {
	up, waiting := 0, []string{}
	for _, line := range strings.Split(protocols, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1] != "BGP" {
			continue
		}
		if strings.Contains(line, "Established") {
			up++
		} else {
			waiting = append(waiting, strings.Join(f, " "))
		}
	}
	if up < n {
		return fmt.Errorf("BIRD has %d of %d BGP sessions established; not yet: %s", up, n, strings.Join(waiting, "; "))
	}
	return nil
}

func (d *demo) nodeArgs(n *testbed.Node) []string {
	if d.mode.nodeArgs == nil {
		return nil
	}
	return d.mode.nodeArgs(n)
}

func (d *demo) startOneNetd(ctx context.Context, n *testbed.Node, opts testbed.NetdOptions) (*testbed.Netd, error) {
	nd, err := d.tb.StartNetd(ctx, n, opts)
	if err != nil {
		return nil, err
	}
	d.netd = append(d.netd, nd)
	d.cmd(n, append([]string{"netd"}, nd.Flags()...))
	l, err := nd.Lease(ctx)
	if err != nil {
		return nil, err
	}
	d.say("leased %s (MTU %d); log in %s", l.Subnet, l.MTU, nd.Process().LogPath)
	return nd, nil
}

// start runs a detached container on node n and shows it.
func (d *demo) start(ctx context.Context, n *testbed.Node, name string, args ...string) (*testbed.Container, error) {
	r, err := n.Runner()
	if err != nil {
		return nil, err
	}
	args = append([]string{"--net", d.network()}, args...)
	d.cmd(n, append([]string{"runner", "run", "-d", "--name", name}, args...))
	if d.containers == nil {
		d.containers = map[*testbed.Node][]string{}
	}
	d.containers[n] = append(d.containers[n], name)
	c, err := r.Start(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	d.say("%s: %s on %s", c.Name, c.IP, n.Host)
	return c, nil
}

// network is the CNI network the demo creates: named after netd's mode.
func (d *demo) network() string { return d.mode.netdMode }

// ping sends count pings from container c to ip and fails unless every
// one is answered: a demo that loses packets has not shown what it says.
func (d *demo) ping(ctx context.Context, c *testbed.Container, ip string, count int) error {
	d.cmd(c.Node, []string{"runner", "exec", c.Name, "ping", "-c", fmt.Sprint(count), ip})
	out, err := c.Exec(ctx, "ping", "-c", fmt.Sprint(count), "-W", "2", ip)
	fmt.Fprint(d.out, out)
	if err != nil && !strings.Contains(out, "packets received") {
		return err
	}
	return pingLoss(out, count)
}

// pingLoss fails unless busybox ping's summary says all count packets
// came back.
func pingLoss(out string, count int) error {
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("ping printed no summary:\n%s", out)
	}
	if m[1] != fmt.Sprint(count) || m[2] != m[1] {
		return fmt.Errorf("ping: %s of %s packets came back", m[2], m[1])
	}
	return nil
}

// exec runs a command in a container and shows it with its output.
func (d *demo) exec(ctx context.Context, c *testbed.Container, args ...string) error {
	d.cmd(c.Node, append([]string{"runner", "exec", c.Name}, args...))
	out, err := c.Exec(ctx, args...)
	fmt.Fprint(d.out, out)
	return err
}

// sh runs a command in namespace n, labelled where, and shows it with
// its output.
func (d *demo) sh(ctx context.Context, where string, n *testbed.NetNS, name string, args ...string) error {
	fmt.Fprintf(d.out, "\033[2m[%s]$ %s\033[0m\n", where, shellJoin(append([]string{name}, args...)))
	out, err := n.Run(ctx, name, args...)
	fmt.Fprint(d.out, string(out))
	return err
}

// retry runs f until it succeeds, for at most timeout.
func (d *demo) retry(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// explore tells how to look around while the cluster stays up.
func (d *demo) explore() {
	d.step("The cluster stays up until Ctrl-C. Look around from another terminal:")
	for _, n := range d.tb.Nodes {
		r, err := n.Runner()
		if err != nil {
			continue
		}
		d.say("%s: nsenter --net=%s ip route", n.Host, n.Path())
		d.say("       %s ps", strings.Join(r.Args(), " "))
	}
	d.say("netd logs: %s/logs", d.tb.Dir)
}

// cleanup removes the containers (CNI DEL on their node), stops netd and
// removes the nodes.
func (d *demo) cleanup() {
	if d.tb == nil {
		return
	}
	d.step("Cleaning up: containers, netd, etcd, namespaces")
	for _, n := range d.tb.Nodes {
		names := d.containers[n]
		r, err := n.Runner()
		if err != nil || len(names) == 0 {
			continue
		}
		args := append([]string{"rm", "-f"}, names...)
		d.cmd(n, append([]string{"runner"}, args...))
		if _, err := r.Run(context.Background(), args...); err != nil {
			d.say("%v", err)
		}
	}
	// The test bed removes whatever else is left (containers of a run
	// interrupted while starting them, their cgroups and namespaces).
	for _, nd := range slices.Backward(d.netd) {
		nd.Stop()
	}
	if err := d.tb.Close(); err != nil {
		d.say("cleanup: %v (run `make demo-clean`)", err)
		return
	}
	d.say("removed %s-*", d.tb.ID)
}

func (d *demo) step(format string, args ...any) {
	d.current = fmt.Sprintf(format, args...)
	fmt.Fprintf(d.out, "\n\033[1m== %s\033[0m\n", d.current)
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

// cmd shows a command as run on node n.
func (d *demo) cmd(n *testbed.Node, args []string) {
	fmt.Fprintf(d.out, "\033[2m[%s]$ %s\033[0m\n", n.Host, shellJoin(args))
}

// shellJoin quotes args as a shell would need them.
func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsFunc(a, func(r rune) bool { return !strings.ContainsRune(safe, r) }) {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}

const safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=@%+,"

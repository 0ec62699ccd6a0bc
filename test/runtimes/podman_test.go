// Package runtimes runs berth under real container runtimes: Debian's
// podman 4.3 with its CNI backend (and containerd's ctr), each in
// namespaces the test makes. `make test-runtimes` runs it.
package runtimes

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/berthnet/berth/internal/fastpath"
	"github.com/berthnet/berth/internal/testenv"
)

const nodeIP, outsideIP = "192.0.2.2", "192.0.2.1"

// requireRuntimes skips unless make test-runtimes asked for this suite.
func requireRuntimes(t *testing.T) {
	testenv.RequireRoot(t)
	if os.Getenv("BERTH_TEST_RUNTIMES") == "" {
		t.Skip("real runtimes: make test-runtimes")
	}
}

// httpGet sends one HTTP request from netns n and returns the status line.
// httpGet fetches the status line of http://addr/ from inside n. A refused
// connection is retried for a few seconds: `podman run -d` returns once the
// container's process is started, before httpd listens, and the container's
// kernel answers the DNATed SYN with a reset until then.
func httpGet(n ns.NetNS, addr string) (string, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		line, err := httpGetOnce(n, "tcp4", addr)
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return line, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpGetOnce sends GET / to addr over network ("tcp4" or "tcp6") from
// inside n and returns the status line.
func httpGetOnce(n ns.NetNS, network, addr string) (string, error) {
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.DialContext(context.Background(), network, addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// berthList is a berth-bridge conflist at cniVersion v on p's datapath.
func (p *podman) berthList(name, v, bridge, subnet string) {
	p.t.Helper()
	list := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"berth-bridge","bridge":%q,"isDefaultGateway":true%s,
		"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":%q}]]},
		"capabilities":{"portMappings":true,"ips":true,"mac":true}}]}`,
		v, name, bridge, p.dp.config(), filepath.Join(p.dir, "state"), filepath.Join(p.dir, "ipam"), subnet)
	if err := os.WriteFile(filepath.Join(p.dir, "net.d", name+".conflist"), []byte(list), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p *podman) ip(container, network string) string {
	p.t.Helper()
	return p.must("inspect", "--format", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network), container)
}

// fetch asks a container's shell to fetch addr over HTTP with nc.
func (p *podman) fetch(container, host, port string) (string, error) {
	return p.podman("exec", container, "sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %s | head -1`, host, port))
}

// leftovers is what a leak would change: the node's links, addresses,
// routes and iptables rules (without the empty chains the reference
// portmap and firewall plugins keep by design), and the CNI state files
// (berth's records and port claims, IPAM reservations) in podman's mount
// namespace, and on eBPF the pins in the BPF filesystem.
func (p *podman) leftovers() string {
	p.t.Helper()
	var keep []string
	dirs := append([]string{filepath.Join(p.dir, "state"), filepath.Join(p.dir, "ipam")}, p.dp.dirs()...)
	for _, l := range strings.Split(testenv.Snapshot(p.t, p.node, dirs...), "\n") {
		if !strings.Contains(l, "CNI-HOSTPORT-") && !strings.Contains(l, "CNI-FORWARD") && !strings.Contains(l, "CNI-ADMIN") {
			keep = append(keep, l)
		}
	}
	for _, f := range p.files("/run/berth", "/var/lib/cni/networks") {
		keep = append(keep, "file "+f)
	}
	sort.Strings(keep)
	return strings.Join(keep, "\n")
}

// TestPodman runs berth under podman 4.3 (CNI backend) as a user would,
// on each datapath.
func TestPodman(t *testing.T) {
	requireRuntimes(t)
	forEachDatapath(t, testPodman)
}

func testPodman(t *testing.T, dp datapath) {
	node, outside := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, node, "eth0", nodeIP+"/24", outside, "eth0", outsideIP+"/24")
	p := newPodman(t, node, dp)
	image := p.busybox()
	before := p.leftovers()
	serve := []string{image, "httpd", "-f", "-p", "80", "-h", "/tmp"}

	p.berthList("bnet", "1.0.0", "berthp0", "10.78.0.0/24")
	p.must(append([]string{"run", "-d", "--name", "web", "--network", "bnet", "-p", "8080:80"}, serve...)...)
	p.must("run", "-d", "--name", "cli", "--network", "bnet", image, "sleep", "1000")
	webIP, cliIP := p.ip("web", "bnet"), p.ip("cli", "bnet")

	// published checks the port from everywhere a user expects it to answer.
	published := func(t *testing.T, port string) {
		t.Helper()
		if line, err := httpGet(outside, nodeIP+":"+port); err != nil || !strings.HasPrefix(line, "HTTP/1") {
			t.Errorf("from another host to the node's address: %q, %v", line, err)
		}
		if line, err := httpGet(node, "127.0.0.1:"+port); err != nil || !strings.HasPrefix(line, "HTTP/1") {
			t.Errorf("from the node to localhost: %q, %v", line, err)
		}
		var s0 fastpath.Stats
		if dp.ebpf() {
			s0 = dp.stats(t, "bnet")
		}
		if line, err := p.fetch("cli", nodeIP, port); err != nil || !strings.HasPrefix(line, "HTTP/1") {
			t.Errorf("from another container: %q, %v", line, err)
		}
		// A published port is the kernel's (README "eBPF datapath"): cli's
		// requests go to the node's address, and the node masquerades
		// them (hairpin), so web answers the gateway. The programs must
		// have delivered none of it.
		if dp.ebpf() {
			if s := dp.stats(t, "bnet"); s.Local != s0.Local {
				t.Errorf("from another container: fast path counters %+v then %+v: want none of it delivered by the fast path", s0, s)
			}
		}
		if line, err := p.fetch("web", nodeIP, port); err != nil || !strings.HasPrefix(line, "HTTP/1") {
			t.Errorf("hairpin, from the container itself: %q, %v", line, err)
		}
	}

	t.Run("containers ping each other", func(t *testing.T) {
		for _, c := range [][2]string{{"web", cliIP}, {"cli", webIP}} {
			if out, err := p.podman("exec", c[0], "ping", "-c", "1", "-W", "2", c[1]); err != nil {
				t.Errorf("%s to %s: %v\n%s", c[0], c[1], err, out)
			}
		}
	})
	// connects opens a TCP connection from cli to web's own address; on
	// eBPF the programs must have delivered it (ICMP, the pings above,
	// always takes the kernel's path, so only TCP or UDP can tell).
	connects := func(t *testing.T) {
		t.Helper()
		var s0 fastpath.Stats
		if dp.ebpf() {
			s0 = dp.stats(t, "bnet")
		}
		if line, err := p.fetch("cli", webIP, "80"); err != nil || !strings.HasPrefix(line, "HTTP/1") {
			t.Fatalf("cli to %s:80: %q, %v", webIP, line, err)
		}
		if !dp.ebpf() {
			return
		}
		// A connection is at least 6 packets between the veths (the
		// handshake, the request, the answer, the FINs), each one a
		// local delivery.
		if s := dp.stats(t, "bnet"); s.Local < s0.Local+6 {
			t.Errorf("fast path counters %+v then %+v: want the connection delivered by the fast path", s0, s)
		}
	}
	t.Run("containers connect to each other", connects)
	t.Run("a published port answers", func(t *testing.T) { published(t, "8080") })
	t.Run("network reload keeps the container working", func(t *testing.T) {
		// conmon holds 8080 open: berth refused it as "in use" and the
		// reload left the container without eth0.
		if out, err := p.podman("network", "reload", "web"); err != nil {
			t.Fatalf("podman network reload: %v\n%s", err, out)
		}
		if got := p.ip("web", "bnet"); got == "" {
			t.Errorf("no address after reload")
		}
		published(t, "8080")
		if dp.ebpf() {
			// podman 4.3's reload is a DEL then an ADD (web gets a new
			// host veth): the program is on the new veth, once.
			iflink := p.must("exec", "web", "cat", "/sys/class/net/eth0/iflink")
			index, err := strconv.Atoi(iflink)
			if err != nil {
				t.Fatalf("web's eth0 iflink %q: %v", iflink, err)
			}
			if shown, n := fromContainerFilters(t, node, index); n != 1 {
				t.Errorf("%d from_container filters on web's host veth, want 1: %s", n, shown)
			}
		}
		connects(t)
	})
	t.Run("network connect and disconnect keep published ports", func(t *testing.T) {
		p.berthList("bnet2", "1.0.0", "berthp2", "10.79.0.0/24")
		if out, err := p.podman("network", "connect", "bnet2", "web"); err != nil {
			t.Fatalf("podman network connect: %v\n%s", err, out)
		}
		if got := p.ip("web", "bnet2"); !strings.HasPrefix(got, "10.79.0.") {
			t.Errorf("address on the connected network: %q", got)
		}
		published(t, "8080")
		if out, err := p.podman("network", "disconnect", "bnet2", "web"); err != nil {
			t.Fatalf("podman network disconnect: %v\n%s", err, out)
		}
		published(t, "8080")
		p.must("network", "rm", "bnet2")
	})
	t.Run("--mac-address", func(t *testing.T) {
		const mac = "02:42:0a:4e:00:99"
		p.must("run", "-d", "--name", "mac", "--network", "bnet", "--mac-address", mac, image, "sleep", "1000")
		if got, _ := p.podman("exec", "mac", "cat", "/sys/class/net/eth0/address"); got != mac {
			t.Errorf("eth0 has %q, want %s", got, mac)
		}
		p.must("rm", "-f", "-t", "0", "mac")
	})
	t.Run("network rm, then a new network on the same bridge and subnet", func(t *testing.T) {
		for _, name := range []string{"reuse1", "reuse2"} {
			p.berthList(name, "1.0.0", "berthpr", "10.81.0.0/24")
			out, err := p.podman(append([]string{"run", "-d", "--name", name, "--network", name, "-p", "8090:80"}, serve...)...)
			if err != nil {
				t.Fatalf("network %s: %v\n%s", name, err, out)
			}
			if out, err := p.podman("exec", name, "ping", "-c", "1", "-W", "2", "10.81.0.1"); err != nil {
				t.Errorf("network %s: gateway: %v\n%s", name, err, out)
			}
			if line, err := httpGet(outside, nodeIP+":8090"); err != nil || !strings.HasPrefix(line, "HTTP/1") {
				t.Errorf("network %s: published port: %q, %v", name, line, err)
			}
			p.must("rm", "-f", "-t", "0", name)
			p.must("network", "rm", name)
		}
	})
	t.Run("podman's default chain with berth's two types", func(t *testing.T) {
		p.must("network", "create", "--subnet", "10.82.0.0/24", "pdef")
		path := filepath.Join(p.dir, "net.d", "pdef.conflist")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		list := string(data)
		for _, plugin := range []string{"portmap", "firewall", "tuning"} {
			if !strings.Contains(list, `"type": "`+plugin+`"`) {
				t.Fatalf("podman's chain has no %s:\n%s", plugin, list)
			}
		}
		list = strings.Replace(list, `"type": "bridge"`, `"type": "berth-bridge"`+p.dp.config(), 1)
		list = strings.Replace(list, `"type": "host-local"`, `"type": "berth-ipam"`, 1)
		os.WriteFile(path, []byte(list), 0o644)
		p.must(append([]string{"run", "-d", "--name", "pdef", "--network", "pdef", "-p", "8091:80"}, serve...)...)
		if got := p.ip("pdef", "pdef"); !strings.HasPrefix(got, "10.82.0.") {
			t.Errorf("address %q", got)
		}
		if line, err := httpGet(outside, nodeIP+":8091"); err != nil || !strings.HasPrefix(line, "HTTP/1") {
			t.Errorf("port published by portmap after berth-bridge: %q, %v", line, err)
		}
		p.must("rm", "-f", "-t", "0", "pdef")
		p.must("network", "rm", "pdef")
	})
	t.Run("cniVersion", func(t *testing.T) {
		for i, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			name := "v" + strings.ReplaceAll(v, ".", "")
			port := fmt.Sprint(8100 + i)
			p.berthList(name, v, "berthv"+fmt.Sprint(i), fmt.Sprintf("10.83.%d.0/24", i))
			out, err := p.podman(append([]string{"run", "-d", "--name", name, "--network", name, "-p", port + ":80"}, serve...)...)
			if v == "1.1.0" {
				// podman 4.3's libcni (CNI 1.1.2) knows results up to 1.0.0:
				// conflists netd and the examples write are 1.0.0 for this.
				if err == nil || !strings.Contains(out, `unsupported CNI result version "1.1.0"`) {
					t.Errorf("cniVersion 1.1.0: %v\n%s\nwant podman's known refusal", err, out)
				}
				p.podman("rm", "-f", "-t", "0", name)
				continue
			}
			if err != nil {
				t.Errorf("cniVersion %s: %v\n%s", v, err, out)
				continue
			}
			if line, err := httpGet(outside, nodeIP+":"+port); err != nil || !strings.HasPrefix(line, "HTTP/1") {
				t.Errorf("cniVersion %s: published port: %q, %v", v, line, err)
			}
			p.must("rm", "-f", "-t", "0", name)
		}
	})
	t.Run("rm leaves nothing", func(t *testing.T) {
		p.must("rm", "-f", "-t", "0", "web", "cli")
		if after := p.leftovers(); after != before {
			t.Errorf("left after every container is gone:\n%s", testenv.Diff(before, after))
		}
	})
}

package runtimes

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthnet/berth/internal/testenv"
)

const nodeIP6, outsideIP6 = "2001:db8:2::2", "2001:db8:2::1"

// TestPodman6 runs a dual-stack berth network under podman 4.3: podman
// shows the IPv6 address, containers reach each other over IPv6, and
// ports published as podman spells them (-p 8080:80, -p [::]:..., -p
// [node IPv6]:...) answer over IPv6 from another host, another container
// and the container itself, also after `podman network reload`; rm
// leaves nothing of either family. The eBPF datapath is IPv4 only: there
// podman's run fails with berth's error naming the datapath, and leaves
// nothing.
func TestPodman6(t *testing.T) {
	requireRuntimes(t)
	forEachDatapath(t, testPodman6)
}

func testPodman6(t *testing.T, dp datapath) {
	node, outside := testenv.NewNS(t), testenv.NewNS(t)
	testenv.Link(t, node, "eth0", nodeIP+"/24", outside, "eth0", outsideIP+"/24")
	testenv.AddAddr(t, node, "eth0", nodeIP6+"/64")
	testenv.AddAddr(t, outside, "eth0", outsideIP6+"/64")
	p := newPodman(t, node, dp)
	image := p.busybox()
	before := p.leftovers()
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"ds","plugins":[{"type":"berth-bridge","bridge":"berthd0","isDefaultGateway":true%s,
		"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q,"ranges":[[{"subnet":"10.78.0.0/24"}],[{"subnet":"fd00:78::/64"}]]},
		"capabilities":{"portMappings":true,"ips":true,"mac":true}}]}`, dp.config(), filepath.Join(p.dir, "state"), filepath.Join(p.dir, "ipam"))
	if err := os.WriteFile(filepath.Join(p.dir, "net.d", "ds.conflist"), []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	if dp.ebpf() {
		// Podman prints the plugin's message, not its code: "invalid
		// network config" is berth's message of CNI error 7
		// (internal/cnierr), followed by the field at fault.
		out, err := p.podman("run", "-d", "--name", "web", "--network", "ds", image, "sleep", "1000")
		const want = "invalid network config: datapath: \"ebpf\" handles IPv4 only"
		if err == nil || !strings.Contains(out, `plugin type="berth-bridge" failed (add)`) || !strings.Contains(out, want) {
			t.Errorf("podman run on an eBPF dual-stack network: %v\n%s\nwant berth-bridge's ADD refused with %q", err, out, want)
		}
		// Checked before rm: the refused ADD itself left no veth, no
		// address reserved, no pins.
		if after := p.leftovers(); after != before {
			t.Errorf("left after the refused ADD:\n%s", testenv.Diff(before, after))
		}
		p.must("rm", "-f", "-t", "0", "web")
		return
	}
	p.must("run", "-d", "--name", "web", "--network", "ds", "-p", "8080:80", "-p", "[::]:8081:80", "-p", "["+nodeIP6+"]:8082:80",
		image, "httpd", "-f", "-p", "80", "-h", "/tmp")
	p.must("run", "-d", "--name", "cli", "--network", "ds", image, "sleep", "1000")
	web6 := p.must("inspect", "--format", `{{(index .NetworkSettings.Networks "ds").GlobalIPv6Address}}`, "web")
	if !strings.HasPrefix(web6, "fd00:78::") {
		t.Fatalf("podman shows IPv6 address %q, want one in fd00:78::/64", web6)
	}
	if out, err := p.podman("exec", "cli", "ping", "-6", "-c", "1", "-W", "2", web6); err != nil {
		t.Errorf("ping6 from another container: %v\n%s", err, out)
	}
	published := func(t *testing.T) {
		for _, port := range []string{"8080", "8081", "8082"} {
			if line, err := httpGetOnce(outside, "tcp6", net.JoinHostPort(nodeIP6, port)); err != nil || !strings.HasPrefix(line, "HTTP/1") {
				t.Errorf("port %s from another host over IPv6: %q, %v", port, line, err)
			}
			for _, from := range []string{"cli", "web"} {
				if line, err := p.fetchWithin(from, nodeIP6, port); err != nil || !strings.HasPrefix(line, "HTTP/1") {
					t.Errorf("port %s from container %s over IPv6: %q, %v", port, from, line, err)
				}
			}
		}
	}
	t.Run("published ports answer over IPv6", published)
	t.Run("and after network reload", func(t *testing.T) {
		if out, err := p.podman("network", "reload", "web"); err != nil {
			t.Fatalf("podman network reload: %v\n%s", err, out)
		}
		published(t)
	})
	p.must("rm", "-f", "-t", "0", "web", "cli")
	if after := p.leftovers(); after != before {
		t.Errorf("left after every container is gone:\n%s", testenv.Diff(before, after))
	}
}

// fetchWithin is fetch with a deadline: conmon holds the published ports
// open on the node, so without the DNAT rule a connection is accepted
// and never answered, and busybox nc -w does not end it.
func (p *podman) fetchWithin(container, host, port string) (string, error) {
	return p.podman("exec", container, "sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | busybox timeout 5 nc -w 3 %s %s | head -1`, host, port))
}

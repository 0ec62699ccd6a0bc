package attach

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/netnsdir"
)

// Host ports are claimed node-wide, in the directory of the node's network
// namespace (internal/netnsdir), whatever the network's stateDir:
// <netnsdir>/ports/<proto>-<port>/<hostIP|any>@<attachment>, each file
// holding the container ID; "any" is both families, 0.0.0.0 and :: are one
// each. Claims are made and dropped under the namespace's ports lock, so
// that a wildcard and a specific host address of one port cannot both be
// claimed by two ADDs at once.
//
// Only other containers' attachments conflict (error 102): one container
// on two networks gets its published ports on both (podman network
// connect passes them to every network of the container). A process listening
// on the port does not: the reference portmap does not refuse it either,
// and runtimes such as podman hold the published ports of their
// containers open themselves (conmon), so a refusal would break
// `podman network reload` and `network connect`. The runner checks for
// listeners before it calls CNI.

const anyHost = "any"

func portDir(nsDir string, p conf.PortMapping) string {
	return filepath.Join(nsDir, "ports", p.Protocol+"-"+strconv.Itoa(p.HostPort))
}

func hostName(p conf.PortMapping) string {
	if p.HostIP == "" {
		return anyHost
	}
	return p.HostIP
}

// claimHostIP is the hostIP a claim's name stands for.
func claimHostIP(name string) string {
	if name == anyHost {
		return ""
	}
	return name
}

// claimName is the file of r's claim of p.
func claimName(r *record, p conf.PortMapping) string { return hostName(p) + "@" + r.key()[:16] }

// claimPorts reserves every host port of r, or none of them.
func claimPorts(r *record) (err error) {
	if len(r.Ports) == 0 {
		return nil
	}
	lock, err := netnsdir.Acquire("ports.lock", false)
	if err != nil {
		return err
	}
	defer lock.Release()
	nsDir := lock.Dir
	var claimed []conf.PortMapping
	defer func() {
		if err != nil {
			for _, p := range claimed {
				unclaimPort(nsDir, r, p)
			}
		}
	}()
	for _, p := range r.Ports {
		if err := claimPort(nsDir, r, p); err != nil {
			return err
		}
		claimed = append(claimed, p)
	}
	return nil
}

func claimPort(nsDir string, r *record, p conf.PortMapping) (err error) {
	dir := portDir(nsDir, p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	defer func() {
		if err != nil {
			os.Remove(dir) // only succeeds when empty: a refusal leaves nothing
		}
	}()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	for _, e := range entries {
		host, _, ok := strings.Cut(e.Name(), "@")
		if !ok || !conf.HostsOverlap(claimHostIP(host), p.HostIP) {
			continue // a temp file; or addresses that take different connections
		}
		owner, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if string(owner) == r.ContainerID {
			continue
		}
		return fmt.Errorf("%w: host port %s/%d (host address %s) is published by container %s; choose another hostPort",
			cnierr.ErrPortInUse, p.Protocol, p.HostPort, host, owner)
	}
	// Written whole, then linked into place: a claim killed midway leaves
	// at most the temp file, which unclaimPort removes.
	tmp := claimTemp(nsDir, r, p)
	if err := os.WriteFile(tmp, []byte(r.ContainerID), 0o644); err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, filepath.Join(dir, claimName(r, p))); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	return nil
}

func unclaimPort(nsDir string, r *record, p conf.PortMapping) {
	os.Remove(claimTemp(nsDir, r, p)) // left by a claim killed midway
	os.Remove(filepath.Join(portDir(nsDir, p), claimName(r, p)))
	os.Remove(portDir(nsDir, p)) // only succeeds when empty
}

func claimTemp(nsDir string, r *record, p conf.PortMapping) string {
	return filepath.Join(portDir(nsDir, p), "."+r.key()[:16])
}

// unclaimPorts drops r's claims.
func unclaimPorts(r *record) error {
	if len(r.Ports) == 0 {
		return nil
	}
	lock, err := netnsdir.Acquire("ports.lock", false)
	if err != nil {
		return err
	}
	defer lock.Release()
	nsDir := lock.Dir
	for _, p := range r.Ports {
		unclaimPort(nsDir, r, p)
	}
	return nil
}

func firewallPorts(pms []conf.PortMapping) []firewall.Port {
	var out []firewall.Port
	for _, p := range pms {
		fp := firewall.Port{HostPort: uint16(p.HostPort), ContainerPort: uint16(p.ContainerPort), Protocol: p.Protocol}
		if p.HostIP != "" {
			fp.HostIP = netip.MustParseAddr(p.HostIP)
		}
		out = append(out, fp)
	}
	return out
}

// flushUDPConntrack drops conntrack entries for r's newly published UDP
// ports, in each family r has an address in: a client that sent to the
// port before the mapping existed keeps hitting the old (host) entry
// otherwise, because UDP "connections" never end.
func flushUDPConntrack(r *record) {
	for _, p := range r.Ports {
		if p.Protocol != "udp" {
			continue
		}
		v4, v6 := conf.HostFamilies(p.HostIP)
		for _, fam := range []struct {
			on bool
			af netlink.InetFamily
		}{{v4 && r.ContainerIP.IsValid(), unix.AF_INET}, {v6 && r.ContainerIP6.IsValid(), unix.AF_INET6}} {
			f := &netlink.ConntrackFilter{}
			if !fam.on || f.AddProtocol(unix.IPPROTO_UDP) != nil || f.AddPort(netlink.ConntrackOrigDstPort, uint16(p.HostPort)) != nil {
				continue
			}
			netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam.af, f)
		}
	}
}

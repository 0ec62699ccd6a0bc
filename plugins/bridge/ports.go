package bridge

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/firewall"
	"github.com/berthnet/berth/internal/hostport"
)

// Host ports are claimed in <stateDir>/ports/<proto>-<port>/<hostIP|any>,
// each file holding the owner's attachment key. A claim is one link(2),
// which fails if the port is taken; conflicts between a wildcard and a
// specific host address are found by reading that one small directory.

const anyHost = "any"

func portDir(stateDir string, p conf.PortMapping) string {
	return filepath.Join(stateDir, "ports", p.Protocol+"-"+strconv.Itoa(p.HostPort))
}

func hostName(p conf.PortMapping) string {
	if p.HostIP == "" {
		return anyHost
	}
	return p.HostIP
}

// claimPorts reserves every host port of r, or none of them.
func claimPorts(stateDir string, r *record) (err error) {
	var claimed []conf.PortMapping
	defer func() {
		if err != nil {
			for _, p := range claimed {
				unclaimPort(stateDir, r.key(), p)
			}
		}
	}()
	for _, p := range r.Ports {
		if err := claimPort(stateDir, r.key(), p); err != nil {
			return err
		}
		claimed = append(claimed, p)
	}
	return nil
}

func claimPort(stateDir, key string, p conf.PortMapping) error {
	dir := portDir(stateDir, p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	for _, e := range entries {
		if e.Name() != anyHost && hostName(p) != anyHost && e.Name() != hostName(p) {
			continue // two different specific addresses do not conflict
		}
		owner, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if string(owner) == key {
			continue
		}
		return fmt.Errorf("%w: host port %s/%d (host address %s) is published by another container; choose another hostPort",
			cnierr.ErrPortInUse, p.Protocol, p.HostPort, e.Name())
	}
	if err := portFree(p); err != nil {
		return err
	}
	tmp := claimTemp(stateDir, key, p)
	if err := os.WriteFile(tmp, []byte(key), 0o644); err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, filepath.Join(dir, hostName(p))); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: host port %s/%d is published by another container", cnierr.ErrPortInUse, p.Protocol, p.HostPort)
		}
		return fmt.Errorf("%w: %v", cnierr.ErrIO, err)
	}
	return nil
}

// portFree fails when a process on the node listens on the host port: the
// DNAT rule would silently steal its traffic.
func portFree(p conf.PortMapping) error {
	err := hostport.Probe(p.Protocol, p.HostIP, p.HostPort)
	if errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("%w: host port %s/%d is in use by a process on the node", cnierr.ErrPortInUse, p.Protocol, p.HostPort)
	}
	return nil // other bind errors (e.g. a hostIP not on this node yet) are not conflicts
}

func unclaimPort(stateDir, key string, p conf.PortMapping) {
	os.Remove(claimTemp(stateDir, key, p)) // left by a claim killed midway
	path := filepath.Join(portDir(stateDir, p), hostName(p))
	if owner, err := os.ReadFile(path); err == nil && string(owner) == key {
		os.Remove(path)
		os.Remove(portDir(stateDir, p)) // only succeeds when empty
	}
}

func claimTemp(stateDir, key string, p conf.PortMapping) string {
	return filepath.Join(portDir(stateDir, p), "."+key[:16])
}

func unclaimPorts(stateDir string, r *record) {
	for _, p := range r.Ports {
		unclaimPort(stateDir, r.key(), p)
	}
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

// flushUDPConntrack drops conntrack entries for newly published UDP ports:
// a client that sent to the port before the mapping existed keeps hitting
// the old (host) entry otherwise, because UDP "connections" never end.
func flushUDPConntrack(pms []conf.PortMapping) {
	for _, p := range pms {
		if p.Protocol != "udp" {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if f.AddProtocol(unix.IPPROTO_UDP) != nil || f.AddPort(netlink.ConntrackOrigDstPort, uint16(p.HostPort)) != nil {
			continue
		}
		netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	}
}

package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berthnet/berth/internal/hostport"
)

// Network is a CNI network found in the conf dir.
type Network struct {
	Name       string   `json:"name"`
	File       string   `json:"file"`
	CNIVersion string   `json:"cniVersion"`
	Plugins    []string `json:"plugins"`
	// PortMappings tells whether a plugin of the list takes the
	// portMappings capability (needed for -p and -P).
	PortMappings bool `json:"portMappings"`
	// Err says why the file cannot be used; such files are listed by
	// `runner networks` but never picked.
	Err string `json:"error,omitempty"`

	list *libcni.NetworkConfigList
}

// Networks lists the network configurations in the CNI conf dir, in the
// order libcni (and containerd) use: by file name, the first file with a
// name wins. Single-plugin .conf/.json files are upgraded to lists.
func (r *Runtime) Networks() ([]Network, error) {
	files, err := libcni.ConfFiles(r.cfg.CNIConfDir, []string{".conflist", ".conf", ".json"})
	if err != nil {
		return nil, fmt.Errorf("reading CNI conf dir %s: %w", r.cfg.CNIConfDir, err)
	}
	sort.Strings(files)
	seen := map[string]bool{}
	var nets []Network
	for _, file := range files {
		n := Network{File: file}
		list, err := loadConfList(file)
		if err != nil {
			n.Name, n.Err = filepath.Base(file), err.Error()
			nets = append(nets, n)
			continue
		}
		n.Name, n.CNIVersion, n.list = list.Name, list.CNIVersion, list
		for _, p := range list.Plugins {
			n.Plugins = append(n.Plugins, p.Network.Type)
			if p.Network.Capabilities["portMappings"] {
				n.PortMappings = true
			}
		}
		if seen[n.Name] {
			n.Err = "shadowed by an earlier file with the same network name"
		}
		seen[n.Name] = true
		nets = append(nets, n)
	}
	return nets, nil
}

func loadConfList(file string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(file, ".conflist") {
		return libcni.NetworkConfFromFile(file)
	}
	conf, err := libcni.ConfFromFile(file)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(conf)
}

// ErrUnknownNetwork means --net names no network in the conf dir.
var ErrUnknownNetwork = errors.New("unknown network")

// network finds the usable network called name.
func (r *Runtime) network(name string) (*Network, error) {
	nets, err := r.Networks()
	if err != nil {
		return nil, err
	}
	avail := []string{NetNone, NetHost}
	for i := range nets {
		n := &nets[i]
		if n.Err != "" {
			continue
		}
		if n.Name == name {
			return n, nil
		}
		avail = append(avail, n.Name)
	}
	return nil, fmt.Errorf("%w %q: no CNI network of that name in %s; available: %s",
		ErrUnknownNetwork, name, r.cfg.CNIConfDir, strings.Join(avail, ", "))
}

func (r *Runtime) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(r.cfg.CNIBinDirs, filepath.Join(r.store.dir, "cni"), nil)
}

// ifName is the container's interface on its CNI network.
const ifName = "eth0"

func runtimeConf(c *Container) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: c.ID, NetNS: c.State.NetNS, IfName: ifName}
	if len(c.Ports) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": c.Ports}
	}
	return rt
}

// attach runs CNI ADD for the container's network and records the result.
func (r *Runtime) attach(ctx context.Context, c *Container) error {
	att := c.State.Network
	list, err := libcni.NetworkConfFromBytes(att.ConfList)
	if err != nil {
		return fmt.Errorf("loading network %s: %w", att.Network, err)
	}
	res, err := r.cni().AddNetworkList(ctx, list, runtimeConf(c))
	if err != nil {
		return fmt.Errorf("attaching to network %s (CNI ADD): %w", att.Network, err)
	}
	cur, err := types100.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("reading CNI result of network %s: %w", att.Network, err)
	}
	if att.Result, err = json.Marshal(cur); err != nil {
		return err
	}
	att.IPs = nil
	for _, ip := range cur.IPs {
		att.IPs = append(att.IPs, ip.Address.IP.String())
	}
	return nil
}

// detach runs CNI DEL. Plugins treat DEL of something already gone as
// success, so detach may be repeated.
func (r *Runtime) detach(ctx context.Context, c *Container) error {
	att := c.State.Network
	list, err := libcni.NetworkConfFromBytes(att.ConfList)
	if err != nil {
		return fmt.Errorf("loading network %s: %w", att.Network, err)
	}
	if err := r.cni().DelNetworkList(ctx, list, runtimeConf(c)); err != nil {
		return fmt.Errorf("detaching from network %s (CNI DEL): %w", att.Network, err)
	}
	return nil
}

// resolvConf is the container's /etc/resolv.conf: the DNS settings the
// CNI result carries, else the node's own file.
func resolvConf(att *Attachment) string {
	if att != nil && att.Result != nil {
		var res types100.Result
		if json.Unmarshal(att.Result, &res) == nil && len(res.DNS.Nameservers) > 0 {
			return dnsFile(res.DNS)
		}
	}
	data, _ := os.ReadFile("/etc/resolv.conf")
	return string(data)
}

func dnsFile(d types.DNS) string {
	var b strings.Builder
	for _, ns := range d.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(d.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(d.Search, " "))
	}
	if d.Domain != "" {
		fmt.Fprintf(&b, "domain %s\n", d.Domain)
	}
	if len(d.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(d.Options, " "))
	}
	return b.String()
}

// ErrPortInUse means a requested host port is taken on this node.
var ErrPortInUse = errors.New("host port already in use")

// Free host ports for -P and -p without a host port come from Docker's
// range, above the kernel's default ephemeral range of outgoing ports.
const (
	randomPortMin = 49153
	randomPortMax = 65535
)

// reservePorts chooses host ports and reserves each (a file in ports/,
// created exclusively) for the container. The caller holds the global
// lock. On error, no reservation is left.
func (r *Runtime) reservePorts(id string, ports []PortMapping) (out []PortMapping, err error) {
	defer func() {
		if err != nil {
			r.releasePorts(id, out)
			out = nil
		}
	}()
	for _, p := range ports {
		if p.HostPort != 0 {
			if err := r.reservePort(id, p); err != nil {
				return out, err
			}
			out = append(out, p)
			continue
		}
		start := randomPortMin + rand.IntN(randomPortMax-randomPortMin+1)
		found := false
		for i := 0; i <= randomPortMax-randomPortMin && !found; i++ {
			p.HostPort = randomPortMin + (start-randomPortMin+i)%(randomPortMax-randomPortMin+1)
			found = r.reservePort(id, p) == nil
		}
		if !found {
			return out, fmt.Errorf("%w: no free host port for %d/%s in %d-%d", ErrPortInUse, p.ContainerPort, p.Protocol, randomPortMin, randomPortMax)
		}
		out = append(out, p)
	}
	return out, nil
}

func (r *Runtime) reservePort(id string, p PortMapping) error {
	path := r.store.portPath(p)
	for _, held := range r.store.overlappingPorts(p) {
		owner, err := os.ReadFile(held)
		if err != nil {
			continue
		}
		// A reservation whose container record is gone is stale (its
		// state was deleted by hand): take it over.
		if c, err := r.store.load(string(owner)); err == nil {
			return fmt.Errorf("%w: %d/%s is published by container %s", ErrPortInUse, p.HostPort, p.Protocol, c.Name)
		}
		os.Remove(held)
	}
	if err := probePort(p); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %d/%s", ErrPortInUse, p.HostPort, p.Protocol)
	}
	if err != nil {
		return fmt.Errorf("reserving host port: %w", err)
	}
	_, err = f.WriteString(id)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// probePort checks that no process of the node listens on the port (on
// its host address; without one, on any address of either family): the
// port mapping would silently steal its traffic. The runner runs in the
// node's network namespace, so a test bind tells.
func probePort(p PortMapping) error {
	err := hostport.Probe(p.Protocol, p.HostIP, p.HostPort)
	if err == nil {
		return nil
	}
	if a, perr := netip.ParseAddr(p.HostIP); perr == nil && !a.IsUnspecified() && !isLocalAddr(a) {
		return invalid("-p %s: host IP %s is not an address of this node", p, p.HostIP)
	}
	return fmt.Errorf("%w: %d/%s on this node (%v)", ErrPortInUse, p.HostPort, p.Protocol, unwrapAll(err))
}

func isLocalAddr(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, ad := range addrs {
		if pfx, err := netip.ParsePrefix(ad.String()); err == nil && pfx.Addr() == a {
			return true
		}
	}
	return false
}

func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// releasePorts drops the container's reservations (only its own) and
// returns how many it dropped.
func (r *Runtime) releasePorts(id string, ports []PortMapping) (released int) {
	for _, p := range ports {
		for _, path := range []string{r.store.portPath(p), r.store.legacyPortPath(p)} {
			if owner, err := os.ReadFile(path); err == nil && string(owner) == id && os.Remove(path) == nil {
				released++
			}
		}
	}
	return released
}

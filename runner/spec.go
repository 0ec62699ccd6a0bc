package runner

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/berthnet/berth/runner/cgroups"
)

// Network modes that are not CNI networks.
const (
	NetNone = "none" // own network namespace with only loopback
	NetHost = "host" // the runner's (the node's) network namespace
)

// Spec is what the user asked for in `runner run`.
type Spec struct {
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	// Network is a CNI network (conflist) name, NetNone or NetHost.
	Network string `json:"network"`
	// Ports are published ports; HostPort 0 means "pick a free one".
	Ports []PortMapping `json:"ports,omitempty"`
	// Expose with PublishAll publishes these ports on free host ports.
	Expose     []PortMapping `json:"expose,omitempty"`
	PublishAll bool          `json:"publishAll,omitempty"`

	Env       []string          `json:"env,omitempty"`
	Resources cgroups.Resources `json:"resources"`
	// Rootfs is the root filesystem directory, "" for the default
	// busybox tree. It is never written to (overlayfs lower layer).
	Rootfs string   `json:"rootfs,omitempty"`
	Args   []string `json:"args"`

	AutoRemove bool `json:"autoRemove,omitempty"`
	TTY        bool `json:"tty,omitempty"`
}

// PortMapping is one published port. The JSON names are those of the CNI
// portMappings capability, so a list of them is passed to plugins as is.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

func (p PortMapping) String() string {
	ip := p.HostIP
	if ip == "" {
		ip = "0.0.0.0"
	}
	return p.on(ip)
}

// on renders p as published on host address ip: "[::]:8080->80/tcp".
func (p PortMapping) on(ip string) string {
	return fmt.Sprintf("%s->%d/%s", net.JoinHostPort(ip, strconv.Itoa(p.HostPort)), p.ContainerPort, p.Protocol)
}

// Published renders p once per family it is published in, of those the
// container has addresses in: a mapping without host address is
// published on every address of each ("0.0.0.0:8080->80/tcp" and
// "[::]:8080->80/tcp").
func (p PortMapping) Published(ipv4, ipv6 bool) []string {
	if p.HostIP != "" {
		return []string{p.on(p.HostIP)}
	}
	var out []string
	if ipv4 {
		out = append(out, p.on("0.0.0.0"))
	}
	if ipv6 {
		out = append(out, p.on("::"))
	}
	return out
}

// ErrInvalid marks a bad user value; the message names the flag and the fix.
var ErrInvalid = errors.New("invalid argument")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// ParsePort parses -p: [hostIP:][hostPort:]containerPort[/protocol],
// an IPv6 hostIP in brackets ([2001:db8::1]:8080:80). An empty or absent
// hostPort publishes on a free port; no hostIP, on every address of the
// node in each family the network has, 0.0.0.0 or [::] on one family.
func ParsePort(s string) (PortMapping, error) {
	spec, proto, err := splitProto(s, "-p")
	if err != nil {
		return PortMapping{}, err
	}
	p := PortMapping{Protocol: proto}
	const format = "format [hostIP:][hostPort:]containerPort[/tcp|udp|sctp], an IPv6 hostIP in brackets, e.g. -p 127.0.0.1:8080:80 or -p [::]:8080:80"
	host := ""
	if rest, ok := strings.CutPrefix(spec, "["); ok {
		var found bool
		if host, spec, found = strings.Cut(rest, "]:"); !found {
			return p, invalid("-p %s: no \"]:\" after the IPv6 host address (%s)", s, format)
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
			return p, invalid("-p %s: host IP %q is not an IPv6 address (%s)", s, host, format)
		}
		if !strings.Contains(spec, ":") {
			spec = ":" + spec // [::]:80 publishes 80 on a free port
		}
	}
	parts := strings.Split(spec, ":")
	var hostPort, containerPort string
	switch {
	case len(parts) == 1 && host == "":
		containerPort = parts[0]
	case len(parts) == 2:
		hostPort, containerPort = parts[0], parts[1]
	case len(parts) == 3 && host == "":
		ip, err := netip.ParseAddr(parts[0])
		if err != nil || !ip.Is4() {
			return p, invalid("-p %s: host IP %q is not an IPv4 address (%s)", s, parts[0], format)
		}
		host = parts[0]
		hostPort, containerPort = parts[1], parts[2]
	default:
		return p, invalid("-p %s: expected [hostIP:][hostPort:]containerPort[/tcp|udp|sctp] (%s)", s, format)
	}
	if host != "" {
		ip := netip.MustParseAddr(host)
		if ip == netip.IPv6Loopback() {
			return p, invalid("-p %s: ::1 cannot be published: the kernel cannot forward connections to ::1 to a container (IPv6 has no route_localnet); use 127.0.0.1, the node's IPv6 address or [::]", s)
		}
		p.HostIP = ip.String()
	}
	if p.ContainerPort, err = parsePortNumber(containerPort); err != nil {
		return p, invalid("-p %s: container port: %v", s, err)
	}
	if hostPort != "" {
		if p.HostPort, err = parsePortNumber(hostPort); err != nil {
			return p, invalid("-p %s: host port: %v", s, err)
		}
	}
	return p, nil
}

// ParseExpose parses --expose: port[/protocol].
func ParseExpose(s string) (PortMapping, error) {
	spec, proto, err := splitProto(s, "--expose")
	if err != nil {
		return PortMapping{}, err
	}
	port, err := parsePortNumber(spec)
	if err != nil {
		return PortMapping{}, invalid("--expose %s: %v (format port[/tcp|udp|sctp], e.g. --expose 80)", s, err)
	}
	return PortMapping{ContainerPort: port, Protocol: proto}, nil
}

func splitProto(s, flag string) (string, string, error) {
	spec, proto, _ := strings.Cut(s, "/")
	switch proto {
	case "":
		proto = "tcp"
	case "tcp", "udp", "sctp":
	default:
		return "", "", invalid("%s %s: protocol %q is not tcp, udp or sctp", flag, s, proto)
	}
	return spec, proto, nil
}

func parsePortNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return n, nil
}

// minMemory is the smallest --memory accepted: below it even the runner's
// own first process cannot start, and the kernel OOM-kills at once.
const minMemory = 6 << 20

// ParseMemory parses --memory: a byte count with an optional unit b, k,
// m or g (powers of 1024; "kb", "mib" and the like are accepted too).
func ParseMemory(s string) (int64, error) {
	re := regexp.MustCompile(`^(?i)([0-9]+)\s*([kmg]?)(i?b)?$`)
	m := re.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, invalid("--memory %q: expected a number with an optional unit b, k, m or g, e.g. --memory 64m", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, invalid("--memory %q: %v", s, err)
	}
	shift := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30}[strings.ToLower(m[2])]
	if n > math.MaxInt64>>shift {
		return 0, invalid("--memory %q is too large", s)
	}
	n <<= shift
	if n < minMemory {
		return 0, invalid("--memory %q: the minimum is 6m", s)
	}
	return n, nil
}

// ParseCPUs parses --cpus: how many CPUs' worth of time the container
// may use, e.g. 0.5 or 1.5, at most the number of CPUs of the machine.
func ParseCPUs(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f <= 0 {
		return 0, invalid("--cpus %q: expected a positive number of CPUs, e.g. --cpus 0.5", s)
	}
	if f < 0.01 {
		return 0, invalid("--cpus %q: the minimum is 0.01", s)
	}
	if n := runtime.NumCPU(); f > float64(n) {
		return 0, invalid("--cpus %q: this machine has only %d CPUs", s, n)
	}
	return f, nil
}

var (
	nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	// RFC 1123 host name: dot-separated labels of letters, digits, '-'.
	hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)
)

// Validate checks everything in s that needs no system state.
func (s *Spec) Validate() error {
	if len(s.Args) == 0 {
		return invalid("no command given: runner run [flags] [--] CMD [ARGS...]")
	}
	if s.Name != "" && !nameRE.MatchString(s.Name) {
		return invalid("--name %q: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit", s.Name)
	}
	if s.Hostname != "" && (len(s.Hostname) > 64 || !hostnameRE.MatchString(s.Hostname)) {
		return invalid("--hostname %q: not a valid host name (letters, digits, '-' and '.', at most 64 characters)", s.Hostname)
	}
	if s.Network == "" {
		return invalid("--net is empty: name a CNI network, or none, or host")
	}
	if (s.Network == NetNone || s.Network == NetHost) && (len(s.Ports) > 0 || s.PublishAll) {
		return invalid("publishing ports (-p, -P) needs a CNI network, not --net %s", s.Network)
	}
	if s.PublishAll && len(s.Expose) == 0 {
		return invalid("-P publishes the --expose ports, but none are given: add --expose PORT")
	}
	for _, e := range s.Env {
		if k, _, _ := strings.Cut(e, "="); k == "" || strings.ContainsAny(k, " \t\n\x00") {
			return invalid("-e %q: expected KEY=VALUE", e)
		}
	}
	if s.Rootfs != "" {
		// overlayfs option syntax cannot carry these in lowerdir.
		if strings.ContainsAny(s.Rootfs, ",:") {
			return invalid("--rootfs %q: the path may not contain ',' or ':' (overlayfs option syntax)", s.Rootfs)
		}
		fi, err := os.Stat(s.Rootfs)
		if err != nil {
			return invalid("--rootfs %s: %v", s.Rootfs, errors.Unwrap(err))
		}
		if !fi.IsDir() {
			return invalid("--rootfs %s is not a directory", s.Rootfs)
		}
	}
	if s.Resources.MemoryBytes < 0 || s.Resources.CPUs < 0 || s.Resources.PidsLimit < 0 {
		return invalid("resource limits must not be negative")
	}
	return nil
}

// publishedPorts is the list of ports to publish before free host ports
// are chosen: -p mappings, then the --expose ports when -P is given.
func (s *Spec) publishedPorts() []PortMapping {
	ports := append([]PortMapping(nil), s.Ports...)
	if s.PublishAll {
		ports = append(ports, s.Expose...)
	}
	return ports
}

package conf

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/cnierr"
)

// Defaults shared by the bridge-family plugins.
const (
	DefaultBridge   = "berth0"
	DefaultStateDir = "/run/berth"
	MinMTU          = 576
	MaxMTU          = 65535
)

// SupportedVersions are the CNI spec versions every berth plugin speaks:
// results are given in the config's version (types.PrintResult converts).
// 0.3.x has no CHECK, 1.0.0 no GC and STATUS; libcni does not call them.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// DefaultCNIVersion is what berth writes into the conflists it makes: the
// newest version that every runtime in use accepts (podman 4.x and
// containerd 1.6/1.7 refuse 1.1.0 results). 1.1.0 brings GC and STATUS
// for runtimes that call them.
const DefaultCNIVersion = "1.0.0"

// ValidCNIVersion checks a cniVersion berth is asked to write or read.
func ValidCNIVersion(field, v string) error {
	if !slices.Contains(SupportedVersions, v) {
		return fmt.Errorf("%w: %s: cniVersion %q: berth supports %s", cnierr.ErrIncompatibleVersion, field, v, strings.Join(SupportedVersions, ", "))
	}
	return nil
}

// Bridge is the configuration of berth-bridge, and the base of
// berth-vxlan and berth-hostgw (which fill the subnet from the node lease).
type Bridge struct {
	types.NetConf

	BridgeName       string `json:"bridge"`
	IsGateway        *bool  `json:"isGateway"`        // default true
	IsDefaultGateway bool   `json:"isDefaultGateway"` // default route via the gateway
	ForceAddress     bool   `json:"forceAddress"`
	IPMasq           *bool  `json:"ipMasq"` // default true
	MTU              int    `json:"mtu"`
	HairpinMode      *bool  `json:"hairpinMode"` // default true: a container reaches its own published ports
	PromiscMode      bool   `json:"promiscMode"`
	Isolation        *bool  `json:"isolation"` // default true: no traffic to other berth networks
	StateDir         string `json:"stateDir"`
	LeaseDir         string `json:"leaseDir"` // vxlan/hostgw: where netd writes the node lease

	RuntimeConfig RuntimeConfig `json:"runtimeConfig"`
	// Args are the config's "args" (CNI conventions): args.cni.mac.
	Args struct {
		CNI struct {
			MAC string `json:"mac"`
		} `json:"cni"`
	} `json:"args"`

	// Filled by Parse.
	// MAC is the container interface's address: runtimeConfig.mac, else
	// args.cni.mac, else MAC= in CNI_ARGS (podman run --mac-address), as
	// the reference bridge does; "" for a random one.
	MAC      string `json:"-"`
	IPAMConf *IPAM  `json:"-"`
	// Scope is the whole network: its traffic is neither masqueraded nor
	// isolated. The subnet for bridge, the cluster CIDR for overlay modes.
	Scope netip.Prefix `json:"-"`
	// ScopeV6 is the IPv6 cluster CIDR of a leased network with IPv6
	// (from the node lease); zero otherwise.
	ScopeV6 netip.Prefix `json:"-"`
}

// RuntimeConfig holds the capabilities a runtime passes; a new capability
// is a new field here (with its validation in validateCommon).
type RuntimeConfig struct {
	PortMappings []PortMapping `json:"portMappings"`
	IPs          []string      `json:"ips"`
	MAC          string        `json:"mac"`
}

// PortMapping is one entry of the portMappings capability.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// ValidIfName reports why name cannot be a Linux interface name, or nil.
func ValidIfName(field, name string) error {
	switch {
	case name == "":
		return invalid(field, "empty interface name")
	case len(name) > 15:
		return invalid(field, fmt.Sprintf("%q is longer than 15 characters (IFNAMSIZ)", name))
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") || !nameRe.MatchString(name):
		return invalid(field, fmt.Sprintf("%q has characters an interface name cannot have (use letters, digits, '-', '_', '.')", name))
	}
	return nil
}

// ParseBridge decodes and validates the fields every bridge-family plugin
// shares; cniArgs is CNI_ARGS. The caller then fills the addressing:
// ParseIPAMFor for berth-bridge, the node lease for berth-vxlan and
// berth-hostgw.
func ParseBridge(stdin []byte, cniArgs string) (*Bridge, error) {
	c := &Bridge{}
	if err := Decode(stdin, c); err != nil {
		return nil, err
	}
	if err := c.validateCommon(); err != nil {
		return nil, err
	}
	if err := c.resolveMAC(cniArgs); err != nil {
		return nil, err
	}
	return c, nil
}

// resolveMAC picks the container MAC the way the reference bridge does.
func (c *Bridge) resolveMAC(cniArgs string) error {
	for _, kv := range strings.Split(cniArgs, ";") {
		if v, ok := strings.CutPrefix(kv, "MAC="); ok {
			if _, err := net.ParseMAC(v); err != nil {
				return fmt.Errorf("%w: CNI_ARGS MAC=%q is not a MAC address", cnierr.ErrInvalidEnv, v)
			}
			c.MAC = v
		}
	}
	if mac := c.Args.CNI.MAC; mac != "" {
		if _, err := net.ParseMAC(mac); err != nil {
			return invalid("args.cni.mac", fmt.Sprintf("%q is not a MAC address", mac))
		}
		c.MAC = mac
	}
	if c.RuntimeConfig.MAC != "" {
		c.MAC = c.RuntimeConfig.MAC // validated with the other capabilities
	}
	return nil
}

func (c *Bridge) validateCommon() error {
	if c.CNIVersion == "" {
		c.CNIVersion = "0.4.0" // skel refuses a config without one before we get here
	}
	if err := ValidCNIVersion("cniVersion", c.CNIVersion); err != nil {
		return err
	}
	if c.Name == "" {
		return invalid("name", "missing network name")
	}
	if !nameRe.MatchString(c.Name) {
		return invalid("name", fmt.Sprintf("%q: use letters, digits, '-', '_' or '.'", c.Name))
	}
	if c.BridgeName == "" {
		c.BridgeName = DefaultBridge
	}
	if err := ValidIfName("bridge", c.BridgeName); err != nil {
		return err
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		return invalid("mtu", fmt.Sprintf("%d is outside %d..%d", c.MTU, MinMTU, MaxMTU))
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.RuntimeConfig.MAC != "" {
		if _, err := net.ParseMAC(c.RuntimeConfig.MAC); err != nil {
			return invalid("runtimeConfig.mac", fmt.Sprintf("%q is not a MAC address", c.RuntimeConfig.MAC))
		}
	}
	for i := range c.RuntimeConfig.PortMappings {
		if err := c.RuntimeConfig.PortMappings[i].validate(fmt.Sprintf("runtimeConfig.portMappings[%d]", i)); err != nil {
			return err
		}
	}
	if err := checkDuplicatePorts(c.RuntimeConfig.PortMappings); err != nil {
		return err
	}
	return nil
}

// ParseIPAMFor fills IPAMConf (for bridge, from the config's ipam object).
func (c *Bridge) ParseIPAMFor(stdin []byte, cniArgs string) error {
	ic, err := ParseIPAM(stdin, cniArgs)
	if err != nil {
		return err
	}
	c.IPAMConf = ic
	if c.IPAMConf.Type == "" {
		c.IPAMConf.Type = IPAMType
	}
	for _, set := range ic.RangeSets {
		if set[0].Subnet.Addr().Is4() {
			c.Scope = set[0].Subnet // iptables rules are IPv4-only
			break
		}
	}
	return c.checkMTUForIPv6()
}

// MinIPv6MTU is the smallest MTU IPv6 works with (RFC 8200): the kernel
// removes IPv6 from an interface with less.
const MinIPv6MTU = 1280

func (c *Bridge) checkMTUForIPv6() error {
	if c.MTU == 0 || c.MTU >= MinIPv6MTU {
		return nil
	}
	for _, set := range c.IPAMConf.RangeSets {
		if set[0].Subnet.Addr().Is6() {
			return invalid("mtu", fmt.Sprintf("%d is below %d, the minimum for IPv6, and ipam has the IPv6 range %s", c.MTU, MinIPv6MTU, set[0].Subnet))
		}
	}
	return nil
}

// Defaults for the tri-state booleans.
func (c *Bridge) Gateway() bool        { return c.IsGateway == nil || *c.IsGateway || c.IsDefaultGateway }
func (c *Bridge) Masq() bool           { return c.IPMasq == nil || *c.IPMasq }
func (c *Bridge) Hairpin() bool        { return c.HairpinMode == nil || *c.HairpinMode }
func (c *Bridge) Isolated() bool       { return c.Isolation == nil || *c.Isolation }
func (c *Bridge) Ports() []PortMapping { return c.RuntimeConfig.PortMappings }

func (p *PortMapping) validate(field string) error {
	if p.HostPort < 1 || p.HostPort > 65535 {
		return invalid(field+".hostPort", fmt.Sprintf("%d is not a port (1..65535)", p.HostPort))
	}
	if p.ContainerPort < 1 || p.ContainerPort > 65535 {
		return invalid(field+".containerPort", fmt.Sprintf("%d is not a port (1..65535)", p.ContainerPort))
	}
	p.Protocol = strings.ToLower(p.Protocol)
	if p.Protocol == "" {
		p.Protocol = "tcp"
	}
	if p.Protocol != "tcp" && p.Protocol != "udp" && p.Protocol != "sctp" {
		return invalid(field+".protocol", fmt.Sprintf("%q: use tcp, udp or sctp", p.Protocol))
	}
	if p.HostIP != "" {
		a, err := netip.ParseAddr(p.HostIP)
		if err != nil {
			return invalid(field+".hostIP", fmt.Sprintf("%q is not an IP address", p.HostIP))
		}
		if a.IsUnspecified() {
			p.HostIP = ""
		} else if !a.Is4() {
			return invalid(field+".hostIP", fmt.Sprintf("%s: only IPv4 host addresses can be published", a))
		}
	}
	return nil
}

func checkDuplicatePorts(pms []PortMapping) error {
	seen := map[string]int{}
	for i, p := range pms {
		k := fmt.Sprintf("%s/%d", p.Protocol, p.HostPort)
		if j, ok := seen[k]; ok {
			return invalid(fmt.Sprintf("runtimeConfig.portMappings[%d]", i), fmt.Sprintf("host port %s is also mapped by portMappings[%d]", k, j))
		}
		seen[k] = i
	}
	return nil
}

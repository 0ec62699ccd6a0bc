package conf

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
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

// supportedVersions must match internal/cniplugin.SupportedVersions.
var supportedVersions = map[string]bool{"0.4.0": true, "1.0.0": true, "1.1.0": true}

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

	// Filled by Parse.
	IPAMConf *IPAM `json:"-"`
	// Scope is the whole network: its traffic is neither masqueraded nor
	// isolated. The subnet for bridge, the cluster CIDR for overlay modes.
	Scope netip.Prefix `json:"-"`
	// ScopeV6 is the IPv6 cluster CIDR of a leased network with IPv6
	// (from the node lease); zero otherwise.
	ScopeV6 netip.Prefix `json:"-"`
}

// RuntimeConfig holds the capabilities a runtime passes.
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
// shares. The caller then fills the addressing: ParseIPAMFor for
// berth-bridge, the node lease for berth-vxlan and berth-hostgw.
func ParseBridge(stdin []byte) (*Bridge, error) {
	c := &Bridge{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, fmt.Errorf("%w: config is not valid JSON: %v", cnierr.ErrDecode, err)
	}
	if err := c.validateCommon(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Bridge) validateCommon() error {
	if c.CNIVersion == "" {
		c.CNIVersion = "0.4.0" // the spec's rule for a missing version on old configs
	}
	if !supportedVersions[c.CNIVersion] {
		return fmt.Errorf("%w: cniVersion %q: berth supports 0.4.0, 1.0.0 and 1.1.0", cnierr.ErrIncompatibleVersion, c.CNIVersion)
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

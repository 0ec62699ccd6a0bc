package netd

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berthnet/berth/netd/backend"
	"github.com/berthnet/berth/netd/backend/bgp"
)

// bgpFlags registers the bgp mode's options on fs. The returned function
// checks them once fs is parsed (and the config file applied).
func (c *Config) bgpFlags(fs *flag.FlagSet) (finish func() error) {
	var asn uint
	peers := &bgpPeersFlag{}
	fs.UintVar(&asn, "bgp-asn", bgp.DefaultASN, "bgp: this node's AS number, e.g. 64512 (all nodes alike: one iBGP cluster)")
	fs.IntVar(&c.BGP.Port, "bgp-port", bgp.DefaultPort, "bgp: TCP port of this node's speaker and of its peers, e.g. 179")
	fs.BoolVar(&c.BGP.RouteReflector, "bgp-route-reflector", false, "bgp: this node reflects routes; the nodes that are not reflectors then peer only with the reflectors (use 2+ reflectors beyond ~20 nodes)")
	fs.BoolVar(&c.BGP.NodeMesh, "bgp-node-mesh", true, "bgp: peer with the other nodes; turn off when external routers (--bgp-peers) carry every node's routes")
	fs.Var(peers, "bgp-peers", "bgp: external routers, comma-separated ADDRESS:ASN[:PASSWORD] (TCP MD5), an IPv6 address in brackets, "+
		"e.g. 192.168.50.254:64600:s3cret,[fd00:50::254]:64600 (an IPv6 router gets the IPv6 blocks); "+
		"a password with a comma, a password file, a port or a name per router: use the config file's \"bgp-peers\" list of "+
		`{"address", "asn", "port", "password" or "password-file", "name"}`)
	fs.BoolVar(&c.BGP.AcceptForeign, "bgp-accept-foreign", false, "bgp: also install learned prefixes outside the cluster CIDR (default: ignored, so a peer cannot hijack other traffic)")
	fs.BoolVar(&c.BGP.Edge, "bgp-edge", false, "bgp: this node is the cluster's edge: it announces every node's block to its external routers (default: only its own, so it is never a transit)")
	fs.DurationVar(&c.BGP.RestartTime, "bgp-restart-time", 120*time.Second, "bgp: graceful restart time announced to peers: how long they keep this node's routes while netd restarts")
	fs.DurationVar(&c.BGP.HoldTime, "bgp-hold-time", 9*time.Second, "bgp: hold time proposed to every peer (the session takes the smaller of the two), e.g. 90s; a dead peer is noticed after it; 3s to 65535s")
	fs.DurationVar(&c.BGP.KeepaliveInterval, "bgp-keepalive-interval", 0, "bgp: keepalive interval, e.g. 30s (default a third of --bgp-hold-time)")
	return func() error {
		if asn == 0 || asn > 1<<32-1 {
			return fmt.Errorf("--bgp-asn: %d is not an AS number (1..4294967295)", asn)
		}
		c.BGP.ASN = uint32(asn)
		c.BGP.Peers = peers.peers
		seen := map[netip.Addr]bool{}
		for _, p := range c.BGP.Peers {
			if seen[p.Address] {
				return fmt.Errorf("--bgp-peers: %s is given twice", p.Address)
			}
			seen[p.Address] = true
		}
		b := &c.BGP
		switch {
		case b.HoldTime < 3*time.Second || b.HoldTime > 65535*time.Second || b.HoldTime%time.Second != 0:
			return fmt.Errorf("--bgp-hold-time: %s: want whole seconds from 3s to 65535s (RFC 4271)", b.HoldTime)
		case b.KeepaliveInterval < 0 || b.KeepaliveInterval%time.Second != 0:
			return fmt.Errorf("--bgp-keepalive-interval: %s: want whole seconds", b.KeepaliveInterval)
		case b.KeepaliveInterval > b.HoldTime/3:
			return fmt.Errorf("--bgp-keepalive-interval: %s is more than a third of --bgp-hold-time %s: the session would drop between keepalives", b.KeepaliveInterval, b.HoldTime)
		case b.RestartTime < 0 || b.RestartTime > 4095*time.Second:
			return fmt.Errorf("--bgp-restart-time: %s: the graceful restart capability carries 0 to 4095s", b.RestartTime)
		}
		if b.KeepaliveInterval == 0 {
			b.KeepaliveInterval = b.HoldTime / 3
		}
		return nil
	}
}

// bgpPeersFlag is --bgp-peers: ADDRESS:ASN[:PASSWORD],... on the command
// line; in the config file also a list of router objects, so that a
// password may hold commas or come from a file.
type bgpPeersFlag struct{ peers []backend.BGPPeer }

func (f *bgpPeersFlag) String() string {
	if f == nil {
		return ""
	}
	var out []string
	for _, p := range f.peers {
		host := p.Address.String()
		if p.Address.Is6() {
			host = "[" + host + "]"
		}
		out = append(out, fmt.Sprintf("%s:%d", host, p.ASN)) // never the password
	}
	return strings.Join(out, ",")
}

func (f *bgpPeersFlag) Set(s string) error {
	peers, err := parseBGPPeers(s)
	f.peers = peers
	return err
}

// bgpPeerConfig is one router in the config file's "bgp-peers" list.
type bgpPeerConfig struct {
	Address      string `json:"address"`
	ASN          uint32 `json:"asn"`
	Port         int    `json:"port"`
	Password     string `json:"password"`
	PasswordFile string `json:"password-file"`
	Name         string `json:"name"`
}

// SetJSON takes the config file's value: a string as on the command
// line, or a list of strings or router objects.
func (f *bgpPeersFlag) SetJSON(raw json.RawMessage) error {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return f.Set(s)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf(`want "ADDRESS:ASN[:PASSWORD],..." or a list of {"address", "asn", ...}`)
	}
	f.peers = nil
	for i, item := range list {
		if json.Unmarshal(item, &s) == nil {
			p, err := parseBGPPeers(s)
			if err != nil {
				return err
			}
			f.peers = append(f.peers, p...)
			continue
		}
		var pc bgpPeerConfig
		dec := json.NewDecoder(bytes.NewReader(item))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&pc); err != nil {
			return fmt.Errorf("[%d]: %w", i, err)
		}
		p, err := pc.peer()
		if err != nil {
			return fmt.Errorf("[%d]: %w", i, err)
		}
		f.peers = append(f.peers, p)
	}
	return nil
}

func (pc bgpPeerConfig) peer() (backend.BGPPeer, error) {
	addr, err := netip.ParseAddr(pc.Address)
	switch {
	case err != nil || addr.Zone() != "" || addr.Is4In6():
		return backend.BGPPeer{}, fmt.Errorf("address: %q is not an IP address", pc.Address)
	case pc.ASN == 0:
		return backend.BGPPeer{}, fmt.Errorf("asn: missing (the router's AS number)")
	case pc.Port < 0 || pc.Port > 65535:
		return backend.BGPPeer{}, fmt.Errorf("port: %d is not a TCP port", pc.Port)
	case pc.Password != "" && pc.PasswordFile != "":
		return backend.BGPPeer{}, errors.New("password and password-file: give one")
	case len(pc.Password) > 80:
		return backend.BGPPeer{}, errors.New("password: longer than TCP MD5's 80 bytes")
	}
	p := backend.BGPPeer{Address: addr, ASN: pc.ASN, Port: pc.Port, Password: pc.Password, Name: pc.Name}
	if pc.PasswordFile != "" {
		data, err := os.ReadFile(pc.PasswordFile)
		if err != nil {
			return p, fmt.Errorf("password-file: %w", err)
		}
		p.Password = strings.TrimRight(string(data), "\r\n")
		if p.Password == "" || len(p.Password) > 80 {
			return p, fmt.Errorf("password-file %s: want 1 to 80 bytes (one line)", pc.PasswordFile)
		}
	}
	return p, nil
}

// parseBGPPeers reads --bgp-peers: ADDRESS:ASN[:PASSWORD],...
func parseBGPPeers(s string) ([]backend.BGPPeer, error) {
	var out []backend.BGPPeer
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		host, rest := item, ""
		if strings.HasPrefix(item, "[") { // [IPv6]:ASN[:PASSWORD]
			end := strings.Index(item, "]")
			if end < 0 || !strings.HasPrefix(item[end+1:], ":") {
				return nil, fmt.Errorf("--bgp-peers: %q: want [IPV6]:ASN[:PASSWORD], e.g. [fd00:50::254]:64600", item)
			}
			host, rest = item[1:end], item[end+2:]
		} else if i := strings.Index(item, ":"); i >= 0 {
			host, rest = item[:i], item[i+1:]
		}
		parts := append([]string{host}, strings.SplitN(rest, ":", 2)...)
		if rest == "" {
			return nil, fmt.Errorf("--bgp-peers: %q: want ADDRESS:ASN[:PASSWORD], e.g. 192.168.50.254:64600 or [fd00:50::254]:64600", item)
		}
		addr, err := netip.ParseAddr(parts[0])
		switch {
		case err != nil && strings.Count(item, ":") > 2:
			return nil, fmt.Errorf("--bgp-peers: %q: write an IPv6 address in brackets: [fd00:50::254]:64600", item)
		case err != nil || addr.Zone() != "" || addr.Is4In6():
			return nil, fmt.Errorf("--bgp-peers: %q: %q is not an IP address", item, parts[0])
		}
		asn, err := strconv.ParseUint(parts[1], 10, 32)
		if err != nil || asn == 0 {
			return nil, fmt.Errorf("--bgp-peers: %q: %q is not an AS number", item, parts[1])
		}
		p := backend.BGPPeer{Address: addr, ASN: uint32(asn)}
		if len(parts) == 3 {
			p.Password = parts[2]
		}
		out = append(out, p)
	}
	return out, nil
}

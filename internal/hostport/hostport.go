// Package hostport tells whether a process of this network namespace
// listens on a host port, by binding it for a moment. Publishing such a
// port with DNAT would silently steal its traffic, so the runner asks
// before it publishes.
package hostport

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// Probe binds proto (tcp or udp) on hostIP:port and releases it at once:
// hostIP "" is every address of both families, "0.0.0.0" or "::" every
// address of one. It returns the bind error (errors.Is
// syscall.EADDRINUSE when taken), or nil when the port is free or proto
// cannot be probed from Go (sctp). A node without IPv6 has every IPv6
// port free for "".
func Probe(proto, hostIP string, port int) error {
	if hostIP == "" {
		if err := Probe(proto, "0.0.0.0", port); err != nil {
			return err
		}
		err := Probe(proto, "::", port)
		if errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil
		}
		return err
	}
	// tcp4/udp4 or tcp6/udp6: an IPv6 socket is then IPv6 only, so "::"
	// does not also probe IPv4.
	family := "4"
	if a, err := netip.ParseAddr(hostIP); err == nil && a.Is6() && !a.Is4In6() {
		family = "6"
	}
	addr := net.JoinHostPort(hostIP, strconv.Itoa(port))
	switch proto {
	case "tcp":
		l, err := net.Listen("tcp"+family, addr)
		if err == nil {
			l.Close()
		}
		return err
	case "udp":
		c, err := net.ListenPacket("udp"+family, addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	return nil
}

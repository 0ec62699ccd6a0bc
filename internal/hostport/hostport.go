// Package hostport tells whether a process of this network namespace
// listens on a host port, by binding it for a moment. Publishing such a
// port with DNAT would silently steal its traffic, so both the runner and
// the CNI plugins ask before they publish.
package hostport

import (
	"net"
	"strconv"
)

// Probe binds proto (tcp or udp) on hostIP:port ("" = every address) and
// releases it at once. It returns the bind error (errors.Is
// syscall.EADDRINUSE when taken), or nil when the port is free or proto
// cannot be probed from Go (sctp).
func Probe(proto, hostIP string, port int) error {
	if hostIP == "" {
		hostIP = "0.0.0.0"
	}
	addr := net.JoinHostPort(hostIP, strconv.Itoa(port))
	switch proto {
	case "tcp":
		l, err := net.Listen("tcp4", addr)
		if err == nil {
			l.Close()
		}
		return err
	case "udp":
		c, err := net.ListenPacket("udp4", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	return nil
}

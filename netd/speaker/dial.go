package speaker

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"reflect"
	"syscall"
	"time"
	"unsafe"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"golang.org/x/sys/unix"
)

// Sessions between nodes are opened by netd itself, not by GoBGP: GoBGP
// waits a random 1-2s before it first dials a neighbor (and 1-2s between
// attempts), whatever the connect-retry timer says, which alone put a
// joining node's routes 1-2.4s away from the other nodes and a restarted
// node's sessions 2-3s away. netd dials as soon as the session is Active
// and hands the connection to GoBGP as if its listener had accepted it:
// GoBGP takes an incoming connection from a configured neighbor at once.
// GoBGP has no API for that, so the speaker sends the connection on the
// server's queue of accepted connections (an unexported field, found by
// reflection: acceptQueue). Without it (another GoBGP version), sessions
// are opened by GoBGP alone, as before; TestSessionUpAtOnce says so.
//
// Only the side that dials (Neighbor.Passive false) does this, so there
// is still one connection per session. GoBGP's own dialing stays on as a
// fallback; once netd's connection is taken, GoBGP stops its own.
const (
	// After a failed attempt (the neighbor has not configured this node
	// yet, or is restarting), the next one comes after dialFirstWait,
	// doubling up to dialMaxWait: an attempt costs a TCP handshake, and
	// the wait adds to the time a joining node's routes take.
	dialFirstWait = 25 * time.Millisecond
	dialMaxWait   = 100 * time.Millisecond
	dialFor       = 10 * time.Second // then GoBGP's own attempts (every 1-2s) take over
	dialTimeout   = time.Second
	// handOverWait is how long the dialer leaves GoBGP to take a
	// connection before it looks at the session again.
	handOverWait = 200 * time.Millisecond
	// openWait is how long an attempt waits for the neighbor's OPEN
	// before handing the connection over anyway (a loaded peer).
	openWait = 500 * time.Millisecond
)

// acceptQueue is the channel on which GoBGP's listeners pass accepted
// connections to its server loop, or nil when it cannot be found (or the
// server listens on nothing). It is set once by StartBgp, which has
// returned (its change ran on the server's goroutine and was waited for).
func acceptQueue(srv *server.BgpServer) chan<- *net.TCPConn {
	f := reflect.ValueOf(srv).Elem().FieldByName("acceptCh")
	if !f.IsValid() || f.Type() != reflect.TypeFor[chan *net.TCPConn]() {
		return nil
	}
	return *(*chan *net.TCPConn)(unsafe.Pointer(f.UnsafeAddr()))
}

// dialsItself reports whether netd opens the session to n itself.
func (s *Speaker) dialsItself(n Neighbor) bool {
	return s.accept != nil && !n.External && !n.Passive
}

// dial opens ns's session while GoBGP has it Active (waiting for a
// connection), for up to dialFor. A second call while one runs for the
// same session returns at once.
func (s *Speaker) dial(ns *nodeSession) {
	n := ns.n
	s.nodesMu.Lock()
	if ns.dialing || !s.dialsItself(n) {
		s.nodesMu.Unlock()
		return
	}
	ns.dialing = true
	s.nodesMu.Unlock()
	defer func() {
		s.nodesMu.Lock()
		ns.dialing = false
		s.nodesMu.Unlock()
	}()
	wait := dialFirstWait
	for start := time.Now(); time.Since(start) < dialFor; time.Sleep(wait) {
		s.nodesMu.Lock()
		current := s.nodes[n.Address] == ns
		s.nodesMu.Unlock()
		if !current || !s.sessionActive(n.Address) {
			return // removed or replaced (its own Active state dials), or connected
		}
		conn, err := s.connect(n)
		if err == nil {
			select {
			case s.accept <- conn:
				// GoBGP's session takes it over; the loop then sees the
				// session leave Active (given the time to: a second
				// connection would only be closed), or it retries.
				wait = handOverWait
				continue
			default:
				conn.Close() // the server is swamped: later
			}
		} else {
			s.log.Debug("dialing BGP neighbor", "peer", n.Address, "err", err)
		}
		wait = min(2*wait, dialMaxWait)
	}
}

// sessionActive reports whether GoBGP's session to addr waits for a
// connection.
func (s *Speaker) sessionActive(addr netip.Addr) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	active := false
	s.srv.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		active = p.GetState().GetSessionState() == api.PeerState_ACTIVE
	})
	return active
}

// connect opens a TCP connection to n's BGP port from this node's
// address of its family (GoBGP checks that it is the configured local
// address), signed with n's password, and returns it once n has sent its
// OPEN, so a connection n's speaker closes at once (it does not know this
// node yet, or holds the session idle) is never handed to GoBGP: that
// would hold this side idle too.
func (s *Speaker) connect(n Neighbor) (*net.TCPConn, error) {
	local := s.listenAddr(n.Address)
	if !local.IsValid() {
		local = s.cfg.RouterID
	}
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)),
		Timeout:   dialTimeout,
		Control: func(_, _ string, c syscall.RawConn) error {
			if n.Password == "" {
				return nil
			}
			return setMD5(c, n.Address, n.Password)
		},
	}
	c, err := d.Dial("tcp", netip.AddrPortFrom(n.Address, uint16(s.port(n))).String())
	if err != nil {
		return nil, err
	}
	conn := c.(*net.TCPConn)
	if err := awaitData(conn, openWait); err != nil && !errors.Is(err, errDataLate) {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

var errDataLate = errors.New("no data yet")

// awaitData waits until conn has data to read, without reading it (GoBGP
// reads the OPEN), or the peer closed it (an error), or timeout passed
// (errDataLate).
func awaitData(conn *net.TCPConn, timeout time.Duration) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	defer conn.SetReadDeadline(time.Time{})
	var n int
	var rerr error
	buf := make([]byte, 1)
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errDataLate
	case err != nil:
		return err
	case rerr != nil:
		return rerr
	case n == 0:
		return errors.New("closed by the neighbor before its OPEN")
	}
	return nil
}

// setMD5 signs the connection's segments to peer with password (RFC
// 2385), as GoBGP does for the connections it dials.
func setMD5(c syscall.RawConn, peer netip.Addr, password string) error {
	sig := &unix.TCPMD5Sig{Keylen: uint16(len(password))}
	copy(sig.Key[:], password)
	if peer.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sig.Addr))
		sa.Family = unix.AF_INET
		sa.Addr = peer.As4()
	} else {
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sig.Addr))
		sa.Family = unix.AF_INET6
		sa.Addr = peer.As16()
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptTCPMD5Sig(int(fd), unix.IPPROTO_TCP, unix.TCP_MD5SIG, sig)
	}); err != nil {
		return err
	}
	return serr
}

package testenv

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// SYNAnswered sends, from netns n, one TCP SYN from src to dst as a raw
// Ethernet frame out of ifName to the MAC gw, and reports whether a
// SYN-ACK came back within a second and a half. It reaches what a
// container's own stack would never send: a container aiming at the
// node's 127.0.0.1 (the kernel keeps 127/8 on lo) through its gateway.
// The frame socket sees the answer before the container's stack drops it
// as a martian, so nothing has to keep that stack from resetting it.
func SYNAnswered(n ns.NetNS, ifName string, gw net.HardwareAddr, src, dst netip.AddrPort) (bool, error) {
	var answered bool
	err := n.Do(func(ns.NetNS) error {
		ifc, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifc.Index}); err != nil {
			return fmt.Errorf("binding the packet socket to %s: %w", ifName, err)
		}
		tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		frame := synFrame(ifc.HardwareAddr, gw, src, dst)
		if _, err := unix.Write(fd, frame); err != nil {
			return fmt.Errorf("sending the SYN out of %s: %w", ifName, err)
		}
		buf := make([]byte, 2048)
		for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
			m, err := unix.Read(fd, buf)
			if err != nil {
				continue // the receive timeout: look at the clock again
			}
			if isSYNACK(buf[:m], dst, src) {
				answered = true
				return nil
			}
		}
		return nil
	})
	return answered, err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// synFrame is Ethernet + IPv4 + TCP SYN, checksums filled in.
func synFrame(from, to net.HardwareAddr, src, dst netip.AddrPort) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], rand.Uint32())
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	s, d := src.Addr().As4(), dst.Addr().As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, unix.IPPROTO_TCP, 0, byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], Checksum(append(pseudo, tcp...)))

	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(tcp)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, unix.IPPROTO_TCP
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip))

	eth := append(append(append([]byte{}, to...), from...), 0x08, 0x00)
	return append(append(eth, ip...), tcp...)
}

// isSYNACK reports whether frame is a TCP SYN-ACK from src to dst.
func isSYNACK(frame []byte, src, dst netip.AddrPort) bool {
	if len(frame) < 14+20+20 || frame[12] != 0x08 || frame[13] != 0x00 {
		return false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+14 {
		return false
	}
	from, _ := netip.AddrFromSlice(ip[12:16])
	to, _ := netip.AddrFromSlice(ip[16:20])
	tcp := ip[ihl:]
	return from == src.Addr() && to == dst.Addr() &&
		binary.BigEndian.Uint16(tcp[0:]) == src.Port() && binary.BigEndian.Uint16(tcp[2:]) == dst.Port() &&
		tcp[13]&0x12 == 0x12
}

// Checksum is the Internet checksum of b (RFC 1071), ready for a header.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

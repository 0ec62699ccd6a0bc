package speaker

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNoMD5 means the kernel cannot sign TCP segments (RFC 2385): it was
// built without CONFIG_TCP_MD5SIG. A session configured with a password
// must not silently run without one, so netd refuses it.
var ErrNoMD5 = errors.New("this kernel has no TCP MD5 signature support (CONFIG_TCP_MD5SIG); BGP passwords cannot be used here")

// md5Supported probes the kernel once with a throwaway socket.
func md5Supported() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return nil // cannot tell; let GoBGP report
	}
	defer unix.Close(fd)
	sig := &unix.TCPMD5Sig{Keylen: 4}
	sig.Addr.Family = unix.AF_INET
	copy(sig.Key[:], "test")
	err = unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, sig)
	if errors.Is(err, syscall.ENOPROTOOPT) {
		return ErrNoMD5
	}
	return nil
}

// Package netnsdir is the directory berth's plugins share per network
// namespace, whatever stateDir their network configs give: the iptables
// lock, the host port claims and the bridge locks. iptables rules, host
// ports and bridges belong to a network namespace, so whatever serialises
// changes to them or records who holds them must too; two networks with
// different stateDirs on one node still share one namespace.
//
// A namespace is identified by its cookie (SO_NETNS_COOKIE): a 64-bit
// number the kernel never gives to another namespace until reboot, unlike
// the nsfs inode (/proc/self/ns/net), which is reused as soon as a
// namespace is freed and could hand a new namespace the stale port claims
// of a dead one. The directories live in Root, on the tmpfs /run: they
// describe kernel state and must not outlive a reboot.
package netnsdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/cnierr"
)

// Root holds one directory per network namespace berth plugins ran in.
const Root = "/run/berth/netns"

// ID names the network namespace of the calling thread: its cookie, or
// "ino-<inode>" on kernels older than 5.14 that have no cookie.
func ID() (string, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("%w: identifying the network namespace: %v", cnierr.ErrIO, err)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	unix.Close(fd)
	if err == nil {
		return strconv.FormatUint(cookie, 10), nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("%w: identifying the network namespace: %v", cnierr.ErrIO, err)
	}
	return "ino-" + strconv.FormatUint(st.Ino, 10), nil
}

// Current is the directory of the calling thread's network namespace,
// created if needed.
func Current() (string, error) {
	id, err := ID()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(Root, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("%w: creating %s: %v", cnierr.ErrIO, dir, err)
	}
	return dir, nil
}

// Remove deletes the directory of the network namespace at nsPath, for
// whoever removes that namespace (test beds, the benchmark): its locks
// and claims mean nothing once it is gone.
func Remove(nsPath string) error {
	n, err := ns.GetNS(nsPath)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error {
		id, err := ID()
		if err != nil {
			return err
		}
		return os.RemoveAll(filepath.Join(Root, id))
	})
}

// Lock is a held flock on a file of the namespace's directory. The kernel
// releases it if the holder dies.
type Lock struct {
	Dir string // the namespace's directory
	f   *os.File
}

// Acquire takes the lock called name in the calling thread's namespace,
// waiting for it: exclusive, or shared with other shared holders.
func Acquire(name string, shared bool) (*Lock, error) {
	dir, err := Current()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: opening lock %s: %v", cnierr.ErrIO, name, err)
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: locking %s: %v", cnierr.ErrIO, name, err)
	}
	return &Lock{Dir: dir, f: f}, nil
}

// Release drops the lock.
func (l *Lock) Release() { l.f.Close() }

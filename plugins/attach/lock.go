package attach

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/berthnet/berth/internal/cnierr"
)

// The calls on one attachment (network, container, interface) run one at
// a time, under the attachment's lock: an flock on <key>.lock beside its
// record, taken before the record is read and held to the end of ADD,
// DEL, CHECK and each of GC's teardowns. Runtimes do overlap them: one
// whose ADD timed out sends DEL while the ADD may still run (podman does
// not kill it), and a DEL or CHECK that read the record midway through an
// ADD would undo or judge half an attachment.
//
// One file per attachment rather than a fixed set of bucket files per
// network: containers that shared a bucket would wait for each other's
// calls, and GC would skip an attachment whose bucket a neighbour holds.
// The file goes with the attachment: its last holder removes it while
// still holding the lock, and a call that had opened it before then finds
// the path no longer naming the file it locked (stillNamed), and opens it
// again. The kernel drops an flock when its holder dies, so a kill -9
// leaves at most a free lock file, which the next call on the attachment,
// or GC (removeStaleLocks), removes.
//
// Lock order: the attachment's lock comes first, before the name claim,
// the bridge's lock, the fast path's, IPAM's and the iptables lock; a
// call holds one attachment's lock at a time, and GC, which holds none of
// the others when it takes one, only tries.
const extLock = ".lock"

// lockWait bounds how long a call waits for another call on its
// attachment: far longer than an ADD takes on a loaded node, and shorter
// than kubelet's 2 minute runtime request timeout, so that the runtime
// gets an error that says why instead of its own timeout.
const lockWait = 60 * time.Second

type attachmentLock struct {
	f        *os.File
	path     string
	stateDir string
	rec      *record // whose: Network, ContainerID and IfName
}

func lockPath(stateDir string, r *record) string {
	return filepath.Join(networkDir(stateDir, r.Network), r.key()[:24]+extLock)
}

// lockAttachment takes r's lock for op (ADD, DEL, CHECK), waiting up to
// wait for the call that holds it; error 11 after that, naming the holder.
func lockAttachment(stateDir string, r *record, op string, wait time.Duration) (*attachmentLock, error) {
	deadline := time.Now().Add(wait)
	// Polled rather than a blocking flock, which cannot be given up on;
	// the calls on one attachment rarely meet, and then for one call's
	// time, milliseconds.
	pause := time.Millisecond
	for {
		l, err := tryLockAttachment(stateDir, r, op)
		if l != nil || err != nil {
			return l, err
		}
		if time.Now().After(deadline) {
			holder, _ := os.ReadFile(lockPath(stateDir, r))
			return nil, fmt.Errorf("%w: container %s (%s) on network %s is busy: another call on it (%s) has held its lock %s for over %s; try again once it ends, or end it",
				cnierr.ErrTryAgainLater, r.ContainerID, r.IfName, r.Network, strings.TrimSpace(string(holder)), lockPath(stateDir, r), wait)
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// tryLockAttachment takes r's lock for op if no other call holds it; nil
// when one does.
func tryLockAttachment(stateDir string, r *record, op string) (*attachmentLock, error) {
	path := lockPath(stateDir, r)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("%w: creating state dir: %v", cnierr.ErrIO, err)
	}
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%w: opening the lock of container %s (%s): %v", cnierr.ErrIO, r.ContainerID, r.IfName, err)
		}
		taken, err := tryFlock(f)
		switch {
		case err != nil:
			f.Close()
			return nil, fmt.Errorf("%w: locking %s: %v", cnierr.ErrIO, path, err)
		case !taken:
			f.Close()
			return nil, nil
		case !stillNamed(f, path):
			f.Close() // its last holder removed it meanwhile
			continue
		}
		// Who holds it, for the error of a call that waits too long.
		f.Truncate(0)
		fmt.Fprintf(f, "%s by pid %d\n", op, os.Getpid())
		return &attachmentLock{f: f, path: path, stateDir: stateDir, rec: r}, nil
	}
}

// tryFlock takes f's exclusive flock if it is free.
func tryFlock(f *os.File) (bool, error) {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.EWOULDBLOCK):
			return false, nil
		case !errors.Is(err, syscall.EINTR):
			return false, err
		}
	}
}

// unlock releases the lock, removing its file first when the attachment
// has no record left (DEL, GC, a failed ADD, a CHECK of nothing).
func (l *attachmentLock) unlock() {
	if !hasRecord(l.stateDir, l.rec) {
		os.Remove(l.path)
	}
	l.f.Close()
}

// hasRecord reports whether r's attachment has a record, live or
// leaving; true in doubt (the state dir cannot be read).
func hasRecord(stateDir string, r *record) bool {
	return exists(recordPath(stateDir, r)) || exists(leavingPath(stateDir, r))
}

// removeStaleLocks removes the lock files in dir that no call holds and
// whose attachment has no record: those of calls killed before they
// wrote one.
func removeStaleLocks(dir string) {
	removeUnheld(filepath.Join(dir, "*"+extLock), func(p string) bool {
		base := strings.TrimSuffix(p, extLock)
		return exists(base+extLive) || exists(base+extLeaving)
	})
}

// removeUnheld removes the files matching pattern whose flock no process
// holds (their writer or caller died), unless keep says otherwise.
func removeUnheld(pattern string, keep func(path string) bool) {
	paths, _ := filepath.Glob(pattern)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if taken, _ := tryFlock(f); taken && stillNamed(f, p) && !keep(p) {
			os.Remove(p)
		}
		f.Close()
	}
}

// exists reports whether path exists; true in doubt.
func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

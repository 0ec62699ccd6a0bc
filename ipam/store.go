package ipam

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/berthnet/berth/internal/cnierr"
)

// The on-disk layout under <dataDir>/<network>/ is host-local's, so that a
// network moved from host-local keeps its reservations:
//
//	lock                 flock(2) held for every change
//	<ip>                 "containerID\r\nifName": the reservation
//	last_reserved_ip.<n> round-robin cursor of range set n
//
// berth adds an index so that DEL and CHECK never walk the directory:
//
//	attach/<hash>        JSON record of one attachment and its addresses
//	.berth-index         marker: the index covers every reservation
//
// Crash safety: a reservation file appears with its full content at once
// (written to a temporary file, then link(2)ed into place, which fails if the
// address is taken), and an attachment's record is written *before* its
// first reservation (marked pending) and completed after the last. So after
// a SIGKILL at any point, either the record is complete, or it is pending
// and a DEL/GC of that attachment finds its reservations by the one-off scan
// below. No address is ever reserved twice because link(2) is atomic.

const (
	lockFile     = "lock"
	indexMarker  = ".berth-index"
	attachDir    = "attach"
	cursorPrefix = "last_reserved_ip."
	tmpPrefix    = ".tmp-"
	lineBreak    = "\r\n" // host-local's separator
)

// Attachment identifies one container interface, as CNI does.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (a Attachment) owner() []byte { return []byte(a.ContainerID + lineBreak + a.IfName) }

func (a Attachment) key() string {
	h := sha256.Sum256([]byte(a.ContainerID + "/" + a.IfName))
	return hex.EncodeToString(h[:12])
}

// record is an attachment's index entry.
type record struct {
	Attachment
	Pending bool         `json:"pending,omitempty"`
	Addrs   []netip.Addr `json:"addrs"`
}

// store is one network's directory. Callers hold the lock for every method.
type store struct {
	dir  string
	lock *os.File
}

func openStore(dataDir, network string) (*store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(filepath.Join(dir, attachDir), 0o755); err != nil {
		return nil, fmt.Errorf("%w: creating IPAM store %s: %v", cnierr.ErrIO, dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: opening IPAM lock in %s: %v", cnierr.ErrIO, dir, err)
	}
	return &store{dir: dir, lock: f}, nil
}

// withLock runs f holding the store's exclusive lock. The kernel drops the
// lock when the process dies, so a killed plugin never wedges the store.
func (s *store) withLock(f func() error) error {
	if err := flock(s.lock, syscall.LOCK_EX); err != nil {
		return fmt.Errorf("%w: locking IPAM store %s: %v", cnierr.ErrIO, s.dir, err)
	}
	defer flock(s.lock, syscall.LOCK_UN)
	if err := s.ensureIndex(); err != nil {
		return err
	}
	return f()
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

func (s *store) close() error { return s.lock.Close() }

// ensureIndex builds the attachment index once for a directory written by
// host-local (or by a berth without the index).
func (s *store) ensureIndex() error {
	marker := filepath.Join(s.dir, indexMarker)
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	owners, err := s.scan()
	if err != nil {
		return err
	}
	byAtt := map[Attachment][]netip.Addr{}
	for addr, att := range owners {
		byAtt[att] = append(byAtt[att], addr)
	}
	for att, addrs := range byAtt {
		if err := s.writeRecord(&record{Attachment: att, Addrs: addrs}); err != nil {
			return err
		}
	}
	return writeFile(marker, nil)
}

// scan reads every reservation in the directory. Only used to build the
// index, by GC and to recover an attachment whose ADD was interrupted.
func (s *store) scan() (map[netip.Addr]Attachment, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: reading IPAM store %s: %v", cnierr.ErrIO, s.dir, err)
	}
	out := map[netip.Addr]Attachment{}
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || e.IsDir() {
			continue
		}
		att, err := s.owner(addr)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		out[addr] = att
	}
	return out, nil
}

func (s *store) path(a netip.Addr) string { return filepath.Join(s.dir, a.String()) }

func (s *store) owner(a netip.Addr) (Attachment, error) {
	data, err := os.ReadFile(s.path(a))
	if err != nil {
		return Attachment{}, err
	}
	id, ifname, _ := bytes.Cut(data, []byte(lineBreak))
	return Attachment{ContainerID: strings.TrimSpace(string(id)), IfName: strings.TrimSpace(string(ifname))}, nil
}

// reserver links one prepared owner file to candidate addresses.
type reserver struct {
	s   *store
	tmp string
}

func (s *store) newReserver(att Attachment) (*reserver, error) {
	// One fixed temp name per attachment (we hold the lock), so that a DEL
	// after a kill can remove it without a scan.
	tmp := s.reserverPath(att)
	if err := os.WriteFile(tmp, att.owner(), 0o644); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("%w: preparing reservation in %s: %v", cnierr.ErrIO, s.dir, err)
	}
	return &reserver{s: s, tmp: tmp}, nil
}

func (s *store) reserverPath(att Attachment) string {
	return filepath.Join(s.dir, tmpPrefix+att.key())
}

// reserve claims a; it reports false when a is already reserved.
func (r *reserver) reserve(a netip.Addr) (bool, error) {
	err := os.Link(r.tmp, r.s.path(a))
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: reserving %s: %v", cnierr.ErrIO, a, err)
	}
	return true, nil
}

func (r *reserver) done() { os.Remove(r.tmp) }

// release drops a's reservation if att holds it.
func (s *store) release(a netip.Addr, att Attachment) error {
	got, err := s.owner(a)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: reading reservation of %s: %v", cnierr.ErrIO, a, err)
	}
	if got != att {
		return nil // re-used by someone else since; not ours to free
	}
	if err := os.Remove(s.path(a)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: releasing %s: %v", cnierr.ErrIO, a, err)
	}
	return nil
}

func (s *store) recordPath(att Attachment) string {
	return filepath.Join(s.dir, attachDir, att.key())
}

func (s *store) readRecord(att Attachment) (*record, error) {
	data, err := os.ReadFile(s.recordPath(att))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading IPAM record: %v", cnierr.ErrIO, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil || r.Attachment != att {
		// A torn or foreign record: treat as interrupted so that the
		// scan below recovers the truth from the reservations.
		return &record{Attachment: att, Pending: true}, nil
	}
	return &r, nil
}

func (s *store) writeRecord(r *record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := writeFile(s.recordPath(r.Attachment), data); err != nil {
		return fmt.Errorf("%w: writing IPAM record: %v", cnierr.ErrIO, err)
	}
	return nil
}

func (s *store) removeRecord(att Attachment) error {
	// Leftovers of this attachment's writers killed midway.
	os.Remove(s.recordPath(att) + ".tmp")
	os.Remove(s.reserverPath(att))
	if err := os.Remove(s.recordPath(att)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: removing IPAM record: %v", cnierr.ErrIO, err)
	}
	return nil
}

// ownedBy finds att's reservations by reading every one (recovery only).
func (s *store) ownedBy(att Attachment) ([]netip.Addr, error) {
	all, err := s.scan()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for a, o := range all {
		if o == att {
			out = append(out, a)
		}
	}
	return out, nil
}

func (s *store) cursor(set int) netip.Addr {
	data, err := os.ReadFile(filepath.Join(s.dir, fmt.Sprintf("%s%d", cursorPrefix, set)))
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(strings.TrimSpace(string(data)))
	return a
}

func (s *store) setCursor(set int, a netip.Addr) error {
	return writeFile(filepath.Join(s.dir, fmt.Sprintf("%s%d", cursorPrefix, set)), []byte(a.String()))
}

// writeFile replaces path atomically without fsync: the store lives on
// tmpfs or must survive a killed process, not a power cut (like host-local).
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// records lists every attachment in the index.
func (s *store) records() ([]*record, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, attachDir))
	if err != nil {
		return nil, fmt.Errorf("%w: reading IPAM index: %v", cnierr.ErrIO, err)
	}
	var out []*record
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			os.Remove(filepath.Join(s.dir, attachDir, e.Name()))
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, attachDir, e.Name()))
		if err != nil {
			continue
		}
		var r record
		if json.Unmarshal(data, &r) != nil {
			os.Remove(filepath.Join(s.dir, attachDir, e.Name()))
			continue
		}
		out = append(out, &r)
	}
	return out, nil
}

// removeTemps deletes leftovers of killed writers; only safe under the lock.
func (s *store) removeTemps() {
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) || strings.HasSuffix(e.Name(), ".tmp") {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

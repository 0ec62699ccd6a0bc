package runner

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/lease"
	"github.com/berthnet/berth/runner/cgroups"
)

// Container is the record of one container in the state directory. The
// supervisor and any runner command update it under the container's lock,
// always by atomic replace, so a crash at any point leaves a readable
// record that says what exists and must be cleaned up.
type Container struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Spec    Spec      `json:"spec"`
	// Rootfs is the resolved read-only lower layer.
	Rootfs string `json:"rootfs"`
	// Ports are the published ports with every host port chosen.
	Ports []PortMapping `json:"ports,omitempty"`
	// NodeNetNS identifies the network namespace the runner ran in when
	// it attached the container ("net:[4026531840]"). CNI plugins put
	// bridges and iptables rules there, so DEL must run there too.
	NodeNetNS string `json:"nodeNetns"`
	State     State  `json:"state"`
}

// Status is the recorded lifecycle step of a container.
type Status string

const (
	StatusCreated Status = "created" // record written, not yet running
	StatusRunning Status = "running" // the command was exec'd
	StatusExited  Status = "exited"  // the command ended and resources were released
)

// State is what exists for a container right now. Each resource is
// recorded before it is created, so teardown after a crash finds it.
type State struct {
	Status Status `json:"status"`
	// Pid is the container's pid 1 as seen from the host; PidStart is its
	// start time (clock ticks since boot), which tells it apart from a
	// later process that reuses the pid.
	Pid      int    `json:"pid,omitempty"`
	PidStart uint64 `json:"pidStart,omitempty"`
	// Supervisor is the runner process that waits for the container.
	Supervisor      int    `json:"supervisorPid,omitempty"`
	SupervisorStart uint64 `json:"supervisorStart,omitempty"`

	NetNS string `json:"netns,omitempty"`
	// Network is the CNI network chosen at create; Attached is set
	// before CNI ADD and cleared after a successful DEL.
	Network  *Attachment     `json:"network,omitempty"`
	Attached bool            `json:"attached,omitempty"`
	Cgroup   *cgroups.Cgroup `json:"cgroup,omitempty"`

	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// ExitCode is the command's exit status (128+signal when killed), -1
	// when nobody saw it end (the supervisor was gone).
	ExitCode  int  `json:"exitCode"`
	OOMKilled bool `json:"oomKilled,omitempty"`
	// Orphaned: the supervisor died (kill -9, a crash, a reboot) before
	// the container ended, so nobody saw its exit status; CleanedBy is
	// the command that released what it held ("gc", "rm", "stop").
	Orphaned  bool   `json:"orphaned,omitempty"`
	CleanedBy string `json:"cleanedBy,omitempty"`
}

// Attachment is the container's CNI attachment.
type Attachment struct {
	Network string `json:"network"`
	IfName  string `json:"ifName"`
	// ConfList is the conflist as attached: DEL uses it even when the
	// file in the conf dir changed or vanished since.
	ConfList json.RawMessage `json:"confList"`
	Result   json.RawMessage `json:"result,omitempty"`
	IPs      []string        `json:"ips,omitempty"`
}

// store is the on-disk state directory:
//
//	lock                     global lock: names and host ports
//	containers/<id>/         container.json, lock, container.log, upper/, work/, merged/
//	names/<name>             symlink to the id, taken atomically
//	ports/<proto>-<port>@<hostIP|any>
//	                         host port reservations, content = id
//	netns/<id>               bind mount pinning the network namespace
//	cni/                     libcni's cache of attachments (used by gc)
//	rootfs/                  the default busybox rootfs
type store struct {
	dir string
}

func (s *store) containerDir(id string) string { return filepath.Join(s.dir, "containers", id) }
func (s *store) recordPath(id string) string {
	return filepath.Join(s.containerDir(id), "container.json")
}
func (s *store) logPath(id string) string    { return filepath.Join(s.containerDir(id), "container.log") }
func (s *store) netnsPath(id string) string  { return filepath.Join(s.dir, "netns", id) }
func (s *store) namePath(name string) string { return filepath.Join(s.dir, "names", name) }
func (s *store) portPath(p PortMapping) string {
	host := p.HostIP
	if host == "" {
		host = anyHost
	}
	return filepath.Join(s.dir, "ports", portKey(p)+"@"+host)
}

// anyHost names a reservation of every address of both families.
const anyHost = "any"

func portKey(p PortMapping) string { return p.Protocol + "-" + strconv.Itoa(p.HostPort) }

// legacyPortPath is where an older runner reserved p, for every address.
func (s *store) legacyPortPath(p PortMapping) string {
	return filepath.Join(s.dir, "ports", portKey(p))
}

// overlappingPorts are the reservations of p's port and protocol on a
// host address that overlaps p's (conf.HostsOverlap: 0.0.0.0 and :: do
// not), including one an older runner made for every address,
// ports/<proto>-<port>.
func (s *store) overlappingPorts(p PortMapping) []string {
	entries, _ := os.ReadDir(filepath.Join(s.dir, "ports"))
	var out []string
	for _, e := range entries {
		key, host, _ := strings.Cut(e.Name(), "@")
		if key != portKey(p) {
			continue
		}
		if host == anyHost {
			host = ""
		}
		if conf.HostsOverlap(host, p.HostIP) {
			out = append(out, filepath.Join(s.dir, "ports", e.Name()))
		}
	}
	return out
}

// init creates the state directory; only commands that write call it.
func (s *store) init() error {
	for _, d := range []string{"containers", "names", "ports", "netns", "cni", "rootfs"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return fmt.Errorf("creating state directory: %w", err)
		}
	}
	return nil
}

// lock takes an exclusive flock on path; the returned func releases it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func (s *store) lockGlobal() (func(), error) { return lock(filepath.Join(s.dir, "lock")) }

// lockContainer locks the container's record. It fails with ErrNotFound
// when the container was removed meanwhile.
func (s *store) lockContainer(id string) (func(), error) {
	unlock, err := lock(filepath.Join(s.containerDir(id), "lock"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.recordPath(id)); err != nil {
		unlock()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return unlock, nil
}

// ErrNotFound means no container has that name or id.
var ErrNotFound = errors.New("no such container")

func (s *store) load(id string) (*Container, error) {
	data, err := os.ReadFile(s.recordPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading container %s: %w", id, err)
	}
	var c Container
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("reading container %s: %w", id, err)
	}
	return &c, nil
}

func (s *store) save(c *Container) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := lease.WriteFileAtomic(s.recordPath(c.ID), data, 0o600); err != nil {
		return fmt.Errorf("saving container %s: %w", c.Name, err)
	}
	return nil
}

// resolve finds a container by name, full id or unique id prefix.
func (s *store) resolve(ref string) (*Container, error) {
	if ref == "" {
		return nil, invalid("no container name given")
	}
	if id, err := os.Readlink(s.namePath(ref)); err == nil && !strings.Contains(ref, "/") {
		return s.load(id)
	}
	if _, err := os.Stat(s.recordPath(ref)); err == nil && isID(ref) {
		return s.load(ref)
	}
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	var match []string
	for _, id := range ids {
		if strings.HasPrefix(id, ref) {
			match = append(match, id)
		}
	}
	switch {
	case len(match) == 1 && isID(ref):
		return s.load(match[0])
	case len(match) > 1 && isID(ref):
		return nil, invalid("id prefix %q matches %d containers: give more of it", ref, len(match))
	}
	return nil, fmt.Errorf("%w: %s (see runner ps -a)", ErrNotFound, ref)
}

func (s *store) ids() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "containers"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && isID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// list loads every container, oldest first. A record that vanished or is
// half-written by a concurrent rm is skipped.
func (s *store) list() ([]*Container, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	var cs []*Container
	for _, id := range ids {
		if c, err := s.load(id); err == nil {
			cs = append(cs, c)
		}
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Created.Before(cs[j].Created) })
	return cs, nil
}

func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

func isID(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// ShortID is the id as ps shows it.
func ShortID(id string) string { return id[:min(12, len(id))] }

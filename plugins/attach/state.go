package attach

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/attachments"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/nodebridge"
)

// record is what berth remembers of one attachment, written before ADD
// changes anything so that DEL and GC can undo an ADD that was killed
// midway, and so that DEL works when the netns is already gone.
type record struct {
	Network      string             `json:"network"`
	ContainerID  string             `json:"containerID"`
	IfName       string             `json:"ifName"`
	Netns        string             `json:"netns"`
	HostVeth     string             `json:"hostVeth"`
	ContainerIP  netip.Addr         `json:"containerIP,omitzero"` // IPv4
	ContainerIP6 netip.Addr         `json:"containerIP6,omitzero"`
	Ports        []conf.PortMapping `json:"ports,omitempty"`
	BPFFS        string             `json:"bpffs,omitempty"` // eBPF datapath: where its pins are (fastpath.go)
	// Bridge is the config's "bridge": which of two networks of one
	// name (see nameKeeper) the attachment is on. Empty in the records
	// of an earlier berth, whose host veth's master tells.
	Bridge string `json:"bridge,omitempty"`
	// Guards is the generation of guards the attachment was made with:
	// 0 by an earlier berth; guardsV1 the source guard on the host veth
	// on the iptables datapath (srcguard.go), the network's rules
	// closing the node's 127/8 and an IPv4-only network's IPv6
	// (internal/firewall) and a routed host veth's IPv6 off; guardsV2
	// the same with the source guard an eBPF program (a tc filter, or on
	// TCX) instead of a classic BPF one; guardsV3 the same with the
	// guard marking what it lets through and the bridge dropping what
	// comes from the host veth unmarked (srcguard.Require: the veth's
	// device group, on both datapaths); guardsV4 the same with the guard
	// checking IPv6 neighbour discovery's link-layer address options and
	// fragments; guardsV5, this build's, the same with the host veth's
	// bridge port never a multicast router port (link.go's setPort).
	// CHECK asks only for what the attachment was made with, so that
	// after an upgrade it passes for the containers of an earlier berth
	// as before: their network gets its new rules at its next ADD, they
	// get the source guard (and their port its setting) when attached
	// again.
	Guards int `json:"guards,omitempty"`
}

// The generations of guards (record.Guards). A build that changes them
// (the source guard's program included, whose code and constants CHECK
// compares) makes the next generation and names it guardsThisBuild.
const (
	guardsV1 = 1
	guardsV2 = 2
	guardsV3 = 3
	guardsV4 = 4
	guardsV5 = 5
	// guardsThisBuild is what ADD gives an attachment and the latest
	// generation CHECK knows.
	guardsThisBuild = guardsV5
)

// guarded reports whether the attachment was made with this build's
// guards.
func (r *record) guarded() bool { return r.Guards >= guardsV1 }

// key identifies the attachment in chain, veth and file names.
func (r *record) key() string { return attachmentKey(r.Network, r.ContainerID, r.IfName) }

func attachmentKey(network, containerID, ifName string) string {
	h := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return hex.EncodeToString(h[:])
}

// HostVeths matches every host veth berth makes, as iptables -i takes it:
// the Ingress of a routed datapath.
const HostVeths = nodebridge.HostVethPrefix + "+"

// hostVethName is deterministic so that DEL finds the link without state.
func hostVethName(key string) string { return nodebridge.HostVethPrefix + key[:11] }

// bridge is the bridge r's attachment was made on: its record's, else
// (a record of an earlier berth) its host veth's master; "" when neither
// tells.
func (r *record) bridge() string {
	if r.Bridge != "" {
		return r.Bridge
	}
	host, err := netlinksafe.LinkByName(r.HostVeth)
	if err != nil || host.Attrs().MasterIndex == 0 {
		return ""
	}
	br, err := netlink.LinkByIndex(host.Attrs().MasterIndex)
	if err != nil {
		return ""
	}
	return br.Attrs().Name
}

// networkDir holds the network's records (internal/attachments: netd
// leave reads them too).
func networkDir(stateDir, network string) string { return attachments.Dir(stateDir, network) }

// A live attachment's record is <key>.json. DEL and GC first rename it to
// <key>.leaving: from then on the attachment no longer counts as one of
// the network's (networkEmpty), so that of two DELs running at once at
// least one sees the network empty and removes its rules; the record
// itself stays until everything is gone, so a DEL killed midway is
// repeated from it.
const (
	extLive    = attachments.ExtLive
	extLeaving = attachments.ExtLeaving
)

func recordPath(stateDir string, r *record) string {
	return filepath.Join(networkDir(stateDir, r.Network), r.key()[:24]+extLive)
}

func leavingPath(stateDir string, r *record) string {
	return filepath.Join(networkDir(stateDir, r.Network), r.key()[:24]+extLeaving)
}

// loadAttachment reads r's record, live or leaving; nil when there is none.
func loadAttachment(stateDir string, r *record) (*record, error) {
	saved, err := loadRecord(recordPath(stateDir, r))
	if saved != nil || err != nil {
		return saved, err
	}
	return loadRecord(leavingPath(stateDir, r))
}

// markLeaving turns r's live record into a leaving one.
func markLeaving(stateDir string, r *record) error {
	err := os.Rename(recordPath(stateDir, r), leavingPath(stateDir, r))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: marking attachment state: %v", cnierr.ErrIO, err)
	}
	return nil
}

func saveRecord(stateDir string, r *record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	// A fixed temp name, so that a DEL after a kill mid-write removes it,
	// held under flock while written so that GC can tell a dead writer's
	// leftover (lock free) from a write in progress.
	path := recordPath(stateDir, r)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("%w: creating state dir: %v", cnierr.ErrIO, err)
	}
	f, err := lockedTemp(path + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("%w: saving attachment state: %v", cnierr.ErrIO, err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("%w: saving attachment state: %v", cnierr.ErrIO, err)
	}
	return nil
}

// lockedTemp opens (creating) the temp file at path under an exclusive
// flock, empty. GC removes a temp file whose lock is free, which it also
// is between a writer's open and its flock: a writer that then locked a
// removed file opens the path again.
func lockedTemp(path string) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%w: saving attachment state: %v", cnierr.ErrIO, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: locking attachment state: %v", cnierr.ErrIO, err)
		}
		if stillNamed(f, path) {
			if err := f.Truncate(0); err != nil {
				f.Close()
				return nil, fmt.Errorf("%w: saving attachment state: %v", cnierr.ErrIO, err)
			}
			return f, nil
		}
		f.Close()
	}
}

// stillNamed reports whether path still names the file f. A temp file
// opened by GC may have been renamed into place by its writer before GC got
// its lock; the path then names the next writer's file, which is not GC's
// to remove. While GC holds the lock of the file path names, no writer can
// rename it, so the answer stays true until GC unlocks.
func stillNamed(f *os.File, path string) bool {
	held, err1 := f.Stat()
	named, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && os.SameFile(held, named)
}

func loadRecord(path string) (*record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading attachment state: %v", cnierr.ErrIO, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, nil // torn by a crash before rename cannot happen; foreign junk is ignored
	}
	return &r, nil
}

func removeRecord(stateDir string, r *record) error {
	os.Remove(recordPath(stateDir, r) + ".tmp")
	for _, p := range []string{recordPath(stateDir, r), leavingPath(stateDir, r)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: removing attachment state: %v", cnierr.ErrIO, err)
		}
	}
	return nil
}

// networkEmpty reports whether the network has no live attachment left.
// It reads at most a few directory entries, whatever the number of
// containers.
func networkEmpty(stateDir, network string) bool {
	d, err := os.Open(networkDir(stateDir, network))
	if err != nil {
		return true
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(1)
		if errors.Is(err, io.EOF) || len(names) == 0 {
			return true
		}
		if filepath.Ext(names[0]) == extLive {
			return false
		}
	}
}

// records lists the attachments of network, live or leaving (GC only), and removes the
// temp files of writers that died (their flock is free).
func records(stateDir, network string) ([]*record, error) {
	removeUnheld(filepath.Join(networkDir(stateDir, network), "*.tmp"), func(string) bool { return false })
	paths, err := filepath.Glob(filepath.Join(networkDir(stateDir, network), "*"+extLive))
	if err != nil {
		return nil, err
	}
	leaving, _ := filepath.Glob(filepath.Join(networkDir(stateDir, network), "*"+extLeaving))
	paths = append(paths, leaving...)
	var out []*record
	for _, p := range paths {
		r, err := loadRecord(p)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// Package fastpath is berth's optional eBPF datapath ("datapath": "ebpf"):
// TC programs (bpf/fastpath.c) that deliver traffic between the
// containers of one network straight from veth to veth on a node, and
// across nodes through the device the kernel's FIB names, past the bridge
// and netfilter. Everything else (the node, other networks, the outside
// world, translated flows) still takes the kernel's path and berth's
// iptables rules.
//
// Each network has its maps and programs pinned on a BPF filesystem, per
// node:
//
//	<bpffs>/berth/<network>/endpoints              container address -> host veth, MACs, owner
//	<bpffs>/berth/<network>/config                 the network's local subnet and scope
//	<bpffs>/berth/<network>/stats                  packet counters
//	<bpffs>/berth/<network>/from_container_<ver>   program of the host veths
//	<bpffs>/berth/<network>/from_uplink_<ver>      program of the uplink and VTEP (netd)
//
// The CNI plugin adds an endpoint and attaches from_container to the
// container's host veth (a tc filter on its ingress); netd attaches
// from_uplink (TCX ingress, through BPF_PROG_ATTACH). Both stay when the
// process that attached them exits and go with the device: nothing needs a
// running process, and a crashed plugin or netd leaves the traffic flowing.
//
// Callers hold the node's Lock while they open, change or remove a
// network's pins: exclusively (Acquire) to make, complete or remove them,
// shared (AcquireShared) to use them as they are.
package fastpath

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/bpfattach"
)

// version names this build's programs, so that programs of an older berth
// attached to existing veths keep theirs while new veths get the new ones.
var version = func() string {
	h := sha256.Sum256(_FastpathBytes)
	return hex.EncodeToString(h[:6])
}()

// Program names, in the ELF and in the kernel.
const (
	progContainer = "from_container"
	progUplink    = "from_uplink"
)

// Dir is where network's maps and programs are pinned.
func Dir(bpffs, network string) string { return filepath.Join(bpffs, "berth", network) }

// Lock serialises the changes to the pins of one node: loading a
// network's objects the first time, removing them after its last
// container. Using pins as they are (adding an endpoint, attaching a
// program, reading) needs it shared only.
type Lock struct{ f *os.File }

// Acquire takes the node's lock exclusively, after checking that bpffs is
// a BPF filesystem: to make, complete, configure for netd or remove a
// network's pins.
func Acquire(bpffs string) (*Lock, error) { return acquire(bpffs, syscall.LOCK_EX) }

// AcquireShared takes the node's lock shared with other shared holders:
// enough to use a network's pins as OpenPinned finds them, which parallel
// ADDs do side by side.
func AcquireShared(bpffs string) (*Lock, error) { return acquire(bpffs, syscall.LOCK_SH) }

func acquire(bpffs string, how int) (*Lock, error) {
	var st unix.Statfs_t
	err := unix.Statfs(bpffs, &st)
	if errors.Is(err, unix.ENOENT) {
		// Not a BPF filesystem either (a mount under /run lost at a
		// reboot): nothing can be pinned there, so DEL and GC have
		// nothing to clean up in it, and ADD has a config to fix.
		return nil, fmt.Errorf("%w: %s does not exist (mount one: mkdir -p %s && mount -t bpf bpf %s)", ErrNoBPFFS, bpffs, bpffs, bpffs)
	}
	if err != nil {
		return nil, fmt.Errorf("bpffs %s: %w", bpffs, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("%w: %s is not a BPF filesystem (mount one: mount -t bpf bpf %s)", ErrNoBPFFS, bpffs, bpffs)
	}
	dir := filepath.Join(bpffs, "berth")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return &Lock{f: f}, nil
}

// Release drops the lock.
func (l *Lock) Release() { l.f.Close() }

// ErrNoBPFFS means the configured path is not a BPF filesystem.
var ErrNoBPFFS = errors.New("not a BPF filesystem")

// Network is one network's fast path on this node: its pinned maps and
// this build's programs.
type Network struct {
	Name string
	dir  string
	objs fastpathObjects
	made bool // Open loaded the programs: the pins were missing or incomplete
}

// Made reports whether Open made the network's programs (and any missing
// map) rather than finding them pinned. When containers were attached
// before, their veths run programs of the older set: see Adopt.
func (n *Network) Made() bool { return n.made }

// Open loads the network's pinned maps and programs, loading and pinning
// whatever is missing: the first container of a network (or netd) creates
// them. The caller holds the Lock.
func Open(bpffs, network string) (*Network, error) {
	n := &Network{Name: network, dir: Dir(bpffs, network)}
	if err := n.loadPinned(); err == nil {
		return n, nil
	}
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", n.dir, err)
	}
	spec, err := loadFastpath()
	if err != nil {
		return nil, err
	}
	// Maps are pinned by name: existing ones are reused (their endpoints
	// stay), missing ones created and pinned.
	err = spec.LoadAndAssign(&n.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: n.dir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, incompatible(n.dir, err)
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		// The verifier refuses the programs' packet pointer arithmetic
		// without CAP_PERFMON ("prohibited for !root"), the maps and
		// programs need CAP_BPF, attaching them CAP_NET_ADMIN.
		return nil, fmt.Errorf("loading the eBPF programs needs the capabilities BPF, PERFMON and NET_ADMIN (in a pod: securityContext.capabilities.add): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("loading the eBPF programs: %w", err)
	}
	n.made = true
	// A program pin still there belongs to a set that is incomplete (a
	// process killed between the two pins, a pin removed by hand) and
	// may use maps no longer pinned: the new programs replace it. The
	// veths it is attached to keep it.
	for name, p := range map[string]*ebpf.Program{progContainer: n.objs.FromContainer, progUplink: n.objs.FromUplink} {
		if err := os.Remove(n.progPin(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			n.Close()
			return nil, fmt.Errorf("replacing the pin of %s: %w", name, err)
		}
		if err := p.Pin(n.progPin(name)); err != nil {
			n.Close()
			return nil, fmt.Errorf("pinning %s: %w", name, err)
		}
	}
	return n, nil
}

func incompatible(dir string, err error) error {
	return fmt.Errorf("the maps pinned in %s were made by another berth version: remove the network's containers, or %s, first: %w", dir, dir, err)
}

// CheckPins fails when a map pinned for the network is not what this
// build's programs take, so that Open would fail (ErrMapIncompatible):
// for a runtime's STATUS. Missing pins are fine; Open makes them.
func CheckPins(bpffs, network string) error {
	spec, err := loadFastpath()
	if err != nil {
		return err
	}
	dir := Dir(bpffs, network)
	for name, ms := range spec.Maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("map %s pinned in %s: %w", name, dir, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			return incompatible(dir, fmt.Errorf("map %s: %w", name, err))
		}
	}
	return nil
}

// OpenPinned opens the network's pins when all of them are there, this
// build's programs included; nil when one is missing (Open makes it, under
// the exclusive lock).
func OpenPinned(bpffs, network string) (*Network, error) {
	n := &Network{Name: network, dir: Dir(bpffs, network)}
	if err := n.loadPinned(); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return n, nil
}

// OpenExisting opens what Open made, without creating anything: nil when
// the network has nothing pinned on this node.
func OpenExisting(bpffs, network string) (*Network, error) {
	n := &Network{Name: network, dir: Dir(bpffs, network)}
	if _, err := os.Stat(filepath.Join(n.dir, fastpathMapEndpoints)); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err := n.loadPinned(); err != nil {
		// Maps without this build's programs (pinned by another version):
		// the maps are enough to remove endpoints.
		if err := n.loadMaps(olderSets); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s: %w", ErrIncomplete, n.dir, err)
		} else if err != nil {
			return nil, err
		}
	}
	return n, nil
}

// ErrIncomplete means a network's pins lack a map (a process killed
// while pinning them, a pin removed by hand): Open completes them.
var ErrIncomplete = errors.New("the network's eBPF pins are incomplete (the next ADD completes them)")

// OpenToClean opens the network's pins for DEL, GC and netd leave: nil
// when nothing is pinned. A set missing a pin is completed first, as the
// next ADD would (Open keeps the maps that are there, endpoints
// included): cleaning up must neither fail on what is missing nor leave
// behind what is there. The caller holds the Lock.
func OpenToClean(bpffs, network string) (*Network, error) {
	n, err := OpenExisting(bpffs, network)
	switch {
	case n != nil || (err != nil && !errors.Is(err, ErrIncomplete)):
		return n, err
	case err == nil: // no endpoints pinned: pins without them, or none
		if _, err := os.Stat(Dir(bpffs, network)); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	return Open(bpffs, network)
}

func (n *Network) progPin(name string) string { return filepath.Join(n.dir, name+"_"+version) }

// maps are the network's maps by the name they are pinned under.
func (n *Network) maps() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{
		fastpathMapEndpoints: &n.objs.Endpoints, fastpathMapConfig: &n.objs.Config, fastpathMapStats: &n.objs.Stats,
		fastpathMapVxlan: &n.objs.Vxlan, fastpathMapTunnels: &n.objs.Tunnels, fastpathMapTunnelPeers: &n.objs.TunnelPeers,
		fastpathMapTunnelStats: &n.objs.TunnelStats, fastpathMapVtepMac: &n.objs.VtepMac,
	}
}

// olderSets names the maps that sets pinned by an earlier berth lack (they
// came with the VXLAN encapsulation, vtep_mac after it):
// loadMaps(olderSets) leaves them nil.
var olderSets = []string{fastpathMapVxlan, fastpathMapTunnels, fastpathMapTunnelPeers, fastpathMapTunnelStats, fastpathMapVtepMac}

// loadMaps loads the pinned maps; one named in optional may be missing.
func (n *Network) loadMaps(optional []string) error {
	var err error
	for name, m := range n.maps() {
		*m, err = ebpf.LoadPinnedMap(filepath.Join(n.dir, name), nil)
		if errors.Is(err, fs.ErrNotExist) && slices.Contains(optional, name) {
			continue
		}
		if err != nil {
			n.Close()
			return fmt.Errorf("map %s: %w", name, err)
		}
	}
	return nil
}

func (n *Network) loadPinned() error {
	if err := n.loadMaps(nil); err != nil {
		return err
	}
	var err error
	for name, p := range map[string]**ebpf.Program{progContainer: &n.objs.FromContainer, progUplink: &n.objs.FromUplink} {
		if *p, err = ebpf.LoadPinnedProgram(n.progPin(name), nil); err != nil {
			n.Close()
			return err
		}
	}
	return nil
}

// Pinned reports whether the network's pins are still the maps and
// programs n holds. They are not when a pin was removed (by hand, by a
// tool that cleaned the BPF filesystem) and Open, in a plugin's ADD or
// here, made a new one: programs on n's maps neither see the containers
// added since nor the config written to the new map.
func (n *Network) Pinned() (bool, error) {
	for name, m := range n.maps() {
		if *m == nil { // an earlier berth's set: not held, not compared
			continue
		}
		same, err := samePinned(filepath.Join(n.dir, name), *m, ebpf.LoadPinnedMap, mapID)
		if err != nil || !same {
			return false, err
		}
	}
	for name, p := range map[string]*ebpf.Program{progContainer: n.objs.FromContainer, progUplink: n.objs.FromUplink} {
		same, err := samePinned(n.progPin(name), p, ebpf.LoadPinnedProgram, bpfattach.ID)
		if err != nil || !same {
			return false, err
		}
	}
	return true, nil
}

// samePinned reports whether the map or program pinned at path is held:
// false when nothing is pinned there.
func samePinned[T io.Closer, ID comparable](path string, held T, load func(string, *ebpf.LoadPinOptions) (T, error), id func(T) (ID, error)) (bool, error) {
	pinned, err := load(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer pinned.Close()
	a, err := id(pinned)
	if err != nil {
		return false, err
	}
	b, err := id(held)
	return a == b, err
}

func mapID(m *ebpf.Map) (ebpf.MapID, error) {
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

// Close releases the file descriptors; the pins stay.
func (n *Network) Close() {
	n.objs.Close()
	n.objs = fastpathObjects{}
}

// Remove unpins the network's maps and programs (every version). Programs
// still attached keep working with the unpinned maps until their veths
// go. The caller holds the Lock.
func Remove(bpffs, network string) error {
	dir := Dir(bpffs, network)
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// Leave removes network's datapath from this node for good (netd leave,
// uninstall): its from_uplink detached from each of links, and its pins.
// Containers still attached keep their programs with the unpinned maps
// until they are deleted. Nothing pinned, or no BPF filesystem at bpffs,
// is nothing to remove.
func Leave(bpffs, network string, links []int) error {
	if _, err := os.Stat(Dir(bpffs, network)); errors.Is(err, fs.ErrNotExist) {
		return nil // and Acquire would make bpffs/berth
	}
	lock, err := Acquire(bpffs)
	if errors.Is(err, ErrNoBPFFS) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.Release()
	n, err := OpenToClean(bpffs, network)
	if err != nil || n == nil {
		return err
	}
	defer n.Close()
	for _, idx := range links {
		if err := n.DetachUplink(idx); err != nil {
			return err
		}
	}
	return Remove(bpffs, network)
}

// Config is what the programs know of the network.
type Config struct {
	Local netip.Prefix // this node's addresses of the network
	Scope netip.Prefix // the whole network; traffic to it from outside the node arrives directly
	// Netd is set when netd manages the network's pins (leased modes):
	// the plugin then leaves them in place after its last container.
	Netd bool
}

const configNetd = 1

// Configure stores c. A zero Netd keeps netd's mark.
func (n *Network) Configure(c Config) error {
	old, err := n.Config()
	if err != nil {
		return err
	}
	v := fastpathConfig{
		LocalAddr: be32(c.Local.Masked().Addr()), LocalMask: mask(c.Local),
		ScopeAddr: be32(c.Scope.Masked().Addr()), ScopeMask: mask(c.Scope),
	}
	if c.Netd || old.Netd {
		v.Flags = configNetd
	}
	if err := n.objs.Config.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("writing the fast path's config: %w", err)
	}
	return nil
}

// Config reads the network's config.
func (n *Network) Config() (Config, error) {
	var v fastpathConfig
	if err := n.objs.Config.Lookup(uint32(0), &v); err != nil {
		return Config{}, fmt.Errorf("reading the fast path's config: %w", err)
	}
	return Config{Local: prefix(v.LocalAddr, v.LocalMask), Scope: prefix(v.ScopeAddr, v.ScopeMask), Netd: v.Flags&configNetd != 0}, nil
}

// VXLAN is the node's VTEP as the programs see it, in vxlan mode over an
// IPv4 underlay: they encapsulate the network's packets to other nodes'
// containers and decapsulate those for this node's containers themselves,
// as the VTEP would, past its UDP socket, its second pass through the
// stack and the node's netfilter hooks. The zero VXLAN (hostgw, bgp, an
// IPv6 underlay) leaves that to the VTEP; so does a peer without a tunnel.
type VXLAN struct {
	VTEP     int        // the VTEP's ifindex: packets the FIB routes through it are encapsulated
	Underlay int        // the VTEP's device, the only one encapsulated packets leave by
	Local    netip.Addr // this node's underlay address (IPv4), the VTEP's source
	VNI      uint32
	Port     uint16 // UDP destination port
	// MAC is the VTEP's own: the programs decapsulate only frames
	// addressed to it (the VTEP's IP takes no other); zero: none.
	MAC [6]byte
}

// errEarlierSet: a set an earlier berth pinned, opened by OpenExisting,
// has no VXLAN maps (or no vtep_mac) to write; Open completes it.
var errEarlierSet = errors.New("the network's pins are an earlier berth's, without the VXLAN maps (Open completes them)")

// ConfigureVXLAN stores v. The VTEP's MAC is in a map of its own
// (vtep_mac, which earlier sets lack), tied to v.VTEP: until both are
// written the programs decapsulate nothing, whichever goes first.
func (n *Network) ConfigureVXLAN(v VXLAN) error {
	if n.objs.Vxlan == nil || n.objs.VtepMac == nil {
		return errEarlierSet
	}
	val := fastpathVxlan{VtepIfindex: uint32(v.VTEP), UnderlayIfindex: uint32(v.Underlay), Vni: v.VNI, Port: htons(v.Port)}
	if v.Local.IsValid() {
		val.Local = be32(v.Local)
	}
	mac := fastpathVtepMac{VtepIfindex: uint32(v.VTEP), Mac: v.MAC}
	if err := n.objs.VtepMac.Put(uint32(0), &mac); err != nil {
		return fmt.Errorf("writing the fast path's VTEP MAC: %w", err)
	}
	if err := n.objs.Vxlan.Put(uint32(0), &val); err != nil {
		return fmt.Errorf("writing the fast path's VXLAN config: %w", err)
	}
	return nil
}

// VXLAN reads what ConfigureVXLAN stored (zero in an earlier berth's set).
func (n *Network) VXLAN() (VXLAN, error) {
	var val fastpathVxlan
	if n.objs.Vxlan == nil {
		return VXLAN{}, nil
	}
	if err := n.objs.Vxlan.Lookup(uint32(0), &val); err != nil {
		return VXLAN{}, fmt.Errorf("reading the fast path's VXLAN config: %w", err)
	}
	v := VXLAN{VTEP: int(val.VtepIfindex), Underlay: int(val.UnderlayIfindex), VNI: val.Vni, Port: htons(val.Port)}
	if val.Local != 0 {
		v.Local = addr4(val.Local)
	}
	if n.objs.VtepMac == nil { // the set of the berth before vtep_mac
		return v, nil
	}
	var mac fastpathVtepMac
	if err := n.objs.VtepMac.Lookup(uint32(0), &mac); err != nil {
		return VXLAN{}, fmt.Errorf("reading the fast path's VTEP MAC: %w", err)
	}
	// A MAC of another VTEP is none: the programs do not use it.
	if mac.VtepIfindex == val.VtepIfindex {
		v.MAC = mac.Mac
	}
	return v, nil
}

// Tunnels are the peers the programs encapsulate for: the next hop of
// the VTEP's route to a peer's subnet -> the peer's node address.
func (n *Network) Tunnels() (map[netip.Addr]netip.Addr, error) {
	out := map[netip.Addr]netip.Addr{}
	if n.objs.Tunnels == nil {
		return out, nil
	}
	var via, node uint32
	it := n.objs.Tunnels.Iterate()
	for it.Next(&via, &node) {
		out[addr4(via)] = addr4(node)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the fast path's tunnels: %w", err)
	}
	return out, nil
}

// SetTunnel sends packets routed via the IPv4 next hop via to node.
func (n *Network) SetTunnel(via, node netip.Addr) error {
	if n.objs.Tunnels == nil {
		return errEarlierSet
	}
	if err := n.objs.Tunnels.Put(be32(via), be32(node)); err != nil {
		return fmt.Errorf("writing the fast path's tunnel via %s: %w", via, err)
	}
	return nil
}

// TunnelPeers are the nodes whose VXLAN packets the programs decapsulate.
func (n *Network) TunnelPeers() ([]netip.Addr, error) {
	var out []netip.Addr
	if n.objs.TunnelPeers == nil {
		return out, nil
	}
	var node uint32
	var one uint8
	it := n.objs.TunnelPeers.Iterate()
	for it.Next(&node, &one) {
		out = append(out, addr4(node))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the fast path's tunnel peers: %w", err)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddTunnelPeer lets the programs decapsulate node's VXLAN packets.
func (n *Network) AddTunnelPeer(node netip.Addr) error {
	if n.objs.TunnelPeers == nil {
		return errEarlierSet
	}
	if err := n.objs.TunnelPeers.Put(be32(node), uint8(1)); err != nil {
		return fmt.Errorf("writing the fast path's tunnel peer %s: %w", node, err)
	}
	return nil
}

// RemoveTunnelPeer leaves node's VXLAN packets to the VTEP.
func (n *Network) RemoveTunnelPeer(node netip.Addr) error {
	return deleteAddr(n.objs.TunnelPeers, node, "tunnel peer")
}

// RemoveTunnel removes the tunnel of next hop via: the VTEP takes its
// packets.
func (n *Network) RemoveTunnel(via netip.Addr) error {
	return deleteAddr(n.objs.Tunnels, via, "tunnel via")
}

// deleteAddr deletes the entry of a from m, a map keyed by IPv4 address:
// fine when there is none, or no map (an earlier berth's set).
func deleteAddr(m *ebpf.Map, a netip.Addr, what string) error {
	if m == nil {
		return nil
	}
	if err := m.Delete(be32(a)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing the fast path's %s %s: %w", what, a, err)
	}
	return nil
}

// addr4 is the address the programs keep as be32 does.
func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// htons swaps a port between host and network byte order (both ways).
func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// be32 is an IPv4 address as the programs keep it: network byte order
// in memory.
func be32(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func mask(p netip.Prefix) uint32 {
	if !p.IsValid() || !p.Addr().Is4() {
		return 0
	}
	m := net.CIDRMask(p.Bits(), 32)
	return binary.NativeEndian.Uint32(m)
}

func prefix(addr, m uint32) netip.Prefix {
	if m == 0 {
		return netip.Prefix{}
	}
	var a, mb [4]byte
	binary.NativeEndian.PutUint32(a[:], addr)
	binary.NativeEndian.PutUint32(mb[:], m)
	ones, _ := net.IPMask(mb[:]).Size()
	return netip.PrefixFrom(netip.AddrFrom4(a), ones)
}

// Endpoint is a container attached to the network on this node.
type Endpoint struct {
	IP        netip.Addr       // its IPv4 address
	Ifindex   int              // the host end of its veth
	MAC       net.HardwareAddr // its interface
	RouterMAC net.HardwareAddr // its gateway (the bridge, or the host veth)
	Owner     uint64           // see OwnerOf
}

// OwnerOf turns an attachment key (hex) into an endpoint's owner.
func OwnerOf(key string) uint64 {
	v, _ := strconv.ParseUint(key[:min(16, len(key))], 16, 64)
	return v
}

// AddEndpoint adds or replaces e.
func (n *Network) AddEndpoint(e Endpoint) error {
	if !e.IP.Is4() || len(e.MAC) != 6 || len(e.RouterMAC) != 6 {
		return fmt.Errorf("fast path endpoint %s: want an IPv4 address and two MACs (have %s, %s)", e.IP, e.MAC, e.RouterMAC)
	}
	v := fastpathEndpoint{Ifindex: uint32(e.Ifindex), Owner: e.Owner}
	copy(v.Mac[:], e.MAC)
	copy(v.RouterMac[:], e.RouterMAC)
	if err := n.objs.Endpoints.Put(e.IP.As4(), &v); err != nil {
		return fmt.Errorf("adding %s to the fast path's endpoints: %w", e.IP, err)
	}
	return nil
}

// Endpoint returns the endpoint of ip, if any.
func (n *Network) Endpoint(ip netip.Addr) (Endpoint, bool, error) {
	var v fastpathEndpoint
	err := n.objs.Endpoints.Lookup(ip.As4(), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Endpoint{}, false, nil
	}
	if err != nil {
		return Endpoint{}, false, fmt.Errorf("looking up %s in the fast path's endpoints: %w", ip, err)
	}
	return endpoint(ip.As4(), &v), true, nil
}

func endpoint(ip [4]byte, v *fastpathEndpoint) Endpoint {
	return Endpoint{IP: netip.AddrFrom4(ip), Ifindex: int(v.Ifindex), MAC: slices.Clone(v.Mac[:]),
		RouterMAC: slices.Clone(v.RouterMac[:]), Owner: v.Owner}
}

// Endpoints lists every endpoint (GC).
func (n *Network) Endpoints() ([]Endpoint, error) {
	var out []Endpoint
	var k [4]byte
	var v fastpathEndpoint
	it := n.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out = append(out, endpoint(k, &v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing the fast path's endpoints: %w", err)
	}
	return out, nil
}

// RemoveEndpoint removes the endpoint of ip if owner added it. The
// caller holds the address in IPAM, so no other attachment can be adding
// the same address meanwhile.
func (n *Network) RemoveEndpoint(ip netip.Addr, owner uint64) error {
	e, ok, err := n.Endpoint(ip)
	if err != nil || !ok || e.Owner != owner {
		return err
	}
	if err := n.objs.Endpoints.Delete(ip.As4()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing %s from the fast path's endpoints: %w", ip, err)
	}
	return nil
}

// Empty reports whether the network has no endpoint left.
func (n *Network) Empty() bool {
	var k [4]byte
	return errors.Is(n.objs.Endpoints.NextKey(nil, &k), ebpf.ErrKeyNotExist)
}

// AttachContainer attaches from_container to the ingress of the host veth
// ifindex: what the container sends. It does nothing when this version
// is attached already, and replaces an older version of this network's.
//
// The program is a tc filter (cls_bpf in direct-action mode, on a clsact
// qdisc), not a TCX program like the uplink's: a device's first tc
// filter costs an ADD far less (internal/bpfattach). The uplink gets its
// program once per network and node, and TCX lets several networks'
// programs share it.
func (n *Network) AttachContainer(ifindex int) error {
	mine, err := n.filters(ifindex)
	if err != nil {
		return err
	}
	id, err := bpfattach.ID(n.objs.FromContainer)
	if err != nil {
		return err
	}
	if slices.Contains(mine, id) {
		return nil
	}
	return attachFilter(ifindex, n.objs.FromContainer)
}

// attachFilter puts prog, a from_container, on ifindex's tc ingress, in
// place of the one there: one filter at a fixed place, so that a newer
// version replaces the older in place.
func attachFilter(ifindex int, prog *ebpf.Program) error {
	return bpfattach.AttachFilter(ifindex, prog, bpfattach.Filter{Priority: containerFilter, Name: progContainer + "_" + version})
}

// containerFilter is the handle and priority of from_container's filter.
const containerFilter = 1

// CloseContainer makes the host veth ifindex drop everything the
// container sends until AttachContainer puts from_container in its
// place: a filter at from_container's place that drops every frame. ADD
// calls it before the veth is up, so that a process already in the
// container's namespace sends nothing unguarded while the container's
// endpoint is being made.
func CloseContainer(ifindex int) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "berth_closed", Type: ebpf.SchedCLS, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* TC_ACT_SHOT */), asm.Return()}})
	if err != nil {
		return fmt.Errorf("loading the filter that closes interface %d: %w", ifindex, err)
	}
	defer prog.Close()
	return bpfattach.AttachFilter(ifindex, prog, bpfattach.Filter{Priority: containerFilter, Name: "berth_closed"})
}

// Adopt moves the container behind host veth ifindex onto n's pins when
// its program belongs to an older set of this network (the pins were
// removed, by hand or by a tool, and Open made them anew): its endpoint
// is copied from the older set's map into n's, and n's program replaces
// the older one on the veth. Left on the older set, the container would
// not reach containers added since, an address freed meanwhile would stay
// in its map, and on a netd node other nodes' packets for it would take
// the kernel's path while its replies skip conntrack (dropped as invalid
// where a rule drops those, as kube-proxy's does). A veth whose program
// uses n's maps (an older berth's version included: it keeps it) or has
// no from_container is left alone; an address n's map gives to another
// container is not taken back. It reports whether it moved the veth.
func (n *Network) Adopt(ifindex int) (bool, error) {
	filters, err := bpfattach.FilterPrograms(ifindex)
	if err != nil {
		return false, err
	}
	// TCX, where earlier builds of berth attached from_container.
	onTCX, err := bpfattach.TCXPrograms(ifindex)
	if err != nil {
		return false, err
	}
	all, err := bpfattach.Named(append(filters, onTCX...), progContainer)
	if err != nil {
		return false, err
	}
	// On n's own maps, of this version or an older one, a program is on
	// no older set. The config counts too: a config pin made anew leaves
	// the programs on the older config.
	endpoints, err := mapID(n.objs.Endpoints)
	if err != nil {
		return false, err
	}
	config, err := mapID(n.objs.Config)
	if err != nil {
		return false, err
	}
	mine, err := bpfattach.Where(all, func(info *ebpf.ProgramInfo) bool {
		maps, _ := info.MapIDs()
		return slices.Contains(maps, endpoints) && slices.Contains(maps, config)
	})
	if err != nil {
		return false, err
	}
	var older []ebpf.ProgramID
	for _, id := range all {
		if !slices.Contains(mine, id) {
			older = append(older, id)
		}
	}
	if len(older) == 0 {
		return false, nil
	}
	for _, id := range older {
		if err := n.copyFromOlder(id, ifindex); err != nil {
			return false, err
		}
	}
	if err := n.AttachContainer(ifindex); err != nil {
		return false, err
	}
	// An earlier berth's program on TCX runs before any filter.
	for _, id := range onTCX {
		if !slices.Contains(older, id) {
			continue
		}
		if err := bpfattach.DetachTCX(ifindex, id); err != nil {
			return false, fmt.Errorf("detaching the older %s from interface %d: %w", progContainer, ifindex, err)
		}
	}
	return true, nil
}

// copyFromOlder copies into n what the maps of program id, an older set's,
// hold for host veth ifindex: its endpoints, and the config when n's is
// unset (its pin was made anew), netd's mark with it, which a last DEL
// reads before it removes the pins.
func (n *Network) copyFromOlder(id ebpf.ProgramID, ifindex int) error {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil // gone meanwhile
	}
	info, err := p.Info()
	p.Close()
	if err != nil {
		return err
	}
	maps, _ := info.MapIDs()
	for _, mid := range maps {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			continue // gone meanwhile
		}
		mi, infoErr := m.Info()
		switch {
		case infoErr != nil: // gone meanwhile
		case mi.Name == fastpathMapEndpoints:
			err = n.copyEndpoints(m, ifindex)
		case mi.Name == fastpathMapConfig:
			err = n.copyConfig(m)
		}
		m.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// copyEndpoints copies into n the endpoints of host veth ifindex in from,
// an older set's endpoints map, but not an address n gives to another.
func (n *Network) copyEndpoints(from *ebpf.Map, ifindex int) error {
	eps, err := (&Network{objs: fastpathObjects{fastpathMaps: fastpathMaps{Endpoints: from}}}).Endpoints()
	if err != nil {
		return err
	}
	for _, e := range eps {
		if e.Ifindex != ifindex {
			continue
		}
		_, taken, err := n.Endpoint(e.IP)
		if err != nil {
			return err
		}
		if !taken {
			if err := n.AddEndpoint(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyConfig writes the config of an older set, from, into n when n's is
// unset.
func (n *Network) copyConfig(from *ebpf.Map) error {
	var mine, older fastpathConfig
	if err := n.objs.Config.Lookup(uint32(0), &mine); err != nil || mine != (fastpathConfig{}) {
		return err
	}
	if err := from.Lookup(uint32(0), &older); err != nil {
		return fmt.Errorf("reading the config of the older pins: %w", err)
	}
	if err := n.objs.Config.Put(uint32(0), &older); err != nil {
		return fmt.Errorf("writing the fast path's config: %w", err)
	}
	return nil
}

// AttachUplink attaches from_uplink to the ingress of the node's uplink
// or VTEP ifindex: what the network's other nodes send. Other networks'
// programs on the same device stay.
func (n *Network) AttachUplink(ifindex int) error {
	return n.attach(ifindex, progUplink, n.objs.FromUplink)
}

// attach puts prog on ifindex's TCX ingress, or replaces an older
// version of this network's program there; it does nothing when prog
// is attached already.
func (n *Network) attach(ifindex int, name string, prog *ebpf.Program) error {
	mine, err := n.tcx(ifindex, name)
	if err != nil {
		return err
	}
	id, err := bpfattach.ID(prog)
	if err != nil {
		return err
	}
	if slices.Contains(mine, id) {
		return nil
	}
	var place bpfattach.TCXPlace
	if len(mine) > 0 {
		place.Replace = mine[0]
	}
	if err := bpfattach.AttachTCX(ifindex, prog, place); err != nil {
		return fmt.Errorf("attaching %s: %w", name, err)
	}
	return nil
}

// Attached reports whether this network's program for a host veth
// (container true) or an uplink is attached to ifindex. A host veth's
// program counts on TCX too, where earlier builds of berth attached it.
func (n *Network) Attached(ifindex int, container bool) (bool, error) {
	if !container {
		mine, err := n.tcx(ifindex, progUplink)
		return len(mine) > 0, err
	}
	mine, err := n.filters(ifindex)
	if err != nil || len(mine) > 0 {
		return len(mine) > 0, err
	}
	mine, err = n.tcx(ifindex, progContainer)
	return len(mine) > 0, err
}

// UplinkCurrent reports whether this version of the network's uplink
// program is attached to ifindex (an older one is not current:
// AttachUplink replaces it).
func (n *Network) UplinkCurrent(ifindex int) (bool, error) {
	mine, err := n.tcx(ifindex, progUplink)
	if err != nil {
		return false, err
	}
	id, err := bpfattach.ID(n.objs.FromUplink)
	return slices.Contains(mine, id), err
}

// DetachUplink removes this network's uplink program from ifindex; a
// missing device or program is fine.
func (n *Network) DetachUplink(ifindex int) error {
	mine, err := n.tcx(ifindex, progUplink)
	if err != nil {
		return err
	}
	for _, id := range mine {
		if err := bpfattach.DetachTCX(ifindex, id); err != nil {
			return fmt.Errorf("detaching %s from interface %d: %w", progUplink, ifindex, err)
		}
	}
	return nil
}

// tcx lists this network's programs named name (of any version) on
// ifindex's TCX ingress.
func (n *Network) tcx(ifindex int, name string) ([]ebpf.ProgramID, error) {
	ids, err := bpfattach.TCXPrograms(ifindex)
	if err != nil {
		return nil, err
	}
	return n.mine(ids, name)
}

// filters lists this network's from_container programs (of any version)
// in ifindex's tc ingress filters that act on their verdicts.
func (n *Network) filters(ifindex int) ([]ebpf.ProgramID, error) {
	ids, err := bpfattach.FilterPrograms(ifindex)
	if err != nil {
		return nil, err
	}
	return n.mine(ids, progContainer)
}

// mine keeps the programs of ids named name that use this network's
// endpoints: this network's, of any version.
func (n *Network) mine(ids []ebpf.ProgramID, name string) ([]ebpf.ProgramID, error) {
	endpoints, err := mapID(n.objs.Endpoints)
	if err != nil {
		return nil, err
	}
	return bpfattach.Where(ids, func(info *ebpf.ProgramInfo) bool {
		maps, _ := info.MapIDs()
		return info.Name == name && slices.Contains(maps, endpoints)
	})
}

// Stats are the programs' packet counters, summed over the CPUs.
type Stats struct {
	Local      uint64 // delivered to a container on this node
	FIB        uint64 // sent to another node after a FIB lookup
	Neigh      uint64 // same, with the neighbour resolved by the kernel
	Arrived    uint64 // arrived from another node into a container
	Translated uint64 // left to the kernel: conntrack translated the flow
	Spoofed    uint64 // dropped: not the container's source address
	// vxlan mode: of FIB and Arrived, what the programs encapsulated and
	// decapsulated themselves (the rest went through the VTEP).
	Encapsulated, Decapsulated uint64
}

// Stats reads the counters.
func (n *Network) Stats() (Stats, error) {
	var s Stats
	for m, counters := range map[*ebpf.Map][]*uint64{
		n.objs.Stats:       {&s.Local, &s.FIB, &s.Neigh, &s.Arrived, &s.Translated, &s.Spoofed},
		n.objs.TunnelStats: {&s.Encapsulated, &s.Decapsulated},
	} {
		if m == nil { // an earlier berth's set: no tunnel counters
			continue
		}
		for i, f := range counters {
			var perCPU []uint64
			if err := m.Lookup(uint32(i), &perCPU); err != nil {
				return s, fmt.Errorf("reading the fast path's counters: %w", err)
			}
			for _, v := range perCPU {
				*f += v
			}
		}
	}
	return s, nil
}

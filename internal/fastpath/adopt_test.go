package fastpath

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/internal/testenv"

	"github.com/berthnet/berth/internal/bpfattach"
)

// Adopt moves a veth off a program of another set of maps, and leaves
// alone one whose program, of another version, uses the network's own
// maps: an upgrade keeps the programs of the veths attached before it.
func TestAdoptOnlyOtherMaps(t *testing.T) {
	node := testenv.NewNS(t)
	bpffs := testenv.BPFFS(t)
	var n *Network
	var ifindex int
	err := node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "peer0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlink.LinkByName("host0")
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		n, err = Open(bpffs, "net1")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	// load gives from_container a program of its own, on n's maps or on
	// new ones, as another version of berth or another set of pins would.
	load := func(sameMaps bool) *ebpf.Program {
		spec, err := loadFastpath()
		if err != nil {
			t.Fatal(err)
		}
		opts := &ebpf.CollectionOptions{}
		if sameMaps {
			opts.MapReplacements = map[string]*ebpf.Map{}
			for name, m := range n.maps() {
				opts.MapReplacements[name] = *m
			}
		} else {
			for _, m := range spec.Maps {
				m.Pinning = ebpf.PinNone // new maps, unpinned: the set pins removed leave
			}
		}
		var objs fastpathObjects
		if err := spec.LoadAndAssign(&objs, opts); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { objs.Close() })
		return objs.FromContainer
	}
	for _, tt := range []struct {
		name     string
		sameMaps bool
		moved    bool
	}{
		{"another version on the network's maps", true, false},
		{"another set of maps", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			other := &Network{objs: fastpathObjects{fastpathPrograms: fastpathPrograms{FromContainer: load(tt.sameMaps)}}}
			err := node.Do(func(ns.NetNS) error {
				if err := attachFilter(ifindex, other.objs.FromContainer); err != nil {
					return err
				}
				moved, err := n.Adopt(ifindex)
				if err != nil {
					return err
				}
				if moved != tt.moved {
					t.Errorf("Adopt moved the veth: %v, want %v", moved, tt.moved)
				}
				ids, err := bpfattach.FilterPrograms(ifindex)
				if err != nil {
					return err
				}
				want, _ := bpfattach.ID(other.objs.FromContainer)
				if tt.moved {
					want, _ = bpfattach.ID(n.objs.FromContainer)
				}
				if len(ids) != 1 || ids[0] != want {
					t.Errorf("programs on the veth: %v, want [%d]", ids, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A set an earlier berth pinned has no VXLAN maps: opening it to remove
// endpoints or to CHECK a container still works, and it reads as no
// encapsulation; Open completes it.
func TestOpenEarlierSet(t *testing.T) {
	bpffs := testenv.BPFFS(t)
	n, err := Open(bpffs, "net1")
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	dir := Dir(bpffs, "net1")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries { // what an earlier berth pinned: three maps and its programs
		if slices.Contains(olderSets, e.Name()) || strings.HasSuffix(e.Name(), "_"+version) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	old, err := OpenExisting(bpffs, "net1")
	if err != nil || old == nil {
		t.Fatalf("OpenExisting of an earlier set: %v, %v", old, err)
	}
	defer old.Close()
	if _, err := old.Stats(); err != nil {
		t.Errorf("Stats: %v", err)
	}
	if v, err := old.VXLAN(); err != nil || v != (VXLAN{}) {
		t.Errorf("VXLAN: %+v, %v; want none", v, err)
	}
	if tun, err := old.Tunnels(); err != nil || len(tun) != 0 {
		t.Errorf("Tunnels: %v, %v; want none", tun, err)
	}
	if err := old.SetTunnel(netip.MustParseAddr("10.1.2.0"), netip.MustParseAddr("192.168.1.2")); !errors.Is(err, errEarlierSet) {
		t.Errorf("SetTunnel: %v, want %v", err, errEarlierSet)
	}
	full, err := Open(bpffs, "net1")
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	if !full.Made() {
		t.Errorf("Open of an earlier set made nothing")
	}
	for _, name := range olderSets {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("Open left %s missing: %v", name, err)
		}
	}
}

// A set the berth before vtep_mac pinned (its VXLAN maps without
// vtep_mac) opens to remove endpoints or CHECK a container, reads its
// VXLAN config without a MAC (the programs then decapsulate nothing:
// the VTEP does), refuses a VXLAN config it could not hold whole, and
// Open completes it keeping the maps it had, their entries with them.
func TestOpenSetWithoutVTEPMAC(t *testing.T) {
	bpffs := testenv.BPFFS(t)
	n, err := Open(bpffs, "net1")
	if err != nil {
		t.Fatal(err)
	}
	vx := VXLAN{VTEP: 40, Underlay: 2, Local: netip.MustParseAddr("192.168.50.1"), VNI: 1, Port: 8472, MAC: [6]byte{2, 0xbe, 0, 0, 0, 1}}
	if err := n.ConfigureVXLAN(vx); err != nil {
		t.Fatal(err)
	}
	n.Close()
	dir := Dir(bpffs, "net1")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == fastpathMapVtepMac || strings.HasSuffix(e.Name(), "_"+version) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := CheckPins(bpffs, "net1"); err != nil {
		t.Errorf("CheckPins: %v, want the set usable", err)
	}
	old, err := OpenExisting(bpffs, "net1")
	if err != nil || old == nil {
		t.Fatalf("OpenExisting of a set without vtep_mac: %v, %v", old, err)
	}
	defer old.Close()
	noMAC := vx
	noMAC.MAC = [6]byte{}
	if v, err := old.VXLAN(); err != nil || v != noMAC {
		t.Errorf("VXLAN: %+v, %v; want %+v", v, err, noMAC)
	}
	if err := old.ConfigureVXLAN(vx); !errors.Is(err, errEarlierSet) {
		t.Errorf("ConfigureVXLAN: %v, want %v", err, errEarlierSet)
	}
	full, err := Open(bpffs, "net1")
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	if !full.Made() {
		t.Errorf("Open of a set without vtep_mac made nothing")
	}
	if v, err := full.VXLAN(); err != nil || v != noMAC {
		t.Errorf("VXLAN after Open: %+v, %v; want the set's %+v", v, err, noMAC)
	}
	if err := full.ConfigureVXLAN(vx); err != nil {
		t.Fatal(err)
	}
	if v, err := full.VXLAN(); err != nil || v != vx {
		t.Errorf("VXLAN: %+v, %v; want %+v", v, err, vx)
	}
}

// An upgrade leaves the previous build's from_uplink attached, on the
// network's own maps: AttachUplink replaces it in place with this
// build's, and UplinkCurrent then says so.
func TestAttachUplinkReplacesAnotherBuilds(t *testing.T) {
	node := testenv.NewNS(t)
	bpffs := testenv.BPFFS(t)
	err := node.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		idx := l.Attrs().Index
		older, err := Open(bpffs, "net1")
		if err != nil {
			return err
		}
		defer older.Close()
		if err := older.AttachUplink(idx); err != nil {
			return err
		}
		// The program pins become another build's, as after an upgrade:
		// the next Open loads this build's programs over the same maps.
		for _, name := range []string{progUplink, progContainer} {
			if err := os.Rename(older.progPin(name), filepath.Join(older.dir, name+"_olderbuild")); err != nil {
				return err
			}
		}
		n, err := Open(bpffs, "net1")
		if err != nil {
			return err
		}
		defer n.Close()
		if current, err := n.UplinkCurrent(idx); err != nil || current {
			t.Fatalf("before the replacement: current %v (%v), want the other build's program", current, err)
		}
		if err := n.AttachUplink(idx); err != nil {
			t.Fatalf("replacing the other build's from_uplink: %v", err)
		}
		current, err := n.UplinkCurrent(idx)
		progs, _ := testenv.TCXIngressNames(idx)
		if err != nil || !current || len(progs) != 1 {
			t.Errorf("after AttachUplink: current %v (%v), programs %v; want this build's alone", current, err, progs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

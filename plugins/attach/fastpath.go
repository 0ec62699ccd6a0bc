package attach

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/fastpath"
)

// The eBPF datapath's share of an attachment ("datapath": "ebpf"): the
// container's endpoint in the network's map and the program on its host
// veth (internal/fastpath). ADD adds them once the links and the rules are
// in place; DEL and GC remove the endpoint before the address goes back
// to IPAM (the program goes with the veth), and the network's pins after
// its last container; CHECK verifies both. The record keeps the BPF
// filesystem ADD used, so that DEL cleans up whatever the config says now.

// attachFastpath adds the container's endpoint and attaches the program
// to its host veth. res is the result of the links in netns.
func (k *call) attachFastpath(res *current.Result, netns ns.NetNS) error {
	if k.rec.BPFFS == "" {
		return nil
	}
	ep, err := k.fastpathEndpoint(res)
	if err != nil {
		return err
	}
	if err := k.refuseSecondAttachment(netns); err != nil {
		return err
	}
	add := func(n *fastpath.Network) error {
		defer n.Close()
		if err := n.Configure(fastpath.Config{Local: k.c.Subnet(false), Scope: k.c.Scope}); err != nil {
			return err
		}
		if err := adoptAttached(n, k.c, k.rec.BPFFS); err != nil {
			return err
		}
		// The endpoint first: the program drops what a container sends
		// before its address is known (anti-spoofing).
		if err := n.AddEndpoint(ep); err != nil {
			return err
		}
		return n.AttachContainer(ep.Ifindex)
	}
	// Pins complete, as for every ADD but a network's first on the node:
	// the lock shared with the other ADDs, whose endpoints and veths are
	// their own.
	added := false
	err = withFastpath(fastpath.AcquireShared, k.rec.BPFFS, func() error {
		n, err := fastpath.OpenPinned(k.rec.BPFFS, k.c.Name)
		if n == nil || err != nil {
			return err
		}
		added = true
		return add(n)
	})
	if added || err != nil {
		return err
	}
	return withFastpath(fastpath.Acquire, k.rec.BPFFS, func() error {
		n, err := fastpath.Open(k.rec.BPFFS, k.c.Name)
		if err != nil {
			return err
		}
		return add(n)
	})
}

// refuseSecondAttachment fails an eBPF ADD when the container has an
// address of the network on another interface (attached twice to one
// network): the programs accept from a host veth only its own container
// address, and the container's replies from one address may leave
// through the other interface, to be dropped as spoofed. ADD asks before
// it makes anything, and again once its own address is in place, which
// two parallel ADDs of one container cannot both pass: each adds its
// address before it asks, so the one that asks last sees the other's.
func (k *call) refuseSecondAttachment(netns ns.NetNS) error {
	if !k.c.EBPF() || !k.c.Scope.IsValid() {
		return nil
	}
	return netns.Do(func(ns.NetNS) error {
		addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("%w: listing the container's addresses: %v", cnierr.ErrDatapath, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || !k.c.Scope.Contains(ip.Unmap()) {
				continue
			}
			name := strconv.Itoa(a.LinkIndex)
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			if name == k.args.IfName {
				continue // this ADD's own
			}
			return fmt.Errorf("%w: datapath: %q attaches a container to network %s once, and container %s has %s of it on %s already: its replies could leave through the other interface and be dropped as spoofed; use \"datapath\": %q for a container with two interfaces on one network",
				cnierr.ErrInvalidConfig, conf.DatapathEBPF, k.c.Name, k.args.ContainerID, ip.Unmap(), name, conf.DatapathIptables)
		}
		return nil
	})
}

// closeFastpath keeps the host veth hostIndex closed until
// attachFastpath attaches from_container (fastpath.CloseContainer), and
// holds the bridge to from_container's mark.
func (k *call) closeFastpath(hostIndex int, _ net.HardwareAddr) error {
	if err := fastpath.CloseContainer(hostIndex); err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrDatapath, err)
	}
	return k.requireGuard(hostIndex)
}

// fastpathEndpoint describes the container for the programs: its IPv4
// address, the host veth, the container's MAC and its gateway's (the
// bridge's, or in routed mode the host veth's).
func (k *call) fastpathEndpoint(res *current.Result) (fastpath.Endpoint, error) {
	ep := fastpath.Endpoint{Owner: fastpath.OwnerOf(k.rec.key())}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			ep.IP = a.Unmap()
			break
		}
	}
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			ep.MAC, _ = net.ParseMAC(i.Mac)
		}
	}
	host, err := netlinksafe.LinkByName(k.rec.HostVeth)
	if err != nil {
		return ep, fmt.Errorf("%w: finding %s: %v", cnierr.ErrDatapath, k.rec.HostVeth, err)
	}
	ep.Ifindex = host.Attrs().Index
	ep.RouterMAC = host.Attrs().HardwareAddr
	if master := host.Attrs().MasterIndex; master != 0 {
		br, err := netlink.LinkByIndex(master)
		if err != nil {
			return ep, fmt.Errorf("%w: finding the bridge of %s: %v", cnierr.ErrDatapath, k.rec.HostVeth, err)
		}
		ep.RouterMAC = br.Attrs().HardwareAddr
	}
	if !ep.IP.IsValid() || len(ep.MAC) != 6 {
		return ep, fmt.Errorf("%w: the eBPF datapath needs the container's IPv4 address and MAC; the result has %v", cnierr.ErrDatapath, res)
	}
	return ep, nil
}

// detachFastpath removes the container's endpoint and, after the
// network's last container, its pins (unless netd manages them). What is
// gone already is fine.
func (k *call) detachFastpath() error {
	if k.rec.BPFFS == "" || !k.rec.ContainerIP.IsValid() {
		return nil
	}
	err := withFastpath(fastpath.Acquire, k.rec.BPFFS, func() error {
		n, err := fastpath.OpenToClean(k.rec.BPFFS, k.c.Name)
		if n == nil || err != nil {
			return err
		}
		defer n.Close()
		// Before the emptiness check below: the other containers'
		// endpoints may be in an older set only.
		if err := adoptAttached(n, k.c, k.rec.BPFFS); err != nil {
			return err
		}
		if err := n.RemoveEndpoint(k.rec.ContainerIP, fastpath.OwnerOf(k.rec.key())); err != nil {
			return err
		}
		return removeIfUnused(n, k.rec.BPFFS)
	})
	if errors.Is(err, fastpath.ErrNoBPFFS) {
		return nil // no BPF filesystem (a reboot): nothing can be pinned
	}
	return err
}

// adoptAttached moves the network's containers on this node onto n when
// Open made its pins anew (someone removed them): their veths still run
// the older set's programs (fastpath.Adopt says what that breaks). The
// records name the veths; one gone meanwhile runs nothing.
func adoptAttached(n *fastpath.Network, c *conf.Bridge, bpffs string) error {
	if !n.Made() {
		return nil
	}
	recs, err := records(c.StateDir, c.Name)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.BPFFS != bpffs {
			continue // not on these pins
		}
		host, err := netlinksafe.LinkByName(r.HostVeth)
		if err != nil {
			continue
		}
		if _, err := n.Adopt(host.Attrs().Index); err != nil {
			return fmt.Errorf("moving %s onto the network's new pins: %w", r.HostVeth, err)
		}
	}
	return nil
}

// removeIfUnused unpins the network's maps and programs when no container
// is left and netd does not manage them. The endpoints under the node's
// lock are what counts, not the records: every ADD adds its endpoint
// under the lock, after creating the pins if they are gone, so an empty
// map means nobody uses them, and an ADD to come will make them again.
// (Records would not do: two last DELs side by side each see the other's.)
func removeIfUnused(n *fastpath.Network, bpffs string) error {
	if !n.Empty() {
		return nil
	}
	cfg, err := n.Config()
	if err != nil || cfg.Netd {
		return err
	}
	return fastpath.Remove(bpffs, n.Name)
}

// checkFastpath verifies the container's endpoint and its program.
func (k *call) checkFastpath() error {
	if !k.c.EBPF() && k.rec.BPFFS == "" {
		return nil
	}
	if k.rec.BPFFS == "" {
		return fmt.Errorf("%w: the attachment was made without the eBPF datapath the network now has; DEL and ADD it again", cnierr.ErrCheckFailed)
	}
	host, err := netlinksafe.LinkByName(k.rec.HostVeth)
	if err != nil {
		return fmt.Errorf("%w: host veth %s: %v", cnierr.ErrCheckFailed, k.rec.HostVeth, err)
	}
	return withFastpath(fastpath.AcquireShared, k.rec.BPFFS, func() error {
		n, err := fastpath.OpenExisting(k.rec.BPFFS, k.c.Name)
		if errors.Is(err, fastpath.ErrIncomplete) {
			return fmt.Errorf("%w: %v", cnierr.ErrCheckFailed, err)
		}
		if err != nil {
			return err
		}
		if n == nil {
			return fmt.Errorf("%w: network %s has no eBPF maps in %s", cnierr.ErrCheckFailed, k.c.Name, fastpath.Dir(k.rec.BPFFS, k.c.Name))
		}
		defer n.Close()
		ep, ok, err := n.Endpoint(k.rec.ContainerIP)
		switch {
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("%w: %s is missing from the eBPF endpoints of network %s", cnierr.ErrCheckFailed, k.rec.ContainerIP, k.c.Name)
		case ep.Ifindex != host.Attrs().Index || ep.Owner != fastpath.OwnerOf(k.rec.key()):
			return fmt.Errorf("%w: the eBPF endpoint of %s points to interface %d, not %s (%d)", cnierr.ErrCheckFailed,
				k.rec.ContainerIP, ep.Ifindex, k.rec.HostVeth, host.Attrs().Index)
		}
		attached, err := n.Attached(host.Attrs().Index, true)
		if err != nil {
			return err
		}
		if !attached {
			return fmt.Errorf("%w: the eBPF program from_container of network %s is not on %s (tc filter show dev %s ingress); DEL and ADD the container again",
				cnierr.ErrCheckFailed, k.c.Name, k.rec.HostVeth, k.rec.HostVeth)
		}
		return nil
	})
}

// gcFastpath removes the endpoints no record owns any more (an ADD killed
// after adding its endpoint whose record GC removed, or state lost) and
// the network's pins when nothing is left.
func gcFastpath(c *conf.Bridge) error {
	if !c.EBPF() {
		return nil
	}
	err := withFastpath(fastpath.Acquire, c.BPFFS, func() error {
		n, err := fastpath.OpenToClean(c.BPFFS, c.Name)
		if n == nil || err != nil {
			return err
		}
		defer n.Close()
		if err := adoptAttached(n, c, c.BPFFS); err != nil {
			return err
		}
		// Read under the lock: an ADD adds its endpoint under it, after
		// saving its record, so every endpoint here has its record now.
		recs, err := records(c.StateDir, c.Name)
		if err != nil {
			return err
		}
		owners := map[uint64]bool{}
		for _, r := range recs {
			owners[fastpath.OwnerOf(r.key())] = true
		}
		eps, err := n.Endpoints()
		if err != nil {
			return err
		}
		for _, ep := range eps {
			if !owners[ep.Owner] {
				if err := n.RemoveEndpoint(ep.IP, ep.Owner); err != nil {
					return err
				}
			}
		}
		return removeIfUnused(n, c.BPFFS)
	})
	if errors.Is(err, fastpath.ErrNoBPFFS) {
		return nil
	}
	return err
}

// statusFastpath fails (50) when the eBPF datapath cannot take a
// container: its BPF filesystem is missing, or holds maps of the network
// that this build's programs cannot use.
func statusFastpath(c *conf.Bridge) error {
	if !c.EBPF() {
		return nil
	}
	lock, err := fastpath.AcquireShared(c.BPFFS)
	if err != nil {
		return fmt.Errorf("%w: bpffs: %w", cnierr.ErrUnavailable, err)
	}
	defer lock.Release()
	if err := fastpath.CheckPins(c.BPFFS, c.Name); err != nil {
		return fmt.Errorf("%w: eBPF datapath: %w", cnierr.ErrUnavailable, err)
	}
	return nil
}

// withFastpath runs f under the node's fast path lock, taken by acquire
// (fastpath.Acquire or AcquireShared), and gives its errors their CNI
// codes.
func withFastpath(acquire func(bpffs string) (*fastpath.Lock, error), bpffs string, f func() error) error {
	lock, err := acquire(bpffs)
	if errors.Is(err, fastpath.ErrNoBPFFS) {
		return fmt.Errorf("%w: bpffs: %w", cnierr.ErrInvalidConfig, err)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrDatapath, err)
	}
	defer lock.Release()
	err = f()
	if err != nil && !errors.As(err, new(*cnierr.Kind)) {
		return fmt.Errorf("%w: eBPF datapath: %v", cnierr.ErrDatapath, err)
	}
	return err
}

// Package attach is the life of a container's attachment that every berth
// plugin shares, whatever plugs the container in (a Datapath's Links: the
// bridge, or bgp's routed veth): the record written first so that a crash
// midway is repaired, IPAM, host ports, masquerade, isolation and
// anti-spoofing (internal/srcguard per container; internal/firewall for
// routed IPv6), the eBPF fast path, CHECK, DEL and GC.
package attach

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/firewall"
)

// Datapath is one of berth's ways to plug containers in (its Links), with
// the attachment lifecycle every datapath shares: record, IPAM, host
// ports, iptables, teardown, GC.
type Datapath struct{ Links Links }

// Funcs are the CNI operations of d with the config from load; needLease
// tells load whether the operation needs netd's lease (not DEL and GC,
// which must clean up while netd is down).
func (d Datapath) Funcs(load func(args *skel.CmdArgs, needLease bool) (*conf.Bridge, error)) skel.CNIFuncs {
	run := func(op Op, needLease bool) func(*skel.CmdArgs) error {
		return func(args *skel.CmdArgs) error {
			c, err := load(args, needLease)
			if err != nil {
				return err
			}
			return op(args, c)
		}
	}
	return skel.CNIFuncs{
		Add:    run(d.Add, true),
		Del:    run(d.Del, false),
		Check:  run(d.Check, true),
		GC:     run(d.GC, false),
		Status: run(Status, true),
	}
}

// call is one CNI operation on one attachment.
type call struct {
	args *skel.CmdArgs
	c    *conf.Bridge
	rec  *record
	ipam addresser
}

func newCall(args *skel.CmdArgs, c *conf.Bridge) (*call, error) {
	if err := conf.ValidIfName("CNI_IFNAME", args.IfName); err != nil {
		return nil, fmt.Errorf("%w: %v", cnierr.ErrInvalidEnv, errors.Unwrap(err))
	}
	rec := &record{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, Ports: c.Ports()}
	rec.HostVeth = hostVethName(rec.key())
	if c.EBPF() {
		rec.BPFFS = c.BPFFS
	}
	rec.Guards = guardsThisBuild
	rec.Bridge = c.BridgeName
	return &call{args: args, c: c, rec: rec, ipam: newAddresser(args, c)}, nil
}

// fwNetwork is what c's rules depend on, in both families: this node's
// subnet of each (from the ipam range sets, which the leased modes fill
// from the node lease) and the whole network's.
func (d Datapath) fwNetwork(c *conf.Bridge) firewall.Network {
	n := firewall.Network{Name: c.Name,
		IPv4:    firewall.Subnet{Local: c.Subnet(false), Scope: c.Scope},
		IPv6:    firewall.Subnet{Local: c.Subnet(true), Scope: c.Scope6},
		Masq:    c.Masq(),
		Ingress: d.Links.Ingress(c), Isolated: c.Isolated()}
	// Every other ingress is the network's own bridge; routed host veths
	// are every routed network's (their IPv6 is closed per veth, see
	// DisableIPv6).
	if n.Ingress != HostVeths {
		n.Bridge = n.Ingress
	}
	return n
}

func (k *call) fwAttachment() *firewall.Attachment {
	return &firewall.Attachment{Key: k.rec.key(), IPv4: k.rec.ContainerIP, IPv6: k.rec.ContainerIP6, Ports: firewallPorts(k.rec.Ports),
		Earlier: !k.rec.guarded()}
}

// Add attaches the container: allocate, claim host ports, then plug it in
// with d's links while the firewall is set up. Whatever fails, everything
// this call made is undone before it returns.
func (d Datapath) Add(args *skel.CmdArgs, c *conf.Bridge) (err error) {
	k, err := newCall(args, c)
	if err != nil {
		return err
	}
	if err := c.CheckPaths(); err != nil {
		return err
	}
	if err := c.CheckAddressing(); err != nil {
		return err
	}
	if err := c.CheckPortFamilies(); err != nil {
		return err
	}
	bandwidth, err := conf.ParseBandwidth(args.StdinData)
	if err != nil {
		return err
	}
	if err := c.CheckBandwidth(bandwidth); err != nil {
		return err
	}
	netns, err := openNetns(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	lock, err := lockAttachment(c.StateDir, k.rec, "ADD", lockWait)
	if err != nil {
		return err
	}
	// Deferred before undo, so run after it: a call waiting for the
	// lock finds the failed ADD's remains gone.
	defer lock.unlock()

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	if err := d.refuseDuplicate(k, netns); err != nil {
		return err // before any undo is registered: the first ADD's work stays
	}
	if err := k.refuseSecondAttachment(netns); err != nil {
		return err
	}
	// Before any address or rule: the rules, state and eBPF maps of
	// another network of this name would be overwritten or shared. The
	// claim is held up to Setup, so that a last DEL or GC of the network
	// meanwhile does not release the bridge.
	unclaim := func() {}
	if nk, ok := d.Links.(nameKeeper); ok {
		done, err := nk.ClaimName(c)
		if err != nil {
			return err
		}
		undo = append(undo, func() { d.releaseIfEmpty(c) })
		var once sync.Once
		unclaim = func() { once.Do(done) }
		// Deferred after undo, so run before it: undo's Release takes
		// the lock the claim holds.
		defer unclaim()
	}
	// The record goes first: if this process is killed below, a DEL or GC
	// finds it and removes what was made.
	if err := saveRecord(c.StateDir, k.rec); err != nil {
		return err
	}
	// Undone last: while the record was there, a parallel DEL of the
	// network's last other container kept the network's rules and bridge
	// for this one, so they go now if nothing else holds them.
	undo = append(undo, func() {
		removeRecord(c.StateDir, k.rec)
		d.releaseIfEmpty(c)
	})

	res, err := k.ipam.add()
	if err != nil {
		return err
	}
	undo = append(undo, func() { k.ipam.del() })
	if err := claimPorts(k.rec); err != nil {
		return err
	}
	undo = append(undo, func() { unclaimPorts(k.rec) })

	// The iptables commit and the veth setup both wait on the kernel;
	// side by side they cost the longer of the two, not the sum.
	k.takeAddresses(res)
	fwDone := make(chan error, 1)
	go func() { fwDone <- k.setupFirewall(d.fwNetwork(c)) }()
	undo = append(undo, func() {
		firewall.RemoveAttachment(c.Name, k.fwAttachment(), func() bool { return false })
	})
	undo = append(undo, func() { delLink(k.rec.HostVeth) })
	undo = append(undo, func() { k.unshape() })
	// Setup takes the bridge's lock itself, exclusively when it finds
	// the bridge changed (by hand): a shared hold of this process's own
	// would block it for ever.
	unclaim()
	// The source guard goes on in Setup, before the host veth is up; on
	// the eBPF datapath a filter that drops everything, which
	// from_container replaces once the endpoint is made.
	req := k.linkRequest(netns, res)
	req.Guard = k.guard
	if k.rec.BPFFS != "" {
		req.Guard = k.closeFastpath
	}
	result, linkErr := d.Links.Setup(req)
	if err := errors.Join(linkErr, <-fwDone); err != nil {
		return err
	}
	undo = append(undo, func() { k.detachFastpath() })
	if err := k.attachFastpath(result, netns); err != nil {
		return err
	}
	if err := k.shape(bandwidth); err != nil {
		return err
	}
	flushUDPConntrack(k.rec)
	return types.PrintResult(result, c.CNIVersion)
}

// refuseDuplicate fails a second ADD of a live attachment (the spec asks
// runtimes to DEL first), and clears the remains of an ADD that was killed
// midway so that this one starts clean.
func (d Datapath) refuseDuplicate(k *call, netns ns.NetNS) error {
	saved, err := loadAttachment(k.c.StateDir, k.rec)
	if err != nil || saved == nil {
		return err
	}
	exists := netns.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(k.args.IfName)
		return err
	}) == nil
	if exists {
		return fmt.Errorf("%w: container %s already has %s on network %s; DEL it first",
			cnierr.ErrLinkInUse, k.args.ContainerID, k.args.IfName, k.c.Name)
	}
	old := &call{args: k.args, c: k.c, rec: saved, ipam: k.ipam}
	return d.teardown(old)
}

// openNetns opens the container's namespace named by CNI_NETNS, refusing
// the namespace this plugin runs in: an ADD there would give the node a
// container's address and default route.
func openNetns(path string) (ns.NetNS, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: CNI_NETNS is empty; ADD needs the container's network namespace", cnierr.ErrInvalidEnv)
	}
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("%w: CNI_NETNS %q: %v", cnierr.ErrInvalidEnv, path, err)
	}
	var own, given unix.Stat_t
	err = errors.Join(unix.Stat("/proc/thread-self/ns/net", &own), unix.Fstat(int(n.Fd()), &given))
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("%w: CNI_NETNS %q: %v", cnierr.ErrInvalidEnv, path, err)
	}
	if own.Dev == given.Dev && own.Ino == given.Ino {
		n.Close()
		return nil, fmt.Errorf("%w: CNI_NETNS %q is the network namespace the plugin runs in (the node's), not a container's",
			cnierr.ErrInvalidEnv, path)
	}
	return n, nil
}

func (k *call) linkRequest(netns ns.NetNS, res *current.Result) LinkRequest {
	return LinkRequest{Conf: k.c, Netns: netns, IfName: k.args.IfName, HostVeth: k.rec.HostVeth, IPAM: res, Earlier: !k.rec.guarded()}
}

// takeAddresses puts IPAM's addresses for the container, res, in the
// record; before the firewall and the links, which both read them.
func (k *call) takeAddresses(res *current.Result) {
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		switch a = a.Unmap(); {
		case !ok:
		case a.Is4() && !k.rec.ContainerIP.IsValid():
			k.rec.ContainerIP = a
		case a.Is6() && !k.rec.ContainerIP6.IsValid():
			k.rec.ContainerIP6 = a
		}
	}
}

// setupFirewall saves the record with the container's addresses and
// installs the rules of n (with IPv6 forwarding when n has IPv6).
func (k *call) setupFirewall(n firewall.Network) error {
	if err := saveRecord(k.c.StateDir, k.rec); err != nil {
		return err
	}
	if n.IPv6.Local.IsValid() {
		if err := EnableIPv6Forwarding(); err != nil {
			return err
		}
	}
	return firewall.Ensure(n, k.fwAttachment())
}

// Del detaches the container. It forgives what is already gone: the netns,
// the veth, the addresses, the rules, or the whole attachment.
func (d Datapath) Del(args *skel.CmdArgs, c *conf.Bridge) error {
	k, err := newCall(args, c)
	if err != nil {
		return err
	}
	lock, err := lockAttachment(c.StateDir, k.rec, "DEL", lockWait)
	if err != nil {
		return err
	}
	defer lock.unlock()
	if saved, err := loadAttachment(c.StateDir, k.rec); err != nil {
		return err
	} else if saved != nil {
		k.rec = saved // knows the ports of the ADD, which a DEL may not repeat
	}
	return d.teardown(k)
}

// teardown removes everything of k's attachment; shared by DEL and GC.
// The record is marked leaving first (from then on the network counts as
// empty without it) and goes last, so that a DEL killed midway can be
// repeated.
func (d Datapath) teardown(k *call) error {
	c := k.c
	if err := markLeaving(c.StateDir, k.rec); err != nil {
		return err
	}
	// Before the address goes back to IPAM, which may give it to another
	// container at once, and before the host veth, whose index the
	// endpoint names, goes.
	if err := k.detachFastpath(); err != nil {
		return err
	}
	// Before the veth: an IPAM plugin may need the container's interface
	// for its DEL (the reference dhcp plugin sends its DHCPRELEASE from
	// it), as the reference bridge plugin has it.
	if err := k.ipam.del(); err != nil {
		return err
	}
	// Deleting a veth returns only once the kernel has run the RCU
	// callbacks pending on every CPU (rcu_barrier), most of a DEL's time
	// although the link is gone from the node well before: the rest of
	// the teardown runs meanwhile. Deleting the host end removes the
	// pair, wherever the other end is.
	linkDone := make(chan error, 1)
	go func() { linkDone <- delLink(k.rec.HostVeth) }()
	if err := errors.Join(k.release(d.lastOfName), <-linkDone); err != nil {
		return err
	}
	if err := removeRecord(c.StateDir, k.rec); err != nil {
		return err
	}
	if networkEmpty(c.StateDir, c.Name) {
		return d.Links.Release(c)
	}
	return nil
}

// release gives back what k's attachment holds besides its links and
// addresses, while its host veth is being deleted: its rules (and, when
// isLast says the network has no attachment left, the network's), its
// shaping, then its host ports, which another container may claim once
// its rules are gone.
func (k *call) release(isLast func(*conf.Bridge) bool) error {
	fwErr := firewall.RemoveAttachment(k.c.Name, k.fwAttachment(), func() bool { return isLast(k.c) })
	return errors.Join(fwErr, k.unshape(), unclaimPorts(k.rec))
}

// releaseIfEmpty removes the network's rules and what its links made for
// it when it has no attachment left. While another network of its name
// is on the node, the rules (kept by name) stay: they are its too.
func (d Datapath) releaseIfEmpty(c *conf.Bridge) error {
	if err := firewall.RemoveNetwork(c.Name, func() bool { return d.lastOfName(c) }); err != nil {
		return err
	}
	if networkEmpty(c.StateDir, c.Name) {
		return d.Links.Release(c)
	}
	return nil
}

// sharedWith names the other networks of c's name on the node (see
// nameKeeper): none for links that do not mark their networks.
func (d Datapath) sharedWith(c *conf.Bridge) ([]SharedName, error) {
	nk, ok := d.Links.(nameKeeper)
	if !ok {
		return nil, nil
	}
	return nk.NameSharedWith(c)
}

// lastOfName reports whether c's network has no live attachment left and
// no other network of its name is on the node, so that what is kept by
// the name alone (its rules) can go. Another network's bridge counts
// with no container plugged in yet: its first ADD marks it before it
// adds its rules, and with a state dir of its own its records are not
// seen here. In doubt (the links cannot be listed) the rules stay.
func (d Datapath) lastOfName(c *conf.Bridge) bool {
	if !networkEmpty(c.StateDir, c.Name) {
		return false
	}
	others, err := d.sharedWith(c)
	return err == nil && len(others) == 0
}

// Check verifies that what ADD made is still there: the links (as d's
// links check them), the IPAM reservation and the iptables rules.
func (d Datapath) Check(args *skel.CmdArgs, c *conf.Bridge) error {
	k, err := newCall(args, c)
	if err != nil {
		return err
	}
	if c.RawPrevResult == nil {
		return fmt.Errorf("%w: CHECK needs prevResult", cnierr.ErrInvalidConfig)
	}
	if err := version.ParsePrevResult(&c.NetConf); err != nil {
		return fmt.Errorf("%w: prevResult: %v", cnierr.ErrDecode, err)
	}
	prev, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return fmt.Errorf("%w: prevResult: %v", cnierr.ErrDecode, err)
	}
	lock, err := lockAttachment(c.StateDir, k.rec, "CHECK", lockWait)
	if err != nil {
		return err
	}
	defer lock.unlock()
	saved, err := loadRecord(recordPath(c.StateDir, k.rec))
	if err != nil {
		return err
	}
	if saved == nil {
		return fmt.Errorf("%w: no attachment of container %s (%s) on network %s", cnierr.ErrCheckFailed, args.ContainerID, args.IfName, c.Name)
	}
	k.rec = saved
	netns, err := openNetns(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	if err := d.Links.Check(k.linkRequest(netns, nil), prev); err != nil {
		return err
	}
	bandwidth, err := conf.ParseBandwidth(args.StdinData)
	if err != nil {
		return err
	}
	if err := k.checkShaping(bandwidth); err != nil {
		return err
	}
	if err := k.ipam.check(); err != nil {
		return err
	}
	if err := k.checkFastpath(); err != nil {
		return err
	}
	if err := k.checkGuard(prev); err != nil {
		return err
	}
	return firewall.Check(d.fwNetwork(c), k.fwAttachment())
}

// GC removes every attachment of the network that the runtime no longer
// lists (its veth, port mappings, rules and addresses), then whatever of
// the network is left once it has no attachment (rules a crash left).
func (d Datapath) GC(args *skel.CmdArgs, c *conf.Bridge) error {
	var gcConf types.NetConf
	if err := conf.Decode(args.StdinData, &gcConf); err != nil {
		return err
	}
	valid := map[[2]string]bool{}
	for _, a := range gcConf.ValidAttachments {
		valid[[2]string{a.ContainerID, a.IfName}] = true
	}
	recs, err := records(c.StateDir, c.Name)
	if err != nil {
		return err
	}
	// Another network of this name (an earlier berth let a second config
	// use it): the runtime lists only this config's attachments, and its
	// records may be in the same state dir.
	others, err := d.sharedWith(c)
	if err != nil {
		return err
	}
	theirs := map[string]bool{}
	for _, o := range others {
		theirs[o.Bridge] = true
	}
	var errs []error
	for _, r := range recs {
		if valid[[2]string{r.ContainerID, r.IfName}] || theirs[r.bridge()] {
			continue
		}
		errs = append(errs, d.collect(args, c, r))
	}
	removeStaleLocks(networkDir(c.StateDir, c.Name))
	errs = append(errs, d.sweep(args, c, gcConf.ValidAttachments), d.releaseIfEmpty(c))
	return errors.Join(errs...)
}

// collect tears down r's attachment for GC, unless another call is on it
// now (an ADD the runtime gave up on, a DEL): GC does not wait, and the
// next GC gets the attachment if it is still stale. The record is read
// again under the lock: it may have gone meanwhile.
func (d Datapath) collect(args *skel.CmdArgs, c *conf.Bridge, r *record) error {
	lock, err := tryLockAttachment(c.StateDir, r, "GC")
	if lock == nil || err != nil {
		return err
	}
	defer lock.unlock()
	saved, err := loadAttachment(c.StateDir, r)
	if saved == nil || err != nil {
		return err
	}
	a := *args
	a.ContainerID, a.IfName = saved.ContainerID, saved.IfName
	return d.teardown(&call{args: &a, c: c, rec: saved, ipam: newAddresser(&a, c)})
}

// sweep releases the addresses whose attachment left no record (or was
// never berth's) and removes the eBPF endpoints no record owns. Both
// stores are kept by name: with another network of the name on the
// node, what this GC does not list may be that network's, so they are
// left to a GC once it has gone. The name's lock holds off that
// network's first ADD (it claims the name under it) from the look to the
// sweep, which would free the addresses it takes meanwhile.
func (d Datapath) sweep(args *skel.CmdArgs, c *conf.Bridge, valid []types.GCAttachment) error {
	if nk, ok := d.Links.(nameKeeper); ok {
		unlock, err := nk.LockName(c)
		if err != nil {
			return err
		}
		defer unlock()
	}
	others, err := d.sharedWith(c)
	if err != nil || len(others) > 0 {
		return err
	}
	// An address whose attachment has a record stays: GC left it to the
	// call on it now, or failed to remove it (the next GC repeats). An
	// ADD writes its record before it takes an address, so one that GC
	// did not list (begun since) keeps its address too.
	attached := func(containerID, ifName string) bool {
		return hasRecord(c.StateDir, &record{Network: c.Name, ContainerID: containerID, IfName: ifName})
	}
	return errors.Join(newAddresser(args, c).gc(valid, attached), gcFastpath(c))
}

// Status reports whether the network can take new containers.
func Status(args *skel.CmdArgs, c *conf.Bridge) error {
	if err := statusFastpath(c); err != nil {
		return err
	}
	return newAddresser(args, c).status()
}

// Op is one CNI operation of the datapath, for the plugin mains.
type Op func(*skel.CmdArgs, *conf.Bridge) error

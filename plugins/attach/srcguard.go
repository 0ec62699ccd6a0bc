package attach

import (
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"

	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/srcguard"
)

// The iptables datapath's anti-spoofing per container (internal/srcguard):
// a program first on the host veth's ingress that lets the container send
// only with its own MAC and addresses. The eBPF datapath's from_container
// does the same, so an eBPF attachment gets none. The program goes with
// the veth. On both datapaths the bridge then drops what comes from the
// host veth without the program's mark (srcguard.Require): frames a
// container got past the veth's ingress programs.
//
// The MAC is the one the result of ADD names, which berth set (or the
// mac capability asked for). A plugin chained after berth that changes it
// (tuning's "mac") leaves the guard on the old one: the container's
// traffic is dropped, and CHECK says why.

// guard puts the source guard on the attachment's host veth, hostIndex,
// for its container side's MAC.
func (k *call) guard(hostIndex int, mac net.HardwareAddr) error {
	c := srcguard.Container{MAC: mac, IPv4: k.rec.ContainerIP, IPv6: k.rec.ContainerIP6}
	if err := srcguard.Apply(hostIndex, c, k.c.GuardOnTCX()); err != nil {
		return fmt.Errorf("%w: anti-spoofing on %s: %v", cnierr.ErrDatapath, k.rec.HostVeth, err)
	}
	return k.requireGuard(hostIndex)
}

// requireGuard makes the bridge drop what comes from the host veth
// hostIndex without its guard's mark; after the guard (or
// from_container's closed door) is on, or it would drop everything.
func (k *call) requireGuard(hostIndex int) error {
	if err := srcguard.Require(hostIndex); err != nil {
		return fmt.Errorf("%w: anti-spoofing on %s: %v", cnierr.ErrDatapath, k.rec.HostVeth, err)
	}
	return nil
}

// checkGuard verifies the source guard against prev, the result of ADD,
// as the attachment was made (an earlier berth's, with the guards of its
// generation).
func (k *call) checkGuard(prev *current.Result) error {
	if !k.rec.guarded() {
		return nil
	}
	if k.rec.Guards > guardsThisBuild {
		// After a downgrade: the guards are a later build's, which this
		// one cannot judge, rather than ones it would call tampered with.
		return fmt.Errorf("%w: container %s (%s) was attached by a later berth (guards of generation %d; this build knows %d): its traffic is unaffected; upgrade berth again, or DEL and ADD the container to have this build's guards",
			cnierr.ErrCheckFailed, k.rec.ContainerID, k.rec.IfName, k.rec.Guards, guardsThisBuild)
	}
	host, err := netlinksafe.LinkByName(k.rec.HostVeth)
	if err != nil {
		return fmt.Errorf("%w: host veth %s: %v", cnierr.ErrCheckFailed, k.rec.HostVeth, err)
	}
	if k.rec.Guards >= guardsV3 {
		if err := srcguard.CheckRequired(host.Attrs().Index); err != nil {
			return fmt.Errorf("%w: anti-spoofing on %s: %v; DEL and ADD the container again", cnierr.ErrCheckFailed, k.rec.HostVeth, err)
		}
		if host.Attrs().MasterIndex != 0 {
			if err := checkPortStack(k.rec.HostVeth); err != nil {
				return err
			}
		}
	}
	if k.rec.Guards >= guardsV5 && host.Attrs().MasterIndex != 0 {
		if err := checkNoMulticastRouter(host.Attrs().Index, k.rec.HostVeth); err != nil {
			return err
		}
	}
	if k.rec.BPFFS != "" {
		return nil // from_container: checkFastpath
	}
	c, err := k.guarded(prev)
	if err != nil {
		return fmt.Errorf("%w: %v", cnierr.ErrCheckFailed, err)
	}
	// An earlier release's guard stays until the container is attached
	// again: its classic BPF filter, or its eBPF program (another build
	// of it, whose code and constants this build cannot compare).
	switch k.rec.Guards {
	case guardsV1:
		err = srcguard.CheckClassic(host.Attrs().Index)
	case guardsV2, guardsV3:
		err = srcguard.CheckPresent(host.Attrs().Index)
	default:
		err = srcguard.Check(host.Attrs().Index, c)
	}
	if err != nil {
		return fmt.Errorf("%w: anti-spoofing on %s: %v; DEL and ADD the container again", cnierr.ErrCheckFailed, k.rec.HostVeth, err)
	}
	return nil
}

// guarded is what the container may send: the MAC of its interface in
// res and the addresses of the record.
func (k *call) guarded(res *current.Result) (srcguard.Container, error) {
	c := srcguard.Container{IPv4: k.rec.ContainerIP, IPv6: k.rec.ContainerIP6}
	for _, i := range res.Interfaces {
		if i.Sandbox != "" && i.Name == k.args.IfName {
			c.MAC, _ = net.ParseMAC(i.Mac)
		}
	}
	if len(c.MAC) != 6 {
		return c, fmt.Errorf("anti-spoofing needs the MAC of %s; the result has none", k.args.IfName)
	}
	return c, nil
}

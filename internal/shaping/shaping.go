// Package shaping limits a container's bandwidth with tc on the node's end
// of its veth, for the CNI bandwidth capability (Kubernetes'
// kubernetes.io/ingress-bandwidth and egress-bandwidth annotations):
//
//   - ingress, to the container: a tbf qdisc as the host veth's root; what
//     the node sends into the veth is what the container receives.
//   - egress, from the container: what the container sends arrives on the
//     host veth's ingress, where a qdisc cannot queue. A u32 match-all
//     filter on the veth's clsact ingress redirects it (mirred) to an ifb
//     device, whose root tbf queues and paces it; ifb then hands each
//     packet back to the veth's receive path.
//
// Both are in the node's namespace, out of the container's reach. The
// ifb device is the only link this adds; it is named after the attachment
// and removed on DEL. (This kernel has no police action and no matchall
// classifier, hence ifb and u32; clsact rather than the ingress qdisc so
// that TC BPF programs can share the hook.)
package shaping

import (
	"errors"
	"fmt"
	"math"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/srcguard"
)

// latency is how long a packet may wait in a tbf queue before it is
// dropped: it sizes the queue (rate × latency + burst).
const latencySeconds = 0.025

// Apply shapes the attachment whose host end is hostVeth; ifbName is the
// ifb device to create for egress. On error the caller removes ifbName
// (Remove); the veth's qdiscs go with the veth.
func Apply(hostVeth, ifbName string, b *conf.Bandwidth) error {
	veth, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("finding %s: %w", hostVeth, err)
	}
	if b.IngressRate > 0 {
		if err := netlink.QdiscReplace(tbf(veth.Attrs().Index, b.IngressRate, b.IngressBurst)); err != nil {
			return fmt.Errorf("shaping traffic into %s (tbf): %w", hostVeth, err)
		}
	}
	if b.EgressRate == 0 {
		return nil
	}
	la := netlink.NewLinkAttrs()
	la.Name = ifbName
	la.MTU = veth.Attrs().MTU
	la.TxQLen = 1000
	if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: la}); err != nil {
		return fmt.Errorf("creating ifb %s for traffic out of %s: %w", ifbName, hostVeth, err)
	}
	ifb, err := netlinksafe.LinkByName(ifbName)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(ifb); err != nil {
		return fmt.Errorf("setting %s up: %w", ifbName, err)
	}
	if err := netlink.QdiscReplace(tbf(ifb.Attrs().Index, b.EgressRate, b.EgressBurst)); err != nil {
		return fmt.Errorf("shaping traffic out of %s on %s (tbf): %w", hostVeth, ifbName, err)
	}
	clsact := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(clsact); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding clsact to %s: %w", hostVeth, err)
	}
	if err := netlink.FilterAdd(redirect(veth.Attrs().Index, ifb.Attrs().Index)); err != nil {
		return fmt.Errorf("redirecting traffic out of %s to %s: %w", hostVeth, ifbName, err)
	}
	return nil
}

// Remove deletes the ifb device of an attachment; one that is not there
// is fine.
func Remove(ifbName string) error {
	l, err := netlinksafe.LinkByName(ifbName)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding %s: %w", ifbName, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("deleting %s: %w", ifbName, err)
	}
	return nil
}

// Check verifies that the shaping Apply set up is in place: the rates of
// the tbf qdiscs and the redirect to the ifb device.
func Check(hostVeth, ifbName string, b *conf.Bandwidth) error {
	veth, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("finding %s: %w", hostVeth, err)
	}
	if b.IngressRate > 0 {
		if err := checkTbf(veth, b.IngressRate); err != nil {
			return err
		}
	}
	if b.EgressRate == 0 {
		return nil
	}
	ifb, err := netlinksafe.LinkByName(ifbName)
	if err != nil {
		return fmt.Errorf("egress shaping of %s: ifb %s: %w", hostVeth, ifbName, err)
	}
	if err := checkTbf(ifb, b.EgressRate); err != nil {
		return err
	}
	filters, err := netlink.FilterList(veth, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return fmt.Errorf("listing the ingress filters of %s: %w", hostVeth, err)
	}
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok {
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == ifb.Attrs().Index {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("egress shaping of %s: no redirect to %s on its ingress", hostVeth, ifbName)
}

func checkTbf(l netlink.Link, rateBits uint64) error {
	qdiscs, err := netlink.QdiscList(l)
	if err != nil {
		return fmt.Errorf("listing the qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qdiscs {
		if t, ok := q.(*netlink.Tbf); ok && t.Parent == netlink.HANDLE_ROOT {
			if t.Rate != rateBits/8 {
				return fmt.Errorf("%s shapes to %d bits/s, not %d", l.Attrs().Name, t.Rate*8, rateBits)
			}
			return nil
		}
	}
	return fmt.Errorf("%s has no tbf qdisc shaping it to %d bits/s", l.Attrs().Name, rateBits)
}

// tbf is a token bucket at rate with burst (both in bits), queueing up to
// latencySeconds of traffic.
func tbf(linkIndex int, rateBits, burstBits uint64) *netlink.Tbf {
	rate, burst := rateBits/8, burstBits/8
	limit := min(float64(rate)*latencySeconds+float64(burst), math.MaxUint32)
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: linkIndex, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate,
		Limit:      uint32(limit),
		// The bucket, as the time it takes to send burst at rate, in
		// the kernel's ticks.
		Buffer: netlink.Xmittime(rate, uint32(min(burst, math.MaxUint32))),
	}
}

// redirectPriority puts the redirect after the source guard, which drops
// what the container may not send before it is queued and paced: the
// guard is the filter at srcguard.Priority, or on TCX, before every
// filter. (What the ifb hands back skips the veth's hooks: a guard
// behind the redirect would never see it.)
const redirectPriority = srcguard.Priority + 1

// redirect sends every packet arriving on linkIndex to ifbIndex's egress.
func redirect(linkIndex, ifbIndex int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: linkIndex, Parent: netlink.HANDLE_MIN_INGRESS, Priority: redirectPriority, Protocol: unix.ETH_P_ALL},
		// One key matching any packet: mask 0 at offset 0.
		Sel: &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Nkeys: 1, Keys: []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}}},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      ifbIndex,
		}},
	}
}

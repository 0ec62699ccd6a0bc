// Package bpfattach puts eBPF programs on a device's ingress and finds
// them there again: on TCX (through BPF_PROG_ATTACH, which holds the
// program in the kernel without a pin or a process) and as tc filters
// (cls_bpf in direct action on a clsact qdisc). The eBPF datapath
// (internal/fastpath) and the source guard (internal/srcguard) share it.
//
// The two places cost differently. The kernel gives a device each TCX
// program by swapping the device's program list and waiting for a full
// RCU grace period under RTNL (tcx_entry_sync): about 10 ms on a 2-vCPU
// VM, during which every other netlink writer on the node waits. A
// device's first tc filter waits for an expedited grace period instead:
// 0.1-0.7 ms for qdisc and filter there. But a clsact qdisc takes the
// device's only ingress qdisc slot, which a reference bandwidth plugin
// chained after berth needs for its own `ingress` qdisc.
package bpfattach

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNoTCX is returned by TCXPrograms on a kernel without TCX (before
// Linux 6.6).
var ErrNoTCX = errors.New("the kernel has no TCX (Linux 6.6 or later)")

// TCXPrograms lists the programs on ifindex's TCX ingress, in the order
// they run; a missing device has none.
func TCXPrograms(ifindex int) ([]ebpf.ProgramID, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	switch {
	case errors.Is(err, unix.ENODEV):
		return nil, nil
	case errors.Is(err, unix.EINVAL):
		// An attach type the kernel does not know.
		return nil, fmt.Errorf("listing the TCX programs of interface %d: %w", ifindex, ErrNoTCX)
	case err != nil:
		return nil, fmt.Errorf("listing the TCX programs of interface %d: %w", ifindex, err)
	}
	ids := make([]ebpf.ProgramID, 0, len(res.Programs))
	for _, ap := range res.Programs {
		ids = append(ids, ap.ID)
	}
	return ids, nil
}

// TCXPlace says where AttachTCX puts a program.
type TCXPlace struct {
	Replace ebpf.ProgramID // this program, in its place; 0: none
	First   bool           // else before every program there; else after them
}

// AttachTCX puts prog on ifindex's TCX ingress, at place.
func AttachTCX(ifindex int, prog *ebpf.Program, place TCXPlace) error {
	opts := link.RawAttachProgramOptions{Target: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress}
	switch {
	case place.Replace != 0:
		// By file descriptor: the kernel takes the program to replace
		// only as one (tcx_prog_attach: bpf_prog_get_type of
		// replace_bpf_fd), and link.ReplaceProgramByID passes the ID
		// there, which fails with EBADF.
		old, err := ebpf.NewProgramFromID(place.Replace)
		if err != nil {
			return fmt.Errorf("opening program %d to replace on interface %d: %w", place.Replace, ifindex, err)
		}
		defer old.Close()
		opts.Anchor = link.ReplaceProgram(old)
	case place.First:
		opts.Anchor = link.Head()
	}
	if err := link.RawAttachProgram(opts); err != nil {
		return fmt.Errorf("attaching a program to interface %d (TCX ingress): %w", ifindex, err)
	}
	return nil
}

// DetachTCX removes program id from ifindex's TCX ingress; a program or
// device gone meanwhile is fine.
func DetachTCX(ifindex int, id ebpf.ProgramID) error {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil
	}
	defer p.Close()
	err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: ifindex, Program: p, Attach: ebpf.AttachTCXIngress})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}

// Filter is a tc filter's place on a device's ingress; Attach replaces
// the one there.
type Filter struct {
	Priority uint16 // the filter's priority, and its handle
	Name     string // as tc shows it
}

// AttachFilter puts prog on ifindex's tc ingress as f, in direct action
// (adding the device's clsact qdisc), in place of the filter there.
func AttachFilter(ifindex int, prog *ebpf.Program, f Filter) error {
	clsact := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(clsact); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding a clsact qdisc to interface %d for %s: %w", ifindex, f.Name, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: uint32(f.Priority), Priority: f.Priority, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: f.Name, DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("attaching %s to interface %d (tc ingress, priority %d): %w", f.Name, ifindex, f.Priority, err)
	}
	return nil
}

// FilterPrograms lists the programs of ifindex's tc ingress filters that
// act on their verdicts; a missing device has none.
func FilterPrograms(ifindex int) ([]ebpf.ProgramID, error) {
	fs, err := netlinksafe.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS)
	if errors.Is(err, unix.ENODEV) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing the tc filters of interface %d: %w", ifindex, err)
	}
	var ids []ebpf.ProgramID
	for _, f := range fs {
		// Without direct action, tc ignores the program's verdict: a
		// drop (anti-spoofing) or a redirect becomes "pass".
		if b, ok := f.(*netlink.BpfFilter); ok && b.DirectAction && b.Id != 0 {
			ids = append(ids, ebpf.ProgramID(b.Id))
		}
	}
	return ids, nil
}

// Named keeps the programs of ids named name.
func Named(ids []ebpf.ProgramID, name string) ([]ebpf.ProgramID, error) {
	return Where(ids, func(info *ebpf.ProgramInfo) bool { return info.Name == name })
}

// Where keeps the programs of ids whose info passes keep; those gone
// meanwhile are left out. Opening a program by ID takes CAP_SYS_ADMIN:
// without it every program would look like someone else's, so that is
// an error.
func Where(ids []ebpf.ProgramID, keep func(*ebpf.ProgramInfo) bool) ([]ebpf.ProgramID, error) {
	var out []ebpf.ProgramID
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("reading the eBPF programs attached to a link needs the capability SYS_ADMIN (in a pod: securityContext.capabilities.add): %w", err)
		}
		if err != nil {
			continue
		}
		info, err := p.Info()
		p.Close()
		if err == nil && keep(info) {
			out = append(out, id)
		}
	}
	return out, nil
}

// ID is p's program ID.
func ID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

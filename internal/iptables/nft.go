package iptables

import (
	"bytes"
	byteorder "encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthnet/berth/internal/cnierr"
)

// The nf_tables backend's everyday changes, written without
// iptables-restore.
//
// A CNI ADD with port mappings on a network that exists changes one
// thing per family: the container's DNAT chain and the jump to it; its
// DEL removes them. Each iptables-restore is an exec of about 8 ms here,
// most of what an ADD costs besides the plugin's own start, and a
// dual-stack ADD paid two. So on nf_tables, batches made only of what
// planDirect encodes go to the kernel through nf_tables' netlink API, as
// one transaction:
//   - chains of berth's created, flushed or removed;
//   - rules appended or inserted at the top: jumps, ACCEPT and RETURN,
//     and port-mapping DNAT rules, as the very expressions iptables-nft
//     writes for them (TestDirectWriteIsIptables compares the two), so
//     that iptables-save prints them, iptables -D finds them and CHECK
//     compares them as if iptables-restore had written them;
//   - jumps deleted ("-D chain -j target"): nf_tables deletes a rule by
//     handle, which commit asks the kernel for.
//
// Everything else (another match, a deletion by a longer spec, a table
// that does not exist yet), and a transaction the kernel refuses, goes
// through iptables-restore, as before.

// minDirectVersion is the oldest iptables-nft known to read what
// directWrite writes: the one whose encoding the tests compare with.
// Older ones match ports with the xt "tcp" extension, and may not read
// the native port match back.
var minDirectVersion = [3]int{1, 8, 9}

// directWrite is one family's batches as one nf_tables transaction.
type directWrite struct {
	family uint8 // NFPROTO_IPV4 or NFPROTO_IPV6
	steps  []step
}

// step is one message of the transaction, or the deletion of a jump,
// whose rule handle commit asks the kernel for (nf_tables deletes a rule
// by handle; iptables -D finds it by its spec).
type step struct {
	msg    []byte
	unjump *unjump
}

// unjump deletes the first rule of chain that does nothing but jump to
// target ("-D chain -j target").
type unjump struct{ table, chain, target string }

// nf_tables' netlink constants (linux/netfilter/nf_tables.h) that
// x/sys/unix lacks.
const (
	nftRegVerdict = 0
	nftReg1       = 1
	nftMetaL4     = 16 // NFT_META_L4PROTO
	nftBaseNet    = 1  // NFT_PAYLOAD_NETWORK_HEADER
	nftBaseTrans  = 2  // NFT_PAYLOAD_TRANSPORT_HEADER
	nftJump       = -3 // NFT_JUMP
	nftReturn     = -5 // NFT_RETURN
	nfAccept      = 1

	natRangeMapIPs        = 1 << 0 // NF_NAT_RANGE_MAP_IPS
	natRangeProtoSpecific = 1 << 1 // NF_NAT_RANGE_PROTO_SPECIFIED
)

// planDirect encodes the batches for family f, whose tables are known
// as ts, into one transaction; false when any change is one it does not
// encode, or a table they change does not exist yet (iptables-restore
// creates a table with its builtin chains, which this does not).
func planDirect(f Family, ts Tables, batches []*Batch) (*directWrite, bool) {
	w := &directWrite{family: unix.NFPROTO_IPV4}
	if f == IPv6 {
		w.family = unix.NFPROTO_IPV6
	}
	for _, b := range batches {
		if b.Empty() {
			continue
		}
		t, ok := ts[b.table]
		if !ok {
			return nil, false
		}
		made, removed := map[string]bool{}, map[string]bool{}
		for _, line := range b.lines {
			if chain, ok := strings.CutPrefix(line, "-X "); ok {
				removed[chain] = true
			}
		}
		for _, line := range b.lines {
			op, rest, _ := strings.Cut(line, " ")
			chain, spec, _ := strings.Cut(rest, " ")
			flags := uint16(unix.NLM_F_CREATE)
			switch {
			case op == "-D" && removed[chain]:
				continue // the chain is flushed before it goes
			case op == "-D":
				target, ok := strings.CutPrefix(spec, "-j ")
				if !ok || !strings.HasPrefix(target, Prefix) || strings.Contains(target, " ") || !t.HasChain(chain) {
					return nil, false
				}
				w.steps = append(w.steps, step{unjump: &unjump{b.table, chain, target}})
				continue
			case op == "-X":
				if !strings.HasPrefix(chain, Prefix) || !t.HasChain(chain) && !made[chain] {
					return nil, false
				}
				w.add(unix.NFT_MSG_DELRULE, 0, attr(unix.NFTA_RULE_TABLE, cstr(b.table)), attr(unix.NFTA_RULE_CHAIN, cstr(chain)))
				w.add(unix.NFT_MSG_DELCHAIN, 0, attr(unix.NFTA_CHAIN_TABLE, cstr(b.table)), attr(unix.NFTA_CHAIN_NAME, cstr(chain)))
				continue
			case strings.HasPrefix(op, ":"): // create or flush
				name := op[1:]
				if !strings.HasPrefix(name, Prefix) {
					return nil, false // a builtin chain: iptables-restore knows its hook
				}
				w.add(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE,
					attr(unix.NFTA_CHAIN_TABLE, cstr(b.table)), attr(unix.NFTA_CHAIN_NAME, cstr(name)))
				w.add(unix.NFT_MSG_DELRULE, 0,
					attr(unix.NFTA_RULE_TABLE, cstr(b.table)), attr(unix.NFTA_RULE_CHAIN, cstr(name)))
				made[name] = true
				continue
			case op == "-A":
				flags |= unix.NLM_F_APPEND
			case op == "-I": // "-I CHAIN 1 spec": at the top, where a rule without a position goes
				pos, s, _ := strings.Cut(spec, " ")
				if pos != "1" {
					return nil, false
				}
				spec = s
			default:
				return nil, false
			}
			if !made[chain] && !t.HasChain(chain) {
				return nil, false
			}
			exprs, proto, ok := encodeRule(f, spec)
			if !ok {
				return nil, false
			}
			attrs := [][]byte{attr(unix.NFTA_RULE_TABLE, cstr(b.table)), attr(unix.NFTA_RULE_CHAIN, cstr(chain)),
				nested(unix.NFTA_RULE_EXPRESSIONS, exprs...)}
			if proto != 0 {
				// As iptables-nft: xtables extensions check the rule's
				// protocol here.
				attrs = append(attrs, nested(unix.NFTA_RULE_COMPAT,
					attr(unix.NFTA_RULE_COMPAT_PROTO, be32(uint32(proto))), attr(unix.NFTA_RULE_COMPAT_FLAGS, be32(0))))
			}
			w.add(unix.NFT_MSG_NEWRULE, flags, attrs...)
		}
	}
	return w, len(w.steps) > 0 && len(w.steps) <= maxDirectSteps
}

// encodeRule turns a rule spec of the forms berth writes on the everyday
// path into iptables-nft's expressions, in iptables-nft's order
// (protocol, destination, port, counter, verdict):
//
//	-j BERTH-X | -j ACCEPT | -j RETURN
//	(not DROP: iptables refuses it in the nat table, and berth's DROPs
//	are written with the network's chains)
//	[-d ADDR/32|/128 ]-p tcp|udp -m tcp|udp --dport N -j DNAT --to-destination ADDR:PORT
//
// It also returns the protocol -p names (0: none).
func encodeRule(f Family, spec string) (exprs [][]byte, proto uint8, ok bool) {
	var (
		dst          netip.Addr
		dport        uint16
		target, to   string
		match, pname string
	)
	fields := strings.Fields(spec)
	for i := 0; i < len(fields); i++ {
		if i+1 >= len(fields) {
			return nil, 0, false
		}
		v := fields[i+1]
		switch fields[i] {
		case "-d":
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.IsSingleIP() || p.Addr().Is4() != (f == IPv4) {
				return nil, 0, false
			}
			dst = p.Addr()
		case "-p":
			pname = v
		case "-m":
			match = v
		case "--dport":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return nil, 0, false
			}
			dport = uint16(n)
		case "-j":
			target = v
		case "--to-destination":
			to = v
		default:
			return nil, 0, false
		}
		i++
	}
	switch pname {
	case "":
	case "tcp":
		proto = unix.IPPROTO_TCP
	case "udp":
		proto = unix.IPPROTO_UDP
	default:
		return nil, 0, false
	}
	// A port needs its protocol's match; a match without a port is not
	// a form berth writes.
	if (dport != 0) != (match != "") || match != "" && match != pname {
		return nil, 0, false
	}
	if proto != 0 {
		exprs = append(exprs, expr("meta", attr(unix.NFTA_META_DREG, be32(nftReg1)), attr(unix.NFTA_META_KEY, be32(nftMetaL4))),
			cmpEq([]byte{proto}))
	}
	if dst.IsValid() {
		offset := uint32(16) // struct iphdr's daddr
		if f == IPv6 {
			offset = 24 // struct ipv6hdr's daddr
		}
		exprs = append(exprs, payload(nftBaseNet, offset, uint32(dst.BitLen()/8)), cmpEq(dst.AsSlice()))
	}
	if dport != 0 {
		exprs = append(exprs, payload(nftBaseTrans, 2, 2), cmpEq(byteorder.BigEndian.AppendUint16(nil, dport)))
	}
	// iptables-nft counts every rule; the counter goes before the
	// verdict, which ends the rule's evaluation.
	exprs = append(exprs, expr("counter", attr(unix.NFTA_COUNTER_BYTES, be64(0)), attr(unix.NFTA_COUNTER_PACKETS, be64(0))))
	switch {
	case target == "DNAT":
		info, ok := natRange(f, to, dport != 0)
		if !ok {
			return nil, 0, false
		}
		exprs = append(exprs, expr("target", attr(unix.NFTA_TARGET_NAME, cstr("DNAT")),
			attr(unix.NFTA_TARGET_REV, be32(2)), attr(unix.NFTA_TARGET_INFO, info)))
	case to != "":
		return nil, 0, false
	case target == "ACCEPT":
		exprs = append(exprs, verdict(nfAccept, ""))
	case target == "RETURN":
		exprs = append(exprs, verdict(nftReturn, ""))
	case strings.HasPrefix(target, Prefix):
		exprs = append(exprs, verdict(nftJump, target))
	default:
		return nil, 0, false
	}
	return exprs, proto, true
}

// natRange is DNAT's --to-destination ADDR:PORT as the xt target's
// struct nf_nat_range2 (revision 2), padded to XT_ALIGN as iptables
// sends it. Only a single address and port: what berth's port mappings
// write.
func natRange(f Family, to string, hasPort bool) ([]byte, bool) {
	ap, err := netip.ParseAddrPort(to)
	if err != nil || !hasPort || ap.Port() == 0 || ap.Addr().Is4() != (f == IPv4) || ap.Addr().Zone() != "" {
		return nil, false
	}
	b := make([]byte, 48) // flags, min_addr, max_addr (16 bytes each), min/max/base proto (2 each), padding
	byteorder.NativeEndian.PutUint32(b, natRangeMapIPs|natRangeProtoSpecific)
	a := ap.Addr().AsSlice()
	copy(b[4:], a)
	copy(b[20:], a)
	byteorder.BigEndian.PutUint16(b[36:], ap.Port())
	byteorder.BigEndian.PutUint16(b[38:], ap.Port())
	return b, true
}

func expr(name string, data ...[]byte) []byte {
	return nested(unix.NFTA_LIST_ELEM, attr(unix.NFTA_EXPR_NAME, cstr(name)), nested(unix.NFTA_EXPR_DATA, data...))
}

func cmpEq(value []byte) []byte {
	return expr("cmp", attr(unix.NFTA_CMP_SREG, be32(nftReg1)), attr(unix.NFTA_CMP_OP, be32(unix.NFT_CMP_EQ)),
		nested(unix.NFTA_CMP_DATA, attr(unix.NFTA_DATA_VALUE, value)))
}

func payload(base, offset, length uint32) []byte {
	return expr("payload", attr(unix.NFTA_PAYLOAD_DREG, be32(nftReg1)), attr(unix.NFTA_PAYLOAD_BASE, be32(base)),
		attr(unix.NFTA_PAYLOAD_OFFSET, be32(offset)), attr(unix.NFTA_PAYLOAD_LEN, be32(length)))
}

func verdict(code int32, chain string) []byte {
	v := [][]byte{attr(unix.NFTA_VERDICT_CODE, be32(uint32(code)))}
	if chain != "" {
		v = append(v, attr(unix.NFTA_VERDICT_CHAIN, cstr(chain)))
	}
	return expr("immediate", attr(unix.NFTA_IMMEDIATE_DREG, be32(nftRegVerdict)),
		nested(unix.NFTA_IMMEDIATE_DATA, nested(unix.NFTA_DATA_VERDICT, v...)))
}

// attr is one netlink attribute, padded to 4 bytes.
func attr(typ uint16, data []byte) []byte {
	b := make([]byte, unix.NLA_HDRLEN, unix.NLA_HDRLEN+len(data)+3)
	byteorder.NativeEndian.PutUint16(b, uint16(unix.NLA_HDRLEN+len(data)))
	byteorder.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	return append(b, make([]byte, (4-len(b)%4)%4)...)
}

func nested(typ uint16, attrs ...[]byte) []byte {
	return attr(typ|unix.NLA_F_NESTED, concat(attrs))
}

func concat(parts [][]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func cstr(s string) []byte { return append([]byte(s), 0) }
func be32(v uint32) []byte { return byteorder.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return byteorder.BigEndian.AppendUint64(nil, v) }

// add appends an nf_tables message (nlmsghdr, nfgenmsg, attributes) that
// the kernel acknowledges.
func (w *directWrite) add(typ int, flags uint16, attrs ...[]byte) {
	w.steps = append(w.steps, step{msg: w.message(typ, flags, attrs...)})
}

func (w *directWrite) message(typ int, flags uint16, attrs ...[]byte) []byte {
	return nfMessage(uint16(unix.NFNL_SUBSYS_NFTABLES<<8|typ), flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK, w.family, 0, concat(attrs))
}

// messages are the transaction's messages, with the handles of the
// jumps to delete looked up in the kernel. A jump that is not there
// (somebody else deleted it) fails the write as a refusal: iptables-
// restore then tries, and says what it finds.
func (w *directWrite) messages() ([][]byte, error) {
	var msgs [][]byte
	for _, s := range w.steps {
		if s.unjump == nil {
			msgs = append(msgs, s.msg)
			continue
		}
		u := s.unjump
		rules, err := listRules(w.family, u.table, u.chain)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(rules, func(r rule) bool { return r.onlyJumpsTo(u.target) })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s %s has no rule -j %s", errNotApplied, u.table, u.chain, u.target)
		}
		msgs = append(msgs, w.message(unix.NFT_MSG_DELRULE, 0, attr(unix.NFTA_RULE_TABLE, cstr(u.table)),
			attr(unix.NFTA_RULE_CHAIN, cstr(u.chain)), attr(unix.NFTA_RULE_HANDLE, be64(rules[i].handle))))
	}
	return msgs, nil
}

func nfMessage(typ, flags uint16, family uint8, resID uint16, data []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(data))
	byteorder.NativeEndian.PutUint32(b, uint32(cap(b)))
	byteorder.NativeEndian.PutUint16(b[4:], typ)
	byteorder.NativeEndian.PutUint16(b[6:], flags)
	b[unix.NLMSG_HDRLEN] = family // nfgenmsg: family, version 0, resource id
	byteorder.BigEndian.PutUint16(b[unix.NLMSG_HDRLEN+2:], resID)
	return append(b, data...)
}

// errNotApplied is a transaction the kernel did not apply: it refused
// it as a whole, or it was never sent. iptables-restore may still make
// the change.
var errNotApplied = errors.New("nf_tables did not apply the transaction")

// maxDirectSteps bounds a transaction written directly, so that it and
// the kernel's answers fit a netlink socket's default buffers (208 KiB;
// a rule is a few hundred bytes, an answer takes about 1 KiB of the
// receive buffer): a container publishing a port range (podman -p
// 10000-10999:..., one mapping per port) goes through iptables-restore.
// Beyond the buffers the send fails (EMSGSIZE), or, worse, the kernel
// applies the transaction and its answers are lost (ENOBUFS).
const maxDirectSteps = 128

// commit sends the write as one transaction (between a batch's begin and
// end messages) in the calling thread's namespace, and waits for the
// kernel's answer to every message.
func (w *directWrite) commit() error {
	msgs, err := w.messages()
	if err != nil {
		return fmt.Errorf("%w: %w", errNotApplied, err)
	}
	var out []byte
	out = append(out, nfMessage(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)...)
	for i, m := range msgs {
		byteorder.NativeEndian.PutUint32(m[8:], uint32(i+1)) // sequence numbers, to match the answers
		out = append(out, m...)
	}
	out = append(out, nfMessage(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)...)
	// One answer per message, an acknowledgement or an error; the first
	// error means the kernel applied nothing.
	answered := 0
	sent, err := query(out, func(m syscall.NetlinkMessage) (bool, error) {
		if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
			return false, nil
		}
		answered++
		if errno := -int32(byteorder.NativeEndian.Uint32(m.Data)); errno != 0 {
			return true, fmt.Errorf("%w: message %d: %w", errNotApplied, m.Header.Seq, syscall.Errno(errno))
		}
		return answered == len(msgs), nil
	})
	switch {
	case err == nil || errors.Is(err, errNotApplied):
		return err
	case !sent:
		return fmt.Errorf("%w: nf_tables: sending the transaction: %w", errNotApplied, err)
	default: // without an answer the outcome is unknown
		return fmt.Errorf("%w: nf_tables: waiting for the answer: %w", cnierr.ErrDatapath, err)
	}
}

// query sends req on a netfilter socket of its own, in the calling
// thread's namespace, and hands the answers to each, one message at a
// time, until each says it is done or fails. sent says whether the
// kernel took req.
func query(req []byte, each func(syscall.NetlinkMessage) (done bool, err error)) (sent bool, err error) {
	fd, err := nfSocket()
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, err
	}
	buf := make([]byte, 1<<16)
	for {
		n, err := recv(fd, buf)
		if err != nil {
			return true, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return true, err
		}
		for _, m := range msgs {
			if done, err := each(m); done || err != nil {
				return true, err
			}
		}
	}
}

// nfSocket opens a netfilter netlink socket in the calling thread's
// namespace. Reads from it give up after 5 s: an answer that does not
// come is an error, not a CNI call that hangs.
func nfSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("nf_tables socket: %w", err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("nf_tables socket: %w", err)
	}
	return fd, nil
}

// recv reads the next answers from fd. The read timeout makes it a
// system call the kernel does not restart after a signal: EINTR is
// retried here.
func recv(fd int, buf []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// rule is a rule as the kernel lists it.
type rule struct {
	handle uint64
	exprs  []byte // NFTA_RULE_EXPRESSIONS
}

// onlyJumpsTo reports whether r does nothing but jump to target (with
// the counter iptables-nft gives every rule).
func (r rule) onlyJumpsTo(target string) bool {
	jumps := false
	for _, e := range attrs(r.exprs) { // NFTA_LIST_ELEM
		name, data := "", []byte(nil)
		for _, a := range attrs(e.data) {
			switch a.typ {
			case unix.NFTA_EXPR_NAME:
				name = strings.TrimRight(string(a.data), "\x00")
			case unix.NFTA_EXPR_DATA:
				data = a.data
			}
		}
		switch {
		case name == "counter":
		case name == "immediate" && !jumps:
			jumps = verdictJumpsTo(data, target)
			if !jumps {
				return false
			}
		default:
			return false
		}
	}
	return jumps
}

// verdictJumpsTo reports whether an immediate expression's data is the
// verdict "jump target".
func verdictJumpsTo(immediate []byte, target string) bool {
	for _, a := range attrs(immediate) {
		if a.typ != unix.NFTA_IMMEDIATE_DATA {
			continue
		}
		for _, d := range attrs(a.data) {
			if d.typ != unix.NFTA_DATA_VERDICT {
				continue
			}
			var code int32
			chain := ""
			for _, v := range attrs(d.data) {
				switch {
				case v.typ == unix.NFTA_VERDICT_CODE && len(v.data) == 4:
					code = int32(byteorder.BigEndian.Uint32(v.data))
				case v.typ == unix.NFTA_VERDICT_CHAIN:
					chain = strings.TrimRight(string(v.data), "\x00")
				}
			}
			return code == nftJump && chain == target
		}
	}
	return false
}

type nlattr struct {
	typ  uint16 // without NLA_F_NESTED
	data []byte
}

// attrs splits netlink attributes.
func attrs(b []byte) []nlattr {
	var out []nlattr
	for len(b) >= unix.NLA_HDRLEN {
		l := int(byteorder.NativeEndian.Uint16(b))
		if l < unix.NLA_HDRLEN || l > len(b) {
			break
		}
		out = append(out, nlattr{byteorder.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), b[unix.NLA_HDRLEN:l]})
		b = b[min((l+3)&^3, len(b)):]
	}
	return out
}

// listRules lists the rules of a chain, in order, in the calling
// thread's namespace.
func listRules(family uint8, table, chain string) ([]rule, error) {
	req := nfMessage(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family, 0,
		concat([][]byte{attr(unix.NFTA_RULE_TABLE, cstr(table)), attr(unix.NFTA_RULE_CHAIN, cstr(chain))}))
	var rules []rule
	_, err := query(req, func(m syscall.NetlinkMessage) (bool, error) {
		switch m.Header.Type {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			return true, syscall.Errno(-int32(byteorder.NativeEndian.Uint32(m.Data)))
		}
		if len(m.Data) < 4 {
			return false, nil
		}
		var r rule
		for _, a := range attrs(m.Data[4:]) { // after nfgenmsg
			switch {
			case a.typ == unix.NFTA_RULE_HANDLE && len(a.data) == 8:
				r.handle = byteorder.BigEndian.Uint64(a.data)
			case a.typ == unix.NFTA_RULE_EXPRESSIONS:
				r.exprs = bytes.Clone(a.data)
			}
		}
		rules = append(rules, r)
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("nf_tables: listing %s %s: %w", table, chain, err)
	}
	return rules, nil
}

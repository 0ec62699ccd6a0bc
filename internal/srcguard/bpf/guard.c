// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// berth's source guard (internal/srcguard): on the ingress of a
// container's host veth on the iptables datapath, it drops every frame the
// container sends with another MAC or address than its own. One copy of
// the program per container, its addresses in the constants below (set
// when the plugin loads it, before the verifier sees it).
//
// Its two verdicts mean the same on TCX and to a tc filter in direct
// action (berth.h), so the one program serves both: "next" hands an
// allowed frame, marked (PASSED_MARK), on to the device's later programs
// and tc filters (a shaping redirect to an ifb device), which must only
// see what the guard let through.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "berth.h" // TCX_NEXT, TCX_DROP, PASSED_MARK, struct arp4

// What the container may send as; set by the loader (srcguard.go).
volatile const __u8 own_mac[ETH_ALEN];
volatile const __u8 has_ipv4; // 0: no IPv4 (and no ARP) at all
volatile const __be32 own_ipv4;
volatile const __u8 has_ipv6; // 0: only link-local and :: sources
volatile const __u8 own_ipv6[16];

// ICMPv6 types the guard looks into (RFC 4861, 2710, 3810).
#define ICMP6_RS 133
#define ICMP6_RA 134
#define ICMP6_NS 135
#define ICMP6_NA 136
#define ICMP6_REDIRECT 137
#define MLD_QUERY 130
#define MLD_REPORT 131
#define MLD_DONE 132
#define MLD2_REPORT 143

// Neighbour discovery's link-layer address options (RFC 4861 4.6.1):
// source (in solicitations) and target (in advertisements).
#define ND_OPT_SLLA 1
#define ND_OPT_TLLA 2
// A container's solicitations and advertisements carry one option (its
// link-layer address, or a nonce in duplicate address detection); one
// with more than this many is dropped. Each more costs the verifier time
// at every ADD.
#define ND_MAX_OPTS 4

#define IP6_OFF ETH_HLEN
#define IP6_PAYLOAD (ETH_HLEN + sizeof(struct ipv6hdr))
#define IP6_OFFSET_MASK 0xfff8 // a fragment header's offset, in 8-byte units

static __always_inline int is_own_mac(const __u8 *mac)
{
	for (int i = 0; i < ETH_ALEN; i++)
		if (mac[i] != own_mac[i])
			return 0;
	return 1;
}

// own6 reports whether a is the container's IPv6 address or a link-local
// one (fe80::/10: the container picks its own, by its addr_gen_mode).
static __always_inline int own6(const __u8 *a)
{
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return 1;
	if (!has_ipv6)
		return 0;
	for (int i = 0; i < 16; i++)
		if (a[i] != own_ipv6[i])
			return 0;
	return 1;
}

static __always_inline int unspecified6(const __u8 *a)
{
	for (int i = 0; i < 16; i++)
		if (a[i])
			return 0;
	return 1;
}

static __always_inline int from_ipv4(struct __sk_buff *skb)
{
	struct iphdr ip;
	if (!has_ipv4 || bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return TCX_DROP;
	return ip.saddr == own_ipv4 ? TCX_NEXT : TCX_DROP;
}

// from_arp lets through only the layout the kernel reads (Ethernet,
// IPv4, 6- and 4-byte addresses) with the container as its sender, or
// 0.0.0.0 for a probe (RFC 5227).
static __always_inline int from_arp(struct __sk_buff *skb)
{
	struct arp4 a;
	if (!has_ipv4 || bpf_skb_load_bytes(skb, ETH_HLEN, &a, sizeof(a)) < 0)
		return TCX_DROP;
	if (a.htype != bpf_htons(1) || a.ptype != bpf_htons(ETH_P_IP) || a.hlen != ETH_ALEN || a.plen != 4 ||
	    !is_own_mac(a.sha))
		return TCX_DROP;
	__be32 spa;
	__builtin_memcpy(&spa, a.spa, 4);
	return spa == own_ipv4 || spa == 0 ? TCX_NEXT : TCX_DROP;
}

// nd_fixed is the length of the part before the options of the
// neighbour discovery message of type t that a container may send, 0 for
// another type.
static __always_inline __u32 nd_fixed(__u8 t)
{
	switch (t) {
	case ICMP6_RS:
		return 8;
	case ICMP6_NS:
	case ICMP6_NA:
		return 24; // the same 8 bytes, then the target address
	}
	return 0;
}

// nd_options_own reports whether the options of a neighbour discovery
// message, from off to end, are well formed and every link-layer address
// among them is the container's own MAC: its receivers write that address,
// not the frame's source, into their neighbour entries. The kernel drops
// a message whose options are malformed or whose link-layer address is
// not 6 bytes; so does the guard.
static __always_inline int nd_options_own(struct __sk_buff *skb, __u32 off, __u32 end)
{
	for (int i = 0; i < ND_MAX_OPTS && off < end; i++) {
		struct {
			__u8 type, len; // len in units of 8 bytes, the header's 2 included
			__u8 mac[ETH_ALEN];
		} o;
		if (bpf_skb_load_bytes(skb, off, &o, sizeof(o)) < 0)
			return 0;
		if ((o.type == ND_OPT_SLLA || o.type == ND_OPT_TLLA) && (o.len != 1 || !is_own_mac(o.mac)))
			return 0;
		off += o.len * 8;
	}
	// Malformed options end elsewhere: one of length 0 never moves off
	// (the walk ends at its bound), one too long moves it past end.
	return off == end;
}

// icmp6_allowed reports whether the container may send the ICMPv6
// message right behind the IPv6 header, whose payload ends at end (its
// source is judged apart).
static __always_inline int icmp6_allowed(struct __sk_buff *skb, __u32 end)
{
	// A neighbour advertisement names the address it claims (its
	// target): the IPv6 counterpart of an ARP reply's sender.
	struct {
		__u8 type, code;
		__be16 checksum;
		__be32 flags;
		__u8 target[16];
	} m;
	if (bpf_skb_load_bytes(skb, IP6_PAYLOAD, &m, 1) < 0)
		return 0;
	// A container is no router: its router advertisements and
	// redirects would give its neighbours (accept_ra=1, the kernel's
	// default) a default route or a next hop through it.
	if (m.type == ICMP6_RA || m.type == ICMP6_REDIRECT)
		return 0;
	if (m.type == ICMP6_NA && (bpf_skb_load_bytes(skb, IP6_PAYLOAD, &m, sizeof(m)) < 0 || !own6(m.target)))
		return 0;
	__u32 fixed = nd_fixed(m.type);
	return !fixed || nd_options_own(skb, IP6_PAYLOAD + fixed, end);
}

static __always_inline int from_ipv6(struct __sk_buff *skb)
{
	struct ipv6hdr ip;
	if (bpf_skb_load_bytes(skb, IP6_OFF, &ip, sizeof(ip)) < 0)
		return TCX_DROP;
	switch (ip.nexthdr) {
	case IPPROTO_ICMPV6:
		if (!icmp6_allowed(skb, IP6_PAYLOAD + bpf_ntohs(ip.payload_len)))
			return TCX_DROP;
		break;
	case IPPROTO_HOPOPTS: {
		// Hop-by-hop options carry MLD's router alert; nothing else
		// from a container needs them, and behind them a neighbour
		// advertisement's target would move.
		struct {
			__u8 next, len, options[6];
			__u8 type;
		} h;
		if (bpf_skb_load_bytes(skb, IP6_PAYLOAD, &h, sizeof(h)) < 0 || h.next != IPPROTO_ICMPV6 || h.len != 0)
			return TCX_DROP;
		if (h.type != MLD_QUERY && h.type != MLD_REPORT && h.type != MLD_DONE && h.type != MLD2_REPORT)
			return TCX_DROP;
		break;
	}
	case IPPROTO_FRAGMENT: {
		// Receivers drop neighbour discovery in fragments (RFC 6980;
		// Linux's ndisc_rcv, atomic fragments too, unless the
		// receiver set suppress_frag_ndisc=0), and no sender
		// fragments it: the guard drops the first fragment of one,
		// which names its type, rather than rely on every receiver.
		// Other fragmented ICMPv6 (a large ping) goes on. A first
		// fragment with another extension header behind it is
		// dropped as one without the fragment header is: behind it
		// the kernel reads an ICMPv6 message the guard would not see.
		struct {
			__u8 next, reserved;
			__be16 frag_off;
			__be32 id;
		} f;
		__u8 type;
		if (bpf_skb_load_bytes(skb, IP6_PAYLOAD, &f, sizeof(f)) < 0)
			return TCX_DROP;
		if (f.frag_off & bpf_htons(IP6_OFFSET_MASK))
			break;
		if (f.next == IPPROTO_HOPOPTS || f.next == IPPROTO_ROUTING || f.next == IPPROTO_FRAGMENT ||
		    f.next == IPPROTO_DSTOPTS)
			return TCX_DROP;
		if (f.next == IPPROTO_ICMPV6 &&
		    (bpf_skb_load_bytes(skb, IP6_PAYLOAD + sizeof(f), &type, 1) < 0 || (type >= ICMP6_RS && type <= ICMP6_REDIRECT)))
			return TCX_DROP;
		break;
	}
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
		// Headers the kernel reads before an ICMPv6 message behind
		// them, whose neighbour advertisement the guard would not see.
		return TCX_DROP;
	}
	if (own6(ip.saddr.in6_u.u6_addr8))
		return TCX_NEXT;
	// :: is the source of duplicate address detection's solicitations
	// and of MLD reports before an address is there (behind hop-by-hop
	// options), nothing else's.
	if (unspecified6(ip.saddr.in6_u.u6_addr8) && (ip.nexthdr == IPPROTO_ICMPV6 || ip.nexthdr == IPPROTO_HOPOPTS))
		return TCX_NEXT;
	return TCX_DROP;
}

static __always_inline int judge(struct __sk_buff *skb)
{
	// A tag the veth carries out of band (the container's VLAN device,
	// offloaded) would hide the frame's real type; one in band is a
	// type of its own, dropped below.
	if (skb->vlan_present)
		return TCX_DROP;
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 || !is_own_mac(eth.h_source) ||
	    link_local_group(eth.h_dest))
		return TCX_DROP;
	switch (eth.h_proto) {
	case bpf_htons(ETH_P_IP):
		return from_ipv4(skb);
	case bpf_htons(ETH_P_ARP):
		return from_arp(skb);
	case bpf_htons(ETH_P_IPV6):
		return from_ipv6(skb);
	}
	return TCX_DROP;
}

SEC("tcx/ingress")
int berth_guard(struct __sk_buff *skb)
{
	int verdict = judge(skb);
	if (verdict == TCX_NEXT)
		skb->mark |= PASSED_MARK;
	return verdict;
}

char __license[] SEC("license") = "Dual MIT/GPL";

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// berth's eBPF fast path: TC programs (a tc filter on the host veths, TCX on
// the uplink) that carry container traffic of one network past the node's
// bridge, routing and netfilter. What they do not handle they hand to the
// kernel's path unchanged (TCX_NEXT, TC_ACT_UNSPEC for a filter), where
// berth's iptables rules apply as in the default datapath.
//
//   from_container  on the host end of each container's veth: drops
//                   packets whose source is not the container's own
//                   address, delivers packets for a container of the same
//                   network on this node straight into its namespace
//                   (bpf_redirect_peer), and sends packets for a container
//                   on another node out of the device the kernel's FIB
//                   names (bpf_fib_lookup, then bpf_redirect or
//                   bpf_redirect_neigh): the uplink in hostgw and bgp mode;
//                   in vxlan mode the program encapsulates them itself and
//                   sends them out of the uplink (the VTEP when it cannot).
//   from_uplink     on the node's uplink (and VTEP): delivers packets from
//                   the network's other nodes straight into the container,
//                   decapsulating VXLAN packets first.
//
// One set of maps per network and node, pinned under
// <bpffs>/berth/<network>/ and shared by the CNI plugin (which adds
// endpoints) and netd (which attaches from_uplink).
//
// Flows the kernel translated (a published port, a Kubernetes service, a
// masqueraded connection) stay on the kernel's path in both directions: a
// conntrack lookup (bpf_skb_ct_lookup) finds them, and only the kernel can
// translate the reply back.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "berth.h" // TCX_NEXT, TCX_DROP, PASSED_MARK, struct arp4

// An endpoint is one container attached to the network on this node.
struct endpoint {
	__u32 ifindex;       // host end of the container's veth
	__u8 mac[6];         // the container's interface
	__u8 router_mac[6];  // the container's gateway: the bridge, or the host veth
	__u64 owner;         // the attachment that added it (DEL removes only its own)
};

// config says which addresses belong to the network.
struct config {
	__be32 local_addr;   // this node's share (its subnet), network byte order
	__be32 local_mask;
	__be32 scope_addr;   // the whole network: the cluster CIDR (bridge mode: = local)
	__be32 scope_mask;
	__u32 flags;         // bit 0: netd manages these maps; for Go, the programs ignore it
	__u32 pad;
};

// Packet counters, per CPU, for tests and `bpftool map dump`.
enum stat {
	STAT_LOCAL,       // delivered to a container on this node
	STAT_FIB,         // sent towards another node (bpf_redirect after a FIB lookup)
	STAT_NEIGH,       // same, neighbour resolved by the kernel (bpf_redirect_neigh)
	STAT_ARRIVED,     // arrived from another node, delivered to the container
	STAT_TRANSLATED,  // left to the kernel: a flow conntrack translated
	STAT_SPOOFED,     // dropped: source address or MAC (IPv4, ARP) not the container's
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

// Counters of the VXLAN encapsulation done here (vxlan mode), in a map of
// their own so that the pinned stats of an earlier berth stay usable.
enum tunnel_stat {
	TUNNEL_ENCAP,     // sent to another node, encapsulated by the program (also counted as STAT_FIB)
	TUNNEL_DECAP,     // arrived encapsulated, decapsulated by the program (also STAT_ARRIVED)
	TUNNEL_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TUNNEL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel_stats SEC(".maps");

// vxlan describes the node's VTEP, as netd made it (vxlan mode over an
// IPv4 underlay; all zero otherwise): the programs encapsulate and
// decapsulate its traffic themselves.
struct vxlan {
	__be32 local;        // this node's underlay address: the outer source
	__u32 vni;
	__be16 port;         // UDP destination port
	__u16 pad;
	__u32 vtep_ifindex;  // the kernel's VTEP, whose routes name the peers
	__u32 underlay_ifindex; // the VTEP's device: the only one encapsulated packets leave by
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vxlan);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vxlan SEC(".maps");

// vtep_mac is the VTEP's own MAC (vxlan mode, IPv4 underlay; all zero
// otherwise): only frames addressed to it are decapsulated here, as only
// those does the VTEP hand to IP as PACKET_HOST. It has a map of its own
// rather than a field of struct vxlan: a pinned map whose value grew
// would no longer open (ErrMapIncompatible), and the sets an earlier
// berth pinned must. vtep_ifindex ties it to the VTEP the vxlan map
// names, whichever of the two netd writes first.
struct vtep_mac {
	__u32 vtep_ifindex;
	__u8 mac[6];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vtep_mac);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vtep_mac SEC(".maps");

// tunnels: the next hop the VTEP's route to a peer's subnet names (the
// peer subnet's first address) -> the peer node's underlay address.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnels SEC(".maps");

// tunnel_peers: the peer nodes' underlay addresses (the values of
// tunnels). Only their VXLAN packets are decapsulated here: the kernel's
// VTEP gets the rest, behind the node's INPUT rules, which commonly let
// VXLAN in from the cluster's nodes only.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

// The conntrack kfuncs (net/netfilter/nf_conntrack_bpf.c). Only the field
// of nf_conn read here is declared; CO-RE finds it in the kernel's BTF.
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

// struct bpf_ct_opts in its original 12-byte form, which every kernel
// with these kfuncs accepts.
struct ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

// linux/socket.h pulls in libc headers: AF_INET is spelled out.
#define AF_INET 2

#define IPS_SRC_NAT (1 << 4)
#define IPS_DST_NAT (1 << 5)

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
					 __u32 tuple_size, struct ct_opts *opts, __u32 opts_size) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

// CT_NONE is ct_status's answer for a flow conntrack does not know.
#define CT_NONE (-1L)

// ct_status looks the IPv4 flow t of protocol l4proto up in the skb's
// netns's conntrack: the entry's status bits (IPS_*), or CT_NONE.
static __always_inline long ct_status(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u8 l4proto)
{
	struct ct_opts opts = {.netns_id = -1, .l4proto = l4proto}; // -1: the skb's netns
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, t, sizeof(t->ipv4), &opts, sizeof(opts));

	if (!ct)
		return CT_NONE;
	long status = ct->status;
	bpf_ct_release(ct);
	return status;
}

static __always_inline void count(enum stat s)
{
	__u32 key = s;
	__u64 *v = bpf_map_lookup_elem(&stats, &key);

	if (v)
		*v += 1;
}

static __always_inline void count_tunnel(enum tunnel_stat s)
{
	__u32 key = s;
	__u64 *v = bpf_map_lookup_elem(&tunnel_stats, &key);

	if (v)
		*v += 1;
}

static __always_inline int in_prefix(__be32 addr, __be32 net, __be32 mask)
{
	return mask && (addr & mask) == net;
}

// packet is a parsed IPv4 packet. Its pointers are valid until a helper
// changes the packet.
struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
	__be16 *ports;    // source and destination port (TCP, UDP)
};

// linear makes sure the first len bytes of skb are in its linear part,
// where the program can read them: -1 when the packet is shorter. It
// pulls (bpf_skb_pull_data) only when they are not there already: a pull
// makes the kernel copy a cloned skb's head, as every TCP segment a socket
// sends is (the socket keeps the original to retransmit), and copy payload
// out of the page fragments a socket writes it into.
static __always_inline int linear(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (len > skb->len || bpf_skb_pull_data(skb, len))
		return -1;
	return 0;
}

// parse finds the Ethernet and IPv4 headers (and the ports) of skb,
// pulling into the linear part what of them is not there (only the
// headers: never payload). It returns 0 for an IPv4 packet, 1 for
// anything else (ARP, IPv6) and -1 for a packet too short to hold what its
// IPv4 header promises.
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	if (linear(skb, sizeof(struct ethhdr) + sizeof(struct iphdr)) < 0) {
		// Too short for an IPv4 header: fine for anything else.
		void *data = (void *)(long)skb->data;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > (void *)(long)skb->data_end)
			return -1;
		return eth->h_proto == bpf_htons(ETH_P_IP) ? -1 : 1;
	}
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	p->eth = data;
	if ((void *)(p->eth + 1) > data_end)
		return -1;
	if (p->eth->h_proto != bpf_htons(ETH_P_IP))
		return 1;
	p->ip = (void *)(p->eth + 1);
	if ((void *)(p->ip + 1) > data_end || p->ip->ihl < 5)
		return -1;
	// A packet shorter than its tot_len (or tot_len shorter than its
	// header) is the kernel's to drop (ip_rcv_core), not the programs' to
	// hand on: the destination's stack would get it past that check. A
	// BIG TCP packet (GSO, over 64 KiB) has tot_len 0, as the kernel's
	// iph_totlen knows.
	__u32 tot_len = bpf_ntohs(p->ip->tot_len);
	if (!(tot_len == 0 && skb->gso_size) &&
	    (tot_len < p->ip->ihl * 4 || tot_len > skb->len - sizeof(struct ethhdr)))
		return -1;
	p->ports = 0;
	if (p->ip->frag_off & bpf_htons(0x1fff)) // not the first fragment: no L4 header
		return 0;
	if (p->ip->protocol != IPPROTO_TCP && p->ip->protocol != IPPROTO_UDP)
		return 0;
	__u32 l4off = sizeof(struct ethhdr) + p->ip->ihl * 4;

	if (linear(skb, l4off + 4) < 0) // the ports
		return -1;
	// A pull moves the packet: find the headers again.
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	p->eth = data;
	p->ip = (void *)(p->eth + 1);
	if ((void *)(p->ip + 1) > data_end)
		return -1;
	void *l4 = data + (l4off & 0x7f); // ihl is 4 bits: at most 14 + 60
	if (l4 + 4 > data_end)
		return -1;
	p->ports = l4;
	return 0;
}

// The ICMPv4 errors (RFC 792) whose embedded packet icmp_error reads.
#define ICMP_DEST_UNREACH 3   // port and host unreachable, fragmentation needed (PMTU)
#define ICMP_TIME_EXCEEDED 11 // a TTL run out (traceroute), reassembly timed out
#define ICMP_PARAMETERPROB 12

// icmp_error reports whether p, an unfragmented ICMP packet whose
// Ethernet header is eth_off bytes into skb, is an error about a packet
// of a flow the fast path carries, and so must go where that flow's
// packets go: a destination unreachable, time exceeded or parameter
// problem whose embedded packet (after the 8-byte ICMP header) is TCP or
// UDP with its ports, was sent by the error's destination, has both
// addresses in the network's scope, and belongs to a flow conntrack does
// not know. conntrack alone would call such an error invalid (it never
// saw the flow), and rules such as kube-proxy's drop invalid packets: the
// sender would never hear of a closed port (ECONNREFUSED), a TTL run out
// or a smaller path MTU (a PMTU black hole). An error about a flow
// conntrack knows, translated or not, stays on the kernel's path, where
// it is RELATED (and translated back when the flow was). Echo requests
// and replies are no errors: they stay on the kernel's path.
//
// It pulls the headers it reads into the linear part and finds p's
// headers again: p's pointers stay valid.
static __always_inline int icmp_error(struct __sk_buff *skb, struct packet *p, const __u32 eth_off)
{
	if (p->ip->frag_off & bpf_htons(0x3fff)) // a fragment: the kernel reassembles it
		return 0;
	__u32 icmp_off = eth_off + sizeof(struct ethhdr) + p->ip->ihl * 4;

	// The ICMP header and the embedded IPv4 header.
	if (linear(skb, icmp_off + 8 + sizeof(struct iphdr)) < 0)
		return 0;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	p->eth = data + eth_off;
	p->ip = (void *)(p->eth + 1);
	if ((void *)(p->ip + 1) > data_end)
		return 0;
	// ihl is 4 bits: the ICMP header is at most eth_off + 14 + 60 in.
	__u8 *icmp = data + (icmp_off & 0xff);
	struct iphdr *in = (void *)(icmp + 8);
	if ((void *)(in + 1) > data_end)
		return 0;
	if (icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED && icmp[0] != ICMP_PARAMETERPROB)
		return 0;
	// The first (or only) fragment of a TCP or UDP packet: its ports.
	if (in->version != 4 || in->ihl < 5 || (in->frag_off & bpf_htons(0x1fff)) ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
		return 0;
	__u32 ports_off = icmp_off + 8 + in->ihl * 4;
	if (linear(skb, ports_off + 4) < 0)
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	p->eth = data + eth_off;
	p->ip = (void *)(p->eth + 1);
	in = data + ((icmp_off + 8) & 0xff);
	__be16 *ports = data + (ports_off & 0x1ff);
	if ((void *)(p->ip + 1) > data_end || (void *)(in + 1) > data_end || (void *)(ports + 2) > data_end)
		return 0;
	// The error goes back to the embedded packet's sender.
	if (in->saddr != p->ip->daddr)
		return 0;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !in_prefix(in->saddr, cfg->scope_addr, cfg->scope_mask) ||
	    !in_prefix(in->daddr, cfg->scope_addr, cfg->scope_mask))
		return 0;

	// The tuple the error answers, as conntrack looks it up
	// (icmp_error_message): the embedded packet's, inverted. Of a flow
	// conntrack translated, the embedded packet may match no direction
	// of its entry as it is (its destination translated), but the
	// inverted one matches the reply direction.
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = in->daddr;
	t.ipv4.daddr = in->saddr;
	t.ipv4.sport = ports[1];
	t.ipv4.dport = ports[0];
	// A flow conntrack knows is the kernel's: the error is RELATED there.
	return ct_status(skb, &t, in->protocol) == CT_NONE;
}

// keep_on_stack reports whether a packet between two containers of the
// network (its Ethernet header eth_off bytes into skb) must still take
// the kernel's path: a fragment, a protocol the conntrack lookup cannot
// handle (ICMP among them, but for the errors icmp_error takes), or a
// packet of a flow conntrack translated. It may pull headers into the
// linear part: p's pointers stay valid, but pointers into the packet the
// caller kept do not.
//
// ICMP stays on the kernel's path in both directions. An echo reply may
// answer a request that conntrack translated (a DNAT rule without a
// protocol), and the conntrack kfuncs look up only TCP and UDP. Sending
// only the replies through the kernel would not do: conntrack would meet
// replies without their requests and call them invalid, which rules
// such as kube-proxy's drop. ICMP errors about the fast path's own flows
// are the exception (icmp_error): conntrack never saw those flows.
static __always_inline int keep_on_stack(struct __sk_buff *skb, struct packet *p, const __u32 eth_off)
{
	if (p->ip->frag_off & bpf_htons(0x3fff)) // MF set or an offset: a fragment
		return 1;
	switch (p->ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		break;
	case IPPROTO_ICMP:
		return !icmp_error(skb, p, eth_off);
	default:
		return 1;
	}
	if (!p->ports)
		return 1;

	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->ip->saddr;
	t.ipv4.daddr = p->ip->daddr;
	t.ipv4.sport = p->ports[0];
	t.ipv4.dport = p->ports[1];
	long status = ct_status(skb, &t, p->ip->protocol);
	if (status != CT_NONE && (status & (IPS_SRC_NAT | IPS_DST_NAT))) {
		count(STAT_TRANSLATED);
		return 1;
	}
	return 0;
}

// decrease_ttl does what the kernel's forwarding does (ip_decrease_ttl),
// updating the header checksum incrementally (RFC 1624).
static __always_inline void decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xffff));
	ip->ttl--;
}

// deliver hands the packet to the container of ep, in its own namespace,
// as if the node had forwarded it there: a routed packet gets the
// container's MAC and its gateway's as the source, and one hop less. A
// packet the container's neighbour addressed by MAC on a shared bridge
// is switched, not routed: it arrives as sent.
static __always_inline int deliver(struct packet *p, struct endpoint *ep, int routed, enum stat s)
{
	if (routed) {
		if (p->ip->ttl <= 1)
			return TCX_NEXT; // the kernel answers with ICMP time exceeded
		decrease_ttl(p->ip);
		__builtin_memcpy(p->eth->h_source, ep->router_mac, ETH_ALEN);
	}
	__builtin_memcpy(p->eth->h_dest, ep->mac, ETH_ALEN);
	count(s);
	return bpf_redirect_peer(ep->ifindex, 0);
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
}

// set_ce marks an ECT packet Congestion Experienced, updating the header
// checksum as the kernel's IP_ECN_set_ce does.
static __always_inline void set_ce(struct iphdr *ip)
{
	__u32 ecn = (ip->tos + 1) & 3; // ECT(1): 2, ECT(0): 3, Not-ECT: 1, CE: 0

	if (!(ecn & 2))
		return;
	__u16 add = (__u16)bpf_htons(0xFFFB) + (__u16)bpf_htons(ecn);
	__u16 sum = (__u16)ip->check + add; // csum16_add
	ip->check = (__sum16)(sum + (sum < add));
	ip->tos |= 3;
}

// The headers a VXLAN packet carries in front of the inner IPv4 header.
struct vxlan_hdrs {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__be32 flags;        // 0x08000000: the VNI is valid
	__be32 vni;          // VNI << 8
	struct ethhdr inner;
} __attribute__((packed));

#define VXLAN_ROOM (sizeof(struct vxlan_hdrs) - sizeof(struct ethhdr))

static __always_inline __sum16 ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

// tunnel finds where a packet the FIB routed through the VTEP (inner:
// that lookup; tot_len: ip_len's) goes in the underlay: the peer node
// (tunnels) and the next hop towards it (outer). It changes nothing: -1 when it cannot tell (no tunnel for the next hop,
// no route out of the VTEP's device, too big for it), and the VTEP then
// takes the packet.
static __always_inline int tunnel(struct __sk_buff *skb, struct bpf_fib_lookup *inner, struct vxlan *vx,
				  __u16 tot_len, struct bpf_fib_lookup *outer, __be32 *remote)
{
	__be32 *r = bpf_map_lookup_elem(&tunnels, &inner->ipv4_dst);
	if (!r)
		return -1;
	*remote = *r;
	// The lookup the VTEP makes: an output lookup from this node, out
	// of its own device.
	outer->family = AF_INET;
	outer->ifindex = vx->underlay_ifindex;
	outer->l4_protocol = IPPROTO_UDP;
	outer->ipv4_src = vx->local;
	outer->ipv4_dst = *r;
	// Too big for the way out once encapsulated (FRAG_NEEDED): the VTEP
	// takes it, and fragments the outer packet as its DF is clear.
	outer->tot_len = tot_len + VXLAN_ROOM;
	long rc = bpf_fib_lookup(skb, outer, sizeof(*outer), BPF_FIB_LOOKUP_OUTPUT);
	// NO_NEIGH too: encap's bpf_redirect_neigh resolves the next hop.
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	if (outer->ifindex != vx->underlay_ifindex)
		return -1;
	return 0;
}

// encap sends the packet to the peer node itself, VXLAN-encapsulated as
// the VTEP would, out of the underlay device tunnel found: past the
// VTEP's xmit, its route and neighbour lookups and the node's netfilter
// hooks.
static __always_inline int encap(struct __sk_buff *skb, struct bpf_fib_lookup *inner, struct vxlan *vx,
				 struct bpf_fib_lookup *outer, __be32 remote)
{
	// The flow's hash picks the outer source port, as the kernel's
	// udp_flow_src_port does: the underlay's ECMP spreads flows.
	__u32 hash = bpf_get_hash_recalc(skb);
	// FIXED_GSO: the container's MTU leaves room for the headers.
	if (bpf_skb_adjust_room(skb, VXLAN_ROOM, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
				BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
				BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr))))
		return TCX_NEXT; // unchanged: the kernel forwards it to the VTEP
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct vxlan_hdrs *h = data;
	struct iphdr *ip = data + sizeof(*h);
	if ((void *)(ip + 1) > data_end)
		return TCX_DROP; // cannot happen: the room is in the linear part
	decrease_ttl(ip);
	__builtin_memcpy(h->inner.h_dest, inner->dmac, ETH_ALEN);
	__builtin_memcpy(h->inner.h_source, inner->smac, ETH_ALEN);
	h->inner.h_proto = bpf_htons(ETH_P_IP);
	// bpf_redirect_neigh writes the MACs again from the neighbour table;
	// it only needs a unicast destination here.
	__builtin_memcpy(h->eth.h_dest, outer->dmac, ETH_ALEN);
	__builtin_memcpy(h->eth.h_source, outer->smac, ETH_ALEN);
	h->eth.h_proto = bpf_htons(ETH_P_IP);
	__u32 len = skb->len - sizeof(struct ethhdr);
	// ECN as the VTEP copies it (INET_ECN_encapsulate): CE becomes ECT(0).
	__u8 ecn = ip->tos & 3;
	h->ip.version = 4;
	h->ip.ihl = 5;
	h->ip.tos = ecn == 3 ? 2 : ecn;
	h->ip.tot_len = bpf_htons(len);
	// DF clear, as the VTEP sends: every packet its own ID, so that
	// fragments of two never reassemble into one.
	h->ip.id = bpf_get_prandom_u32();
	h->ip.frag_off = 0;
	h->ip.ttl = 64;
	h->ip.protocol = IPPROTO_UDP;
	h->ip.check = 0;
	h->ip.saddr = vx->local;
	h->ip.daddr = remote; // outer->ipv4_dst is the next hop now
	h->ip.check = ip_checksum((void *)h + sizeof(struct ethhdr));
	hash ^= hash << 16;
	h->udp.source = bpf_htons((((__u64)hash * (61000 - 32768)) >> 32) + 32768);
	h->udp.dest = vx->port;
	h->udp.len = bpf_htons(len - sizeof(struct iphdr));
	// IPv4: no checksum ("none"), which every receiver takes. netd's
	// VTEP computes one; the encapsulated GSO packets could not carry
	// one (bpf_skb_adjust_room gives them the tunnel GSO type without
	// checksum).
	h->udp.check = 0;
	h->flags = bpf_htonl(0x08000000);
	h->vni = bpf_htonl(vx->vni << 8);
	count(STAT_FIB);
	count_tunnel(TUNNEL_ENCAP);
	// The kernel's neighbour table gives the MACs (and resolves or
	// re-probes a stale one), as for the VTEP's own packets.
	struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = outer->ipv4_dst};
	return bpf_redirect_neigh(outer->ifindex, &nh, sizeof(nh), 0);
}

// ip_len is the IPv4 length the MTU of the way out must hold: the
// packet's own, or for a GSO packet that of each segment it will be cut
// into (its headers and gso_size), as the kernel's forwarding checks it
// (skb_gso_validate_network_len). 0: a GSO packet of another kind, which
// the kernel's path takes.
static __always_inline __u32 ip_len(struct __sk_buff *skb, struct packet *p)
{
	if (!skb->gso_size)
		return bpf_ntohs(p->ip->tot_len);
	__u32 iphl = p->ip->ihl * 4;
	switch (p->ip->protocol) {
	case IPPROTO_UDP:
		return iphl + sizeof(struct udphdr) + skb->gso_size;
	case IPPROTO_TCP: {
		__u8 doff; // the TCP header's length in words, in the high nibble
		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + iphl + 12, &doff, 1) < 0)
			return 0;
		return iphl + (doff >> 4) * 4 + skb->gso_size;
	}
	}
	return 0;
}

// to_node sends a packet for another node's container out of the device
// the node's own routes name, without the bridge, the routing decision or
// netfilter of the kernel's forwarding path.
static __always_inline int to_node(struct __sk_buff *skb, struct packet *p)
{
	struct bpf_fib_lookup fib = {};

	if (p->ip->ttl <= 1)
		return TCX_NEXT;
	fib.family = AF_INET;
	fib.ifindex = skb->ingress_ifindex;
	fib.tos = p->ip->tos;
	fib.l4_protocol = p->ip->protocol;
	fib.ipv4_src = p->ip->saddr;
	fib.ipv4_dst = p->ip->daddr;
	// With tot_len the kernel checks the packet against the MTU of the
	// device it finds, or of a locked route or a learned path MTU (too
	// big: FRAG_NEEDED, and the kernel's path answers with ICMP or
	// fragments). A GSO packet is checked by the size of its segments:
	// with tot_len 0 the lookup would let it through whole, and segments
	// too big for a smaller link would be dropped there, unanswered.
	__u32 len = ip_len(skb, p);
	if (!len)
		return TCX_NEXT;
	fib.tot_len = len;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS: {
		__u32 zero = 0;
		struct vxlan *vx = bpf_map_lookup_elem(&vxlan, &zero);
		struct bpf_fib_lookup outer = {};
		__be32 remote;
		if (vx && vx->vtep_ifindex && vx->vtep_ifindex == fib.ifindex &&
		    tunnel(skb, &fib, vx, len, &outer, &remote) == 0)
			return encap(skb, &fib, vx, &outer, remote);
		decrease_ttl(p->ip);
		__builtin_memcpy(p->eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(p->eth->h_source, fib.smac, ETH_ALEN);
		count(STAT_FIB);
		return bpf_redirect(fib.ifindex, 0);
	}
	case BPF_FIB_LKUP_RET_NO_NEIGH: {
		// The next hop's MAC is not known yet: the kernel resolves it
		// (ARP) and queues the packet meanwhile. fib.ipv4_dst is the
		// next hop now.
		struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};

		decrease_ttl(p->ip);
		count(STAT_NEIGH);
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	default:
		// No route, a blackhole, too big for the MTU, forwarding off:
		// the kernel decides, and answers with ICMP where it should.
		return TCX_NEXT;
	}
}

// stack_same_mac is same_mac for a MAC at any offset on the stack, where
// the verifier refuses unaligned words.
static __always_inline int stack_same_mac(const __u8 *a, const __u8 *b)
{
	__u8 d = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

// arp_from lets an ARP packet from the container of the host veth skb
// arrived on through only when its sender is the container, at its own
// MAC (in the frame and in the packet): a reply "X is at my MAC" would
// otherwise rewrite the node's or a neighbour's entry for X, and a forged
// MAC the bridge's FDB. A probe (RFC 5227, sender 0.0.0.0) is known by
// the address it asks about, which must be the container's own.
static __always_inline int arp_from(struct __sk_buff *skb)
{
	// Copied out (ARP is rare): no packet pointers to keep valid.
	struct {
		struct ethhdr eth;
		struct arp4 arp;
	} __attribute__((packed)) f;
	if (bpf_skb_load_bytes(skb, 0, &f, sizeof(f)) < 0)
		return TCX_DROP;
	struct arp4 *a = &f.arp;
	if (a->htype != bpf_htons(1) || a->ptype != bpf_htons(ETH_P_IP) || a->hlen != ETH_ALEN || a->plen != 4)
		return TCX_DROP;
	__be32 spa, tpa;
	__builtin_memcpy(&spa, a->spa, 4);
	__builtin_memcpy(&tpa, a->tpa, 4);
	struct endpoint *self = bpf_map_lookup_elem(&endpoints, spa ? &spa : &tpa);
	if (!self || self->ifindex != skb->ingress_ifindex || !stack_same_mac(f.eth.h_source, self->mac) ||
	    !stack_same_mac(a->sha, self->mac) || link_local_group(f.eth.h_dest)) {
		count(STAT_SPOOFED);
		return TCX_DROP;
	}
	return TCX_NEXT;
}

static __always_inline int container_verdict(struct __sk_buff *skb)
{
	// A VLAN tag the veth carries out of band (the container's VLAN
	// device, offloaded) would hide the frame's real type.
	if (skb->vlan_present)
		return TCX_DROP;

	struct packet p;
	int rc = parse(skb, &p);

	if (rc < 0)
		return TCX_DROP;
	if (rc > 0) {
		// The network is IPv4 only: IPv6 from a container (its
		// link-local's MLD and router solicitations too) and any other
		// protocol goes nowhere. (skb->protocol is the frame's type,
		// as the veth's eth_type_trans read it.)
		if (skb->protocol == bpf_htons(ETH_P_ARP))
			return arp_from(skb);
		return TCX_DROP;
	}

	// Anti-spoofing: the source must be this container's own address,
	// sent from its own MAC (a neighbour's would move the neighbour's
	// FDB entry on the bridge to this container's port).
	struct endpoint *self = bpf_map_lookup_elem(&endpoints, &p.ip->saddr);
	if (!self || self->ifindex != skb->ingress_ifindex || !same_mac(p.eth->h_source, self->mac) ||
	    link_local_group(p.eth->h_dest)) {
		count(STAT_SPOOFED);
		return TCX_DROP;
	}

	struct endpoint *peer = bpf_map_lookup_elem(&endpoints, &p.ip->daddr);
	if (peer) {
		if (keep_on_stack(skb, &p, 0))
			return TCX_NEXT;
		return deliver(&p, peer, !same_mac(p.eth->h_dest, peer->mac), STAT_LOCAL);
	}

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !in_prefix(p.ip->daddr, cfg->scope_addr, cfg->scope_mask) ||
	    in_prefix(p.ip->daddr, cfg->local_addr, cfg->local_mask))
		return TCX_NEXT; // the node, another network, the outside world
	if (keep_on_stack(skb, &p, 0))
		return TCX_NEXT;
	return to_node(skb, &p);
}

SEC("tcx/ingress")
int from_container(struct __sk_buff *skb)
{
	int verdict = container_verdict(skb);
	// Only what goes on to the kernel's path: a frame delivered or sent
	// out here does not meet the bridge, and its mark would go with it.
	if (verdict == TCX_NEXT)
		skb->mark |= PASSED_MARK;
	return verdict;
}

// from_tunnel decapsulates a VXLAN packet of the network for a container
// of this node and delivers it, past the kernel's UDP socket, VTEP and
// second receive. Anything else, GSO packets among them, it leaves to the
// kernel's VTEP.
static __always_inline int from_tunnel(struct __sk_buff *skb, struct vxlan *vx)
{
	const __u32 l4 = sizeof(struct vxlan_hdrs) + sizeof(struct iphdr);

	// A GSO packet (GRO's, or a large one a veth passed on whole) is
	// the VTEP's: bpf_skb_adjust_room cannot clear its tunnel GSO type
	// and encapsulation mark (iptunnel_pull_offloads does), and a
	// container that hands such a packet on (a tap device of a VM, a
	// NIC) can fail to segment it.
	if (skb->gso_size)
		return TCX_NEXT;

	if (linear(skb, l4 + 4) < 0)
		return TCX_NEXT;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct vxlan_hdrs *h = data;
	struct packet inner = {.eth = &h->inner, .ip = data + sizeof(*h), .ports = data + l4};
	if ((void *)(inner.ports + 2) > data_end)
		return TCX_NEXT;
	// A fragment of a VXLAN packet is the kernel's to reassemble; a
	// damaged header, the kernel's to drop.
	if (h->ip.ihl != 5 || (h->ip.frag_off & bpf_htons(0x3fff)) || ip_checksum((void *)h + sizeof(struct ethhdr)) != 0 || h->flags != bpf_htonl(0x08000000) || h->vni != bpf_htonl(vx->vni << 8) ||
	    h->inner.h_proto != bpf_htons(ETH_P_IP) || inner.ip->ihl != 5)
		return TCX_NEXT;
	// The outer UDP checksum, when the sender gave one, is verified as
	// the VTEP's socket would: only a packet whose checksum the device
	// vouched for (CHECKSUM_UNNECESSARY; a NIC's receive offload) is
	// decapsulated here. Others go to the VTEP, whose UDP socket checks.
	if (h->udp.check && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0)
		return TCX_NEXT;
	// Only a frame for the VTEP itself. The VTEP would hand any other
	// (another node's MAC, a broadcast) to IP as PACKET_OTHERHOST or
	// BROADCAST, which IP neither delivers nor forwards: the VTEP gets
	// it, and the kernel decides, as without the programs.
	__u32 zero = 0;
	struct vtep_mac *own = bpf_map_lookup_elem(&vtep_mac, &zero);
	if (!own || own->vtep_ifindex != vx->vtep_ifindex || !same_mac(h->inner.h_dest, own->mac))
		return TCX_NEXT;
	// Only from the network's nodes (tunnel_peers), and what deliver
	// will not hand back to the kernel (TTL): once decapsulated, the
	// packet must not reach the kernel's path on the uplink.
	if (skb->pkt_type != PACKET_HOST || !bpf_map_lookup_elem(&tunnel_peers, &h->ip.saddr) || inner.ip->ttl <= 1)
		return TCX_NEXT;
	struct endpoint *peer = bpf_map_lookup_elem(&endpoints, &inner.ip->daddr);
	if (!peer)
		return TCX_NEXT;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	// ICMP errors from any source, as from_uplink takes them.
	if (!cfg || (!in_prefix(inner.ip->saddr, cfg->scope_addr, cfg->scope_mask) &&
		     inner.ip->protocol != IPPROTO_ICMP))
		return TCX_NEXT;
	// ECN as the VTEP decapsulates (RFC 6040): the underlay's congestion
	// mark goes to the inner packet; CE over a Not-ECT packet is the
	// kernel's to drop.
	int ce = (h->ip.tos & 3) == 3;
	if (ce && !(inner.ip->tos & 3))
		return TCX_NEXT;
	if (keep_on_stack(skb, &inner, VXLAN_ROOM))
		return TCX_NEXT;
	// Without BPF_F_ADJ_ROOM_NO_CSUM_RESET a checksum the NIC verified
	// (CHECKSUM_UNNECESSARY, perhaps only the outer UDP's) no longer
	// counts: the container's stack checks the inner one.
	if (bpf_skb_adjust_room(skb, -(int)VXLAN_ROOM, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return TCX_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct packet p = {.eth = data, .ip = data + sizeof(struct ethhdr)};
	if ((void *)(p.ip + 1) > data_end)
		return TCX_DROP;
	if (ce)
		set_ce(p.ip);
	count_tunnel(TUNNEL_DECAP);
	return deliver(&p, peer, 1, STAT_ARRIVED);
}

SEC("tcx/ingress")
int from_uplink(struct __sk_buff *skb)
{
	struct packet p;

	if (parse(skb, &p) != 0)
		return TCX_NEXT;
	struct endpoint *peer = bpf_map_lookup_elem(&endpoints, &p.ip->daddr);
	if (!peer) {
		__u32 zero = 0;
		struct vxlan *vx = bpf_map_lookup_elem(&vxlan, &zero);
		if (vx && vx->vtep_ifindex && p.ip->protocol == IPPROTO_UDP && p.ports &&
		    p.ports[1] == vx->port && p.ip->daddr == vx->local)
			return from_tunnel(skb, vx);
		return TCX_NEXT; // the node itself, or another network's container
	}
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	// Only the network's own traffic: anything else (the outside world,
	// other networks) meets the node's rules. An ICMP error about one of
	// the network's flows to this container (keep_on_stack takes no
	// other ICMP) comes from wherever the flow met trouble: a container
	// or a VTEP of the network, but also another node's underlay address
	// (hostgw, bgp: the address its route back names) or a router of the
	// underlay (a smaller MTU: fragmentation needed). On the iptables
	// datapath conntrack takes it as RELATED to the flow from any source;
	// here conntrack never saw the flow, and the kernel's path would call
	// it invalid.
	if (!cfg || (!in_prefix(p.ip->saddr, cfg->scope_addr, cfg->scope_mask) && p.ip->protocol != IPPROTO_ICMP))
		return TCX_NEXT;
	if (keep_on_stack(skb, &p, 0))
		return TCX_NEXT;
	return deliver(&p, peer, 1, STAT_ARRIVED);
}

char __license[] SEC("license") = "Dual MIT/GPL";

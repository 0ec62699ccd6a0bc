// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// What berth's BPF programs share: internal/srcguard's guard and
// internal/fastpath's programs include it (their gen.go passes -I).

#ifndef BERTH_H
#define BERTH_H

#include <linux/types.h>
#include <linux/if_ether.h>

// TCX return codes (linux/bpf.h of newer kernels has them as an enum).
// They mean the same to a tc filter in direct action: TCX_NEXT is
// TC_ACT_UNSPEC, TCX_DROP is TC_ACT_SHOT.
#define TCX_NEXT (-1) // not ours: the next program, then the kernel
#define TCX_DROP 2

// PASSED_MARK is the bit of skb->mark that the guard and from_container
// set on what they let through to the kernel's path (srcguard.PassedMark):
// the bridge's nftables table drops a frame from a guarded veth without
// it, one that skipped the veth's ingress programs (an ifb device in the
// container hands its frames back marked tc_skip_classify). The mark
// cannot come from the container: a veth clears it when a frame changes
// namespace.
#define PASSED_MARK 0x04000000

// link_local_group reports whether mac is one of the link-local group
// addresses 01:80:c2:00:00:00-0f (STP, LLDP, 802.1X ...). A bridge does
// not forward a frame to one of them: it hands it up on the port it came
// in on, to the node's own stack with the host veth as its interface,
// where rules about the bridge do not apply, and it hands LLDP (and, with
// STP on, STP) up before any of its netfilter hooks. What a container
// may send (IPv4, ARP, IPv6) never goes to one.
static __always_inline int link_local_group(const __u8 *mac)
{
	return mac[0] == 0x01 && mac[1] == 0x80 && mac[2] == 0xc2 && mac[3] == 0 && mac[4] == 0 && (mac[5] & 0xf0) == 0;
}

// arp4 is an ARP packet for IPv4 over Ethernet (RFC 826), the only
// layout the kernel reads.
struct arp4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

#endif

/* ip6.h: what the IPv6 stages share: the parsed packet (struct pkt6, the IPv6 twin of
 * parse.h's pkt4) and small predicates on struct addr6 (abi.h). No packet access here:
 * parse6.h is the only IPv6 code that reads packet memory. */
#ifndef EBPFLB_IP6_H
#define EBPFLB_IP6_H

#include "abi.h"
#include "consts.h"

#define IP6_PROTO_ICMPV6	58	/* IPPROTO_ICMPV6 */

/* What the later stages know about a translatable IPv6 packet (pkt6_parse fills it
 * with the same PKT_* kinds as pkt4_parse). */
struct pkt6 {
	struct addr6 saddr;
	struct addr6 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* IP4_PROTO_TCP / IP4_PROTO_UDP / IP6_PROTO_ICMPV6: the
				 * upper-layer protocol, after any extension headers */
	__u8 tcp_flags;		/* TCP: the header's flags byte (TCP_F_*); 0 otherwise */
	__u8 pad[2];
	__u32 l3_off;		/* offset of the IPv6 header */
	__u32 l4_off;		/* offset of the TCP/UDP/ICMPv6 header */
	__u32 csum_off;		/* offset of the TCP/UDP checksum */
};

static __always_inline int addr6_eq(const struct addr6 *a, const struct addr6 *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

static __always_inline int addr6_is_zero(const struct addr6 *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0;
}

/* The IPv6 hairpin address (consts.h HAIRPIN6_W*). */
static __always_inline void addr6_hairpin(struct addr6 *a)
{
	a->w[0] = bpf_htonl(HAIRPIN6_W0);
	a->w[1] = bpf_htonl(HAIRPIN6_W1);
	a->w[2] = bpf_htonl(HAIRPIN6_W2);
	a->w[3] = bpf_htonl(HAIRPIN6_W3);
}

#endif

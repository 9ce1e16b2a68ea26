/* xdp_nat.h: rewriting an XDP frame's addresses, ports and TTL in place, with the
 * checksums updated incrementally (RFC 1624: HC' = ~(~HC + ~m + m')). XDP has no
 * l3/l4_csum_replace helpers and no skb->csum to keep right; the arithmetic is a few
 * adds, done here in C rather than through bpf_csum_diff (a helper call per field).
 * Valid for frames with a complete checksum, which is what a NIC receives; a
 * CHECKSUM_PARTIAL skb (generic XDP on a veth whose peer offloads its TX checksum)
 * would need the opposite update, so such a peer must checksum in software (ethtool -K
 * DEV tx off; the lab's outside clients do). */
#ifndef EBPFLB_XDP_NAT_H
#define EBPFLB_XDP_NAT_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#include "csum.h"	/* csum_add32 */
#include "drop_reasons.h"
#include "ip6.h"
#include "parse.h"
#include "parse6.h"
#include "xdp_parse.h"

/* Where a frame goes after translation: its new addresses and ports. */
struct xdp4_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

struct xdp6_tuple {
	struct addr6 saddr;
	struct addr6 daddr;
	__be16 sport;
	__be16 dport;
};

/* Sum's change when a word (16 or 32 bits, raw network order) goes from old to new. */
static __always_inline __u32 csum_replace32(__u32 sum, __u32 old, __u32 new)
{
	return csum_add32(csum_add32(sum, ~old), new);
}

/* A checksum field after its covered data changed by diff. */
static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	__u32 sum = csum_add32(diff, (__u16)~check);

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* The TCP/UDP checksum at csum after diff; a UDP checksum of 0 ("none") stays 0, and a
 * computed 0 is written as 0xffff. */
static __always_inline void xdp_l4_csum_apply(__u16 *csum, __u8 proto, __u32 diff)
{
	__u16 check = *csum;

	if (proto == IP4_PROTO_UDP && check == 0)
		return;
	check = csum_apply(check, diff);
	if (proto == IP4_PROTO_UDP && check == 0)
		check = 0xffff;
	*csum = check;
}

/* The ports' share of the L4 checksum change. */
static __always_inline __u32 xdp_ports_diff(const struct l4_ports *ports, __be16 sport,
					    __be16 dport)
{
	return csum_replace32(csum_replace32(0, ports->source, sport), ports->dest, dport);
}

/* Rewrite the parsed IPv4 frame to t; with dec_ttl (the frame is forwarded from
 * here, not handed to the stack), decrement its TTL too. 0 or DROP_WRITE. */
static __always_inline int xdp4_rewrite(struct xdp_md *ctx, const struct pkt4 *pkt,
					const struct xdp4_tuple *t, int dec_ttl)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct l4_ports *ports = data + ETH_HLEN + sizeof(struct iphdr);
	__u32 addr_diff, ip_diff;
	__u16 *csum, old;

	/* xdp4_parse checked these bounds; the verifier wants them seen here again */
	if ((void *)(ip + 1) > data_end || (void *)ports + xdp_l4_len(pkt->proto) > data_end)
		return DROP_WRITE;
	csum = (void *)ports + (pkt->proto == IP4_PROTO_TCP ? TCP_CSUM_OFF :
				offsetof(struct udphdr, check));
	if ((void *)(csum + 1) > data_end)
		return DROP_WRITE;
	addr_diff = csum_replace32(csum_replace32(0, ip->saddr, t->saddr), ip->daddr, t->daddr);
	xdp_l4_csum_apply(csum, pkt->proto,
			  csum_add32(addr_diff, xdp_ports_diff(ports, t->sport, t->dport)));
	ip_diff = addr_diff;
	if (dec_ttl) {
		/* the TTL shares a 16-bit checksum word with the protocol */
		old = *(__u16 *)&ip->ttl;
		ip->ttl--;
		ip_diff = csum_replace32(ip_diff, old, *(__u16 *)&ip->ttl);
	}
	ip->check = csum_apply(ip->check, ip_diff);
	ip->saddr = t->saddr;
	ip->daddr = t->daddr;
	ports->source = t->sport;
	ports->dest = t->dport;
	return 0;
}

/* An IPv6 address's share of the L4 checksum change. */
static __always_inline __u32 xdp6_addr_diff(__u32 sum, const struct addr6 *old,
					    const struct addr6 *new)
{
	sum = csum_replace32(sum, old->w[0], new->w[0]);
	sum = csum_replace32(sum, old->w[1], new->w[1]);
	sum = csum_replace32(sum, old->w[2], new->w[2]);
	return csum_replace32(sum, old->w[3], new->w[3]);
}

/* Rewrite the parsed IPv6 frame to t (no IP header checksum: only TCP/UDP's through
 * its pseudo-header); with dec_ttl, decrement the hop limit. 0 or DROP_WRITE. */
static __always_inline int xdp6_rewrite(struct xdp_md *ctx, const struct pkt6 *pkt,
					const struct xdp6_tuple *t, int dec_ttl)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ip6_hdr *ip = data + ETH_HLEN;
	struct l4_ports *ports = data + ETH_HLEN + IP6_HDR_LEN;
	__u32 diff;
	__u16 *csum;

	if ((void *)(ip + 1) > data_end || (void *)ports + xdp_l4_len(pkt->proto) > data_end)
		return DROP_WRITE;
	csum = (void *)ports + (pkt->proto == IP4_PROTO_TCP ? TCP_CSUM_OFF :
				offsetof(struct udphdr, check));
	if ((void *)(csum + 1) > data_end)
		return DROP_WRITE;
	diff = xdp6_addr_diff(0, &ip->saddr, &t->saddr);
	diff = xdp6_addr_diff(diff, &ip->daddr, &t->daddr);
	xdp_l4_csum_apply(csum, pkt->proto,
			  csum_add32(diff, xdp_ports_diff(ports, t->sport, t->dport)));
	if (dec_ttl)
		ip->hop_limit--;
	ip->saddr = t->saddr;
	ip->daddr = t->daddr;
	ports->source = t->sport;
	ports->dest = t->dport;
	return 0;
}

#endif

/* reject6.h: an IPv6 Service with no endpoint at all refuses its traffic, as reject.h
 * does for IPv4 (its comment says why each answer): the packet is turned, in place,
 * into an answer sent back out of the interface it came in on. UDP gets an ICMPv6 port
 * unreachable (type 1 code 4) quoting it, any TCP segment a TCP reset (a SYN too,
 * unlike IPv4: lb6_reject says why).
 *
 * The quote is the IPv6 header and the first 8 bytes of TCP/UDP, as reject.h quotes
 * for IPv4: all a receiver needs to find its socket (RFC 4443 2.4 allows up to the
 * minimum MTU, but a longer quote would have to be copied and summed here). A packet
 * with extension headers is dropped instead, as reject.h drops one with IP options.
 * Both answers' checksums are summed whole over the answer (pseudo-header included),
 * built on the stack: nothing of the refused packet is summed but the quote. */
#ifndef EBPFLB_REJECT6_H
#define EBPFLB_REJECT6_H

#include <uapi/linux/if_ether.h>

#include "consts.h"
#include "drop_reasons.h"
#include "icmp6.h"
#include "ip6.h"
#include "parse6.h"
#include "reject.h"
#include "stats.h"
#include "verdict.h"

#define ICMP6_C_PORT_UNREACH	4
#define REJECT6_QUOTE_LEN	48	/* the quoted IPv6 header + 8 bytes */
#define REJECT6_HOP_LIMIT	64

/* The upper-layer pseudo-header of RFC 8200 8.1, summed in front of the message. */
struct ip6_pseudo_hdr {
	struct addr6 saddr;
	struct addr6 daddr;
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

/* The ICMPv6 error that replaces the refused packet, behind its pseudo-header: one
 * bpf_csum_diff sums both (every size a multiple of 4, as it needs). */
struct icmp6_reject {
	struct ip6_pseudo_hdr ph;
	__u8 type;
	__u8 code;
	__sum16 check;
	__u32 unused;
	__u8 quote[REJECT6_QUOTE_LEN];
};

/* The reset, behind its pseudo-header. */
struct tcp6_reset {
	struct ip6_pseudo_hdr ph;
	struct tcp4_hdr tcp;
};

#define ICMP6_REJECT_MSG_LEN	(sizeof(struct icmp6_reject) - sizeof(struct ip6_pseudo_hdr))

static __always_inline void ip6_answer_init(struct ip6_hdr *ip, struct ip6_pseudo_hdr *ph,
					    const struct pkt6 *pkt, __u8 nexthdr, __u16 len)
{
	__builtin_memset(ip, 0, sizeof(*ip));
	ip->vtc_flow = bpf_htonl(0x60000000);
	ip->payload_len = bpf_htons(len);
	ip->nexthdr = nexthdr;
	ip->hop_limit = REJECT6_HOP_LIMIT;
	ip->saddr = pkt->daddr;		/* the frontend answers */
	ip->daddr = pkt->saddr;
	ph->saddr = pkt->daddr;
	ph->daddr = pkt->saddr;
	ph->len = bpf_htonl(len);
	ph->nexthdr = nexthdr;
}

/* Turn the packet into ip and the len bytes of msg, sent back to where it came from
 * (the Ethernet addresses swapped). 0 or DROP_WRITE. */
static __always_inline int reject6_write(struct __sk_buff *skb, struct ip6_hdr *ip,
					 void *msg, __u32 len)
{
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return DROP_WRITE;
	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(*ip) + len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, ip, sizeof(*ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(*ip), msg, len, 0) < 0)
		return DROP_WRITE;
	return 0;
}

/* Refuse the packet with an ICMPv6 port unreachable: VERDICT_REDIRECT once it is that
 * error, else a DROP_* code (extension headers, or a failed write). */
static __always_inline int lb6_reject_icmp(struct __sk_buff *skb, const struct pkt6 *pkt)
{
	struct ip6_hdr ip;
	struct icmp6_reject r;
	__s64 sum;
	int ret;

	if (pkt->l4_off != pkt->l3_off + IP6_HDR_LEN)
		return DROP_NO_BACKEND;
	__builtin_memset(&r, 0, sizeof(r));
	if (bpf_skb_load_bytes(skb, pkt->l3_off, r.quote, sizeof(r.quote)) < 0)
		return DROP_NO_BACKEND;
	ip6_answer_init(&ip, &r.ph, pkt, IP6_PROTO_ICMPV6, ICMP6_REJECT_MSG_LEN);
	r.type = ICMP6_T_DEST_UNREACH;
	r.code = ICMP6_C_PORT_UNREACH;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r, sizeof(r), 0);
	if (sum < 0)
		return DROP_WRITE;
	r.check = csum4_fold(sum);
	ret = reject6_write(skb, &ip, &r.type, ICMP6_REJECT_MSG_LEN);
	if (ret < 0)
		return ret;
	stats_global_inc(GSTAT_REJECT);
	return VERDICT_REDIRECT;
}

/* Reset the TCP connection the packet belongs to (RFC 9293's reset for a segment with
 * no connection, tcp4_reset_header), counted under `stat`: VERDICT_REDIRECT once the
 * packet is the reset, else DROP_NO_BACKEND (a reset is never answered; a malformed
 * length) or DROP_WRITE. */
static __always_inline int lb6_reject_tcp_reset(struct __sk_buff *skb, const struct pkt6 *pkt,
						const struct tcp4_hdr *in, __u32 stat)
{
	struct ip6_hdr ip;
	struct tcp6_reset r;
	__be16 payload_len;
	__u32 ip_len, hdr_len;
	__s64 sum;
	int ret;

	if (in->flags & TCP_F_RST)
		return DROP_NO_BACKEND;
	if (bpf_skb_load_bytes(skb, pkt->l3_off + offsetof(struct ip6_hdr, payload_len),
			       &payload_len, sizeof(payload_len)) < 0)
		return DROP_NO_BACKEND;
	/* the whole IPv6 packet, and its headers up to the end of TCP's (options too) */
	ip_len = IP6_HDR_LEN + bpf_ntohs(payload_len);
	hdr_len = pkt->l4_off - pkt->l3_off + (in->doff >> 4) * 4;
	if (ip_len < hdr_len)
		return DROP_NO_BACKEND;

	__builtin_memset(&r, 0, sizeof(r));
	tcp4_reset_header(&r.tcp, in, ip_len - hdr_len);
	ip6_answer_init(&ip, &r.ph, pkt, IP4_PROTO_TCP, sizeof(r.tcp));
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r, sizeof(r), 0);
	if (sum < 0)
		return DROP_WRITE;
	r.tcp.check = csum4_fold(sum);
	ret = reject6_write(skb, &ip, &r.tcp, sizeof(r.tcp));
	if (ret < 0)
		return ret;
	stats_global_inc(stat);
	return VERDICT_REDIRECT;
}

/* Refuse the packet of an IPv6 Service without endpoints: any TCP segment is reset (a
 * SYN counted as a reject, the others as resets), UDP gets a port unreachable.
 *
 * A SYN gets a reset, not the port unreachable reject.h sends for IPv4: the answer
 * comes back while connect() still holds its socket (the SYN is sent from it, and a
 * veth pair delivers the answer in the same softirq), and the kernel's IPv6 TCP drops
 * an ICMPv6 error that finds the socket so (TcpExtLockDroppedIcmps): connect() failed
 * only on the retransmitted SYN's answer, after 1.01 s, where IPv4's took 0.0 s. A
 * reset is queued to the socket's backlog instead and refuses at once. VERDICT_REDIRECT
 * or DROP_*. */
static __always_inline int lb6_reject(struct __sk_buff *skb, const struct pkt6 *pkt)
{
	struct tcp4_hdr in;

	if (pkt->proto == IP4_PROTO_TCP) {
		if (bpf_skb_load_bytes(skb, pkt->l4_off, &in, sizeof(in)) < 0)
			return DROP_NO_BACKEND;
		return lb6_reject_tcp_reset(skb, pkt, &in,
					    pkt_opens_tcp(pkt->proto, in.flags) ?
						    GSTAT_REJECT : GSTAT_RESET);
	}
	return lb6_reject_icmp(skb, pkt);
}

#endif

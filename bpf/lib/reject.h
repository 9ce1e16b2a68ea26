/* reject.h: a Service with no endpoint at all refuses its traffic, as kube-proxy's
 * REJECT rule and Cilium do: the packet is turned, in place, into an answer sent back
 * out of the interface it came in on. A new flow (and any UDP) gets an ICMP port
 * unreachable quoting it: the client's connect() fails at once (ECONNREFUSED) instead
 * of waiting for its timeout. A segment of an established TCP connection gets a TCP
 * reset, as a host without the socket would answer (RFC 9293 3.10.7.1): TCP ignores a
 * port unreachable about an established connection, which would then hang until the
 * client's own timeout (26.6 s seen). Where a Local traffic policy left a frontend
 * without the Service's endpoints, its traffic is dropped instead
 * (SVC_F_DROP_EMPTY), also as kube-proxy does. */
#ifndef EBPFLB_REJECT_H
#define EBPFLB_REJECT_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#include "consts.h"
#include "drop_reasons.h"
#include "icmp.h"
#include "parse.h"
#include "stats.h"
#include "verdict.h"

#define ICMP_C_PORT_UNREACH	3
#define REJECT_QUOTE_LEN	28	/* the quoted IPv4 header (no options) + 8 bytes */
#define TCP_DOFF_5		0x50	/* data offset 5 words (no options), reserved 0 */

/* The IPv4 packet that replaces the refused one. */
struct icmp4_reject {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__sum16 check;
	__u32 unused;
	__u8 quote[REJECT_QUOTE_LEN];
};

/* A TCP header as read from the packet or written in a reset. */
struct tcp4_hdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;		/* data offset in words << 4 */
	__u8 flags;		/* TCP_F_* */
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

/* The reset: its IPv4 header, then the pseudo-header and TCP header summed in one
 * bpf_csum_diff (both sizes are multiples of 4, as it needs). */
struct tcp4_reset {
	struct iphdr ip;
	__be32 saddr;		/* pseudo-header */
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
	struct tcp4_hdr tcp;
};

static __always_inline __sum16 csum4_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__sum16)~s;
}

/* Refuse the packet: VERDICT_REDIRECT once it is the ICMP error to send back, else a
 * DROP_* code (a packet with IP options, shorter than the quote, or a failed write). */
static __always_inline int lb4_reject_icmp(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct icmp4_reject r;
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];
	__s64 sum;

	if (pkt->l4_off != ETH_HLEN + sizeof(struct iphdr))
		return DROP_NO_BACKEND;
	__builtin_memset(&r, 0, sizeof(r));
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
		return DROP_NO_BACKEND;
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.ttl = 64;
	r.ip.protocol = IP4_PROTO_ICMP;
	r.ip.saddr = pkt->daddr;	/* the frontend refuses */
	r.ip.daddr = pkt->saddr;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0);
	if (sum < 0)
		return DROP_WRITE;
	r.ip.check = csum4_fold(sum);
	r.type = ICMP_T_DEST_UNREACH;
	r.code = ICMP_C_PORT_UNREACH;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.type, sizeof(r) - sizeof(r.ip), 0);
	if (sum < 0)
		return DROP_WRITE;
	r.check = csum4_fold(sum);

	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0)
		return DROP_WRITE;
	stats_global_inc(GSTAT_REJECT);
	return VERDICT_REDIRECT;
}

/* The reset RFC 9293 prescribes for a segment with no connection: from the segment's
 * acknowledgment number when it has one, else acknowledging all it carried. */
static __always_inline void tcp4_reset_header(struct tcp4_hdr *rst, const struct tcp4_hdr *in,
					      __u32 seg_len)
{
	rst->source = in->dest;
	rst->dest = in->source;
	rst->doff = TCP_DOFF_5;
	if (in->flags & TCP_F_ACK) {
		rst->seq = in->ack_seq;
		rst->flags = TCP_F_RST;
	} else {
		seg_len += !!(in->flags & TCP_F_SYN) + !!(in->flags & TCP_F_FIN);
		rst->ack_seq = bpf_htonl(bpf_ntohl(in->seq) + seg_len);
		rst->flags = TCP_F_RST | TCP_F_ACK;
	}
}

/* Reset the TCP connection the packet belongs to: VERDICT_REDIRECT once the packet is
 * the reset to send back, else DROP_NO_BACKEND (a reset is never answered; a
 * malformed length) or DROP_WRITE. */
static __always_inline int lb4_reject_tcp_reset(struct __sk_buff *skb,
						const struct pkt4 *pkt,
						const struct tcp4_hdr *in)
{
	struct tcp4_reset r;
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];
	__be16 tot_len;
	__u32 hdr_len;
	__s64 sum;

	if (in->flags & TCP_F_RST)
		return DROP_NO_BACKEND;
	if (bpf_skb_load_bytes(skb, pkt->l3_off + offsetof(struct iphdr, tot_len), &tot_len,
			       sizeof(tot_len)) < 0 ||
	    bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return DROP_NO_BACKEND;
	hdr_len = pkt->l4_off - pkt->l3_off + (in->doff >> 4) * 4;
	if (bpf_ntohs(tot_len) < hdr_len)
		return DROP_NO_BACKEND;

	__builtin_memset(&r, 0, sizeof(r));
	tcp4_reset_header(&r.tcp, in, bpf_ntohs(tot_len) - hdr_len);
	r.saddr = pkt->daddr;	/* the frontend answers */
	r.daddr = pkt->saddr;
	r.proto = IP4_PROTO_TCP;
	r.len = bpf_htons(sizeof(r.tcp));
	sum = bpf_csum_diff(NULL, 0, &r.saddr, sizeof(r) - sizeof(r.ip), 0);
	if (sum < 0)
		return DROP_WRITE;
	r.tcp.check = csum4_fold(sum);
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(sizeof(r.ip) + sizeof(r.tcp));
	r.ip.ttl = 64;
	r.ip.protocol = IP4_PROTO_TCP;
	r.ip.saddr = pkt->daddr;
	r.ip.daddr = pkt->saddr;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0);
	if (sum < 0)
		return DROP_WRITE;
	r.ip.check = csum4_fold(sum);

	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r.ip) + sizeof(r.tcp), 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &r.ip, sizeof(r.ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(r.ip), &r.tcp, sizeof(r.tcp), 0) < 0)
		return DROP_WRITE;
	stats_global_inc(GSTAT_RESET);
	return VERDICT_REDIRECT;
}

/* Refuse the packet of a Service without endpoints: a TCP segment that does not open
 * a connection (no SYN, or SYN+ACK) is reset, anything else gets a port unreachable.
 * VERDICT_REDIRECT or DROP_*. */
static __always_inline int lb4_reject(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct tcp4_hdr in;

	if (pkt->proto == IP4_PROTO_TCP) {
		if (bpf_skb_load_bytes(skb, pkt->l4_off, &in, sizeof(in)) < 0)
			return DROP_NO_BACKEND;
		if (!pkt_opens_tcp(pkt->proto, in.flags))
			return lb4_reject_tcp_reset(skb, pkt, &in);
	}
	return lb4_reject_icmp(skb, pkt);
}

#endif

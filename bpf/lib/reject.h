/* reject.h: a Service with no endpoint at all refuses new flows, as kube-proxy's REJECT
 * rule and Cilium do: the packet is turned, in place, into an ICMP port unreachable
 * quoting it, and sent back out of the interface it came in on. The client's
 * connect() fails at once (ECONNREFUSED) instead of waiting for its timeout. Where a
 * Local traffic policy left a frontend without the Service's endpoints, its traffic
 * is dropped instead (SVC_F_DROP_EMPTY), also as kube-proxy does. */
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

/* The IPv4 packet that replaces the refused one. */
struct icmp4_reject {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__sum16 check;
	__u32 unused;
	__u8 quote[REJECT_QUOTE_LEN];
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
static __always_inline int lb4_reject(struct __sk_buff *skb, const struct pkt4 *pkt)
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

#endif

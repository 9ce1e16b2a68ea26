/* icmp6.h: ICMPv6 errors about a translated IPv6 flow (a backend's "port unreachable",
 * a router's "packet too big" or "time exceeded"), icmp.h's twin. The error quotes the
 * packet that caused it as the backend saw it: client (or NAT address) -> backend. The
 * client's kernel matches the quote against its own socket (client -> frontend), so the
 * quote and the outer header are rewritten as a reply of the flow would be.
 *
 * Checksums: IPv6 has no header checksum, and ICMPv6, unlike ICMP, has a pseudo-header
 * (RFC 4443 2.3): an outer address change is fixed in the ICMPv6 checksum with
 * BPF_F_PSEUDO_HDR, a quoted address or port (plain payload of the message) without
 * it. The quoted TCP/UDP checksum is left as is, as icmp.h leaves it: no receiver
 * checks a truncated quote's checksum. */
#ifndef EBPFLB_ICMP6_H
#define EBPFLB_ICMP6_H

#include <uapi/asm-generic/errno-base.h>

#include "abi.h"
#include "consts.h"
#include "csum.h"
#include "drop_reasons.h"
#include "ip6.h"
#include "maps.h"
#include "parse.h"
#include "parse6.h"
#include "stats.h"
#include "verdict.h"

#define ICMP6_HDR_LEN		8
#define ICMP6_CSUM_OFF		2
#define ICMP6_T_DEST_UNREACH	1
#define ICMP6_T_PACKET_TOO_BIG	2
#define ICMP6_T_TIME_EXCEEDED	3
#define ICMP6_T_PARAM_PROB	4	/* the error types are 1-4; 128 and up are
					 * informational (echo, neighbour discovery) */
#define IP6_SADDR_OFF		offsetof(struct ip6_hdr, saddr)
#define IP6_DADDR_OFF		offsetof(struct ip6_hdr, daddr)

/* The quoted packet of an ICMPv6 error. */
struct icmp6_quote {
	struct addr6 saddr;
	struct addr6 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
	__u32 l3_off;		/* offset of the quoted IPv6 header */
	__u32 l4_off;		/* offset of the quoted ports */
};

/* Read the quote of an ICMPv6 error packet: 0, or PKT_PASS for anything else (an
 * informational type, a quote with extension headers, of another protocol, or
 * truncated). */
static __always_inline int icmp6_parse_quote(struct __sk_buff *skb, const struct pkt6 *pkt,
					     struct icmp6_quote *q)
{
	struct ip6_hdr ip;
	struct l4_ports ports;
	__u8 type;

	__builtin_memset(q, 0, sizeof(*q));
	if (bpf_skb_load_bytes(skb, pkt->l4_off, &type, sizeof(type)) < 0)
		return PKT_PASS;
	if (type < ICMP6_T_DEST_UNREACH || type > ICMP6_T_PARAM_PROB)
		return PKT_PASS;
	q->l3_off = pkt->l4_off + ICMP6_HDR_LEN;
	if (bpf_skb_load_bytes(skb, q->l3_off, &ip, sizeof(ip)) < 0)
		return PKT_PASS;
	if ((ip.vtc_flow & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000) ||
	    (ip.nexthdr != IP4_PROTO_TCP && ip.nexthdr != IP4_PROTO_UDP))
		return PKT_PASS;
	q->l4_off = q->l3_off + IP6_HDR_LEN;
	if (bpf_skb_load_bytes(skb, q->l4_off, &ports, sizeof(ports)) < 0)
		return PKT_PASS;
	q->saddr = ip.saddr;
	q->daddr = ip.daddr;
	q->sport = ports.source;
	q->dport = ports.dest;
	q->proto = ip.nexthdr;
	return 0;
}

/* Add diff to the ICMPv6 checksum: an outer address (BPF_F_PSEUDO_HDR) through the
 * pseudo-header (csum.h says why with BPF_F_IPV6), a quoted one as payload. */
static __always_inline long icmp6_csum_diff(struct __sk_buff *skb, const struct pkt6 *pkt,
					    __s64 diff, __u64 flags)
{
	__u32 off = pkt->l4_off + ICMP6_CSUM_OFF;

	if (!(flags & BPF_F_PSEUDO_HDR))
		return bpf_l4_csum_replace(skb, off, 0, diff, flags);
	return csum6_pseudo_diff(skb, off, diff, flags & ~BPF_F_PSEUDO_HDR);
}

/* Replace the address at off (old -> new) and fix the ICMPv6 checksum: flags is
 * BPF_F_PSEUDO_HDR for an outer address, 0 for a quoted one. The 16-byte change goes
 * in as one bpf_csum_diff (l4_csum_replace's size 0: "to" is a diff). */
static __always_inline int icmp6_store_addr(struct __sk_buff *skb, const struct pkt6 *pkt,
					    __u32 off, const struct addr6 *old,
					    const struct addr6 *new, __u64 flags)
{
	struct addr6 from = *old, to = *new;
	__s64 diff;

	if (addr6_eq(&from, &to))
		return 0;
	diff = bpf_csum_diff(from.w, sizeof(from), to.w, sizeof(to), 0);
	if (diff < 0)
		return DROP_WRITE;
	if (bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0) < 0 ||
	    icmp6_csum_diff(skb, pkt, diff, flags) < 0)
		return DROP_WRITE;
	return 0;
}

/* Replace a quoted port at off (old -> new) and fix the ICMPv6 checksum. */
static __always_inline int icmp6_store_port(struct __sk_buff *skb, const struct pkt6 *pkt,
					    __u32 off, __be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) < 0 ||
	    bpf_l4_csum_replace(skb, pkt->l4_off + ICMP6_CSUM_OFF, old, new, sizeof(new)) < 0)
		return DROP_WRITE;
	return 0;
}

/* An ICMPv6 error from the backend side of a tracked flow: rewrite it as the flow's
 * replies are (the quote's backend becomes the frontend, a NAT address the client).
 * Anything else passes untouched. A VERDICT_* or DROP_*. */
static __always_inline int icmp6_reverse(struct __sk_buff *skb, const struct pkt6 *pkt)
{
	struct icmp6_quote q;
	struct ct6_value *ct;
	struct lb6_rnat *rnat;
	struct ct6_key key;
	__u32 svc_id;
	int ret;

	if (icmp6_parse_quote(skb, pkt, &q))
		return VERDICT_PASS;
	/* The quote is client -> backend; the flow's replies are backend -> client. */
	__builtin_memset(&key, 0, sizeof(key));
	key.saddr = q.daddr;
	key.daddr = q.saddr;
	key.sport = q.dport;
	key.dport = q.sport;
	key.proto = q.proto;
	key.dir = CT_DIR_REPLY;
	ct = map_ct6_lookup(&key);
	if (!ct)
		return VERDICT_PASS;
	svc_id = ct->svc_id;
	rnat = map_rnat6_lookup(&svc_id);
	if (!rnat || !rnat->port)	/* a deleted service's entry is zeroed */
		return VERDICT_PASS;
	ret = icmp6_store_addr(skb, pkt, q.l3_off + IP6_DADDR_OFF, &q.daddr, &rnat->address, 0);
	if (!ret)
		ret = icmp6_store_port(skb, pkt, q.l4_off + offsetof(struct l4_ports, dest),
				       q.dport, rnat->port);
	if (!ret && !addr6_is_zero(&ct->peer_address)) {
		ret = icmp6_store_addr(skb, pkt, q.l3_off + IP6_SADDR_OFF, &q.saddr,
				       &ct->peer_address, 0);
		if (!ret)
			ret = icmp6_store_port(skb, pkt,
					       q.l4_off + offsetof(struct l4_ports, source),
					       q.sport, ct->peer_port);
		if (!ret)
			ret = icmp6_store_addr(skb, pkt, pkt->l3_off + IP6_DADDR_OFF,
					       &pkt->daddr, &ct->peer_address,
					       BPF_F_PSEUDO_HDR);
	}
	/* Sent by the backend itself: it answers as the frontend. A router on the way
	 * keeps its own address. */
	if (!ret && addr6_eq(&pkt->saddr, &q.daddr))
		ret = icmp6_store_addr(skb, pkt, pkt->l3_off + IP6_SADDR_OFF, &pkt->saddr,
				       &rnat->address, BPF_F_PSEUDO_HDR);
	if (ret < 0)
		return ret;
	stats_global_inc(GSTAT_ICMP_ERROR);
	return VERDICT_GO_ON;
}

#endif

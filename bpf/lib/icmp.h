/* icmp.h: ICMP errors about a translated flow (a backend's "port unreachable", a
 * router's "fragmentation needed" or "time exceeded"). The error quotes the packet
 * that caused it, as the backend saw it: client (or NAT address) -> backend. The
 * client's kernel matches the quote against its own socket (client -> frontend), so
 * the quote and the outer header are rewritten as a reply of the flow would be.
 *
 * Checksums: the outer addresses are in the IP checksum only (ICMP has no
 * pseudo-header). The quoted IP header carries its own checksum, fixed with it, so
 * the ICMP checksum, which covers the quote, sees the header's sum unchanged; only the
 * quoted ports need an ICMP checksum fix. The quoted TCP/UDP checksum is left as is:
 * no receiver checks a truncated quote's checksum. */
#ifndef EBPFLB_ICMP_H
#define EBPFLB_ICMP_H

#include <uapi/linux/ip.h>

#include "abi.h"
#include "consts.h"
#include "ct.h"
#include "drop_reasons.h"
#include "lb.h"
#include "parse.h"
#include "stats.h"
#include "verdict.h"

#define ICMP_HDR_LEN		8
#define ICMP_CSUM_OFF		2
#define ICMP_T_DEST_UNREACH	3
#define ICMP_T_TIME_EXCEEDED	11
#define ICMP_T_PARAMETERPROB	12

/* The quoted packet of an ICMP error. */
struct icmp4_quote {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
	__u32 l3_off;		/* offset of the quoted IPv4 header */
	__u32 l4_off;		/* offset of the quoted ports */
};

/* Read the quote of an ICMP error packet: 0, or PKT_PASS for anything else (another
 * ICMP type, a quote with IP options, of another protocol, or truncated). */
static __always_inline int icmp4_parse_quote(struct __sk_buff *skb, const struct pkt4 *pkt,
					     struct icmp4_quote *q)
{
	struct iphdr ip;
	struct l4_ports ports;
	__u8 type;

	__builtin_memset(q, 0, sizeof(*q));
	if (bpf_skb_load_bytes(skb, pkt->l4_off, &type, sizeof(type)) < 0)
		return PKT_PASS;
	if (type != ICMP_T_DEST_UNREACH && type != ICMP_T_TIME_EXCEEDED &&
	    type != ICMP_T_PARAMETERPROB)
		return PKT_PASS;
	q->l3_off = pkt->l4_off + ICMP_HDR_LEN;
	if (bpf_skb_load_bytes(skb, q->l3_off, &ip, sizeof(ip)) < 0)
		return PKT_PASS;
	if (ip.version != 4 || ip.ihl != 5 ||
	    (ip.protocol != IP4_PROTO_TCP && ip.protocol != IP4_PROTO_UDP))
		return PKT_PASS;
	q->l4_off = q->l3_off + sizeof(ip);
	if (bpf_skb_load_bytes(skb, q->l4_off, &ports, sizeof(ports)) < 0)
		return PKT_PASS;
	q->saddr = ip.saddr;
	q->daddr = ip.daddr;
	q->sport = ports.source;
	q->dport = ports.dest;
	q->proto = ip.protocol;
	return 0;
}

/* Replace an address at off (old -> new) and fix the IP checksum at csum_off. */
static __always_inline int icmp4_store_addr(struct __sk_buff *skb, __u32 off, __u32 csum_off,
					    __be32 old, __be32 new)
{
	if (old == new)
		return 0;
	if (bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) < 0 ||
	    bpf_l3_csum_replace(skb, csum_off, old, new, sizeof(new)) < 0)
		return DROP_WRITE;
	return 0;
}

/* Replace a quoted port at off (old -> new) and fix the ICMP checksum. */
static __always_inline int icmp4_store_port(struct __sk_buff *skb, const struct pkt4 *pkt,
					    __u32 off, __be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) < 0 ||
	    bpf_l4_csum_replace(skb, pkt->l4_off + ICMP_CSUM_OFF, old, new, sizeof(new)) < 0)
		return DROP_WRITE;
	return 0;
}

/* An ICMP error from the backend side of a tracked flow: rewrite it as the flow's
 * replies are (the quote's backend becomes the frontend, a NAT address the client).
 * Anything else passes untouched. A VERDICT_* or DROP_*. */
static __always_inline int icmp4_reverse(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	__u32 outer_check = pkt->l3_off + offsetof(struct iphdr, check);
	__u32 quote_check;
	struct icmp4_quote q;
	struct ct4_value *ct;
	struct lb4_rnat *rnat;
	struct ct4_key key;
	int ret;

	if (icmp4_parse_quote(skb, pkt, &q))
		return VERDICT_PASS;
	/* The quote is client -> backend; the flow's replies are backend -> client. */
	ct4_key_init(&key, q.daddr, q.saddr, q.dport, q.sport, q.proto, CT_DIR_REPLY);
	ct = map_ct4_lookup(&key);
	if (!ct)
		return VERDICT_PASS;
	rnat = lb4_lookup_rnat(ct->svc_id);
	if (!rnat)
		return VERDICT_PASS;
	quote_check = q.l3_off + offsetof(struct iphdr, check);
	ret = icmp4_store_addr(skb, q.l3_off + offsetof(struct iphdr, daddr), quote_check,
			       q.daddr, rnat->address);
	if (!ret)
		ret = icmp4_store_port(skb, pkt, q.l4_off + offsetof(struct l4_ports, dest),
				       q.dport, rnat->port);
	if (!ret && ct->peer_address) {
		ret = icmp4_store_addr(skb, q.l3_off + offsetof(struct iphdr, saddr),
				       quote_check, q.saddr, ct->peer_address);
		if (!ret)
			ret = icmp4_store_port(skb, pkt,
					       q.l4_off + offsetof(struct l4_ports, source),
					       q.sport, ct->peer_port);
		if (!ret)
			ret = icmp4_store_addr(skb, pkt->l3_off + offsetof(struct iphdr, daddr),
					       outer_check, pkt->daddr, ct->peer_address);
	}
	/* Sent by the backend itself: it answers as the frontend. A router on the way
	 * keeps its own address. */
	if (!ret && pkt->saddr == q.daddr)
		ret = icmp4_store_addr(skb, pkt->l3_off + offsetof(struct iphdr, saddr),
				       outer_check, pkt->saddr, rnat->address);
	if (ret < 0)
		return ret;
	stats_global_inc(GSTAT_ICMP_ERROR);
	return VERDICT_GO_ON;
}

#endif

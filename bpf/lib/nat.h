/* nat.h: source and destination NAT: rewriting a packet's destination (service ->
 * backend) or source (backend -> service) address and port, with the checksums fixed
 * incrementally (csum.h), and claiming a free source-NAT port for a new flow. Works on
 * offsets only: bpf_skb_store_bytes may move packet data, so no pointer is kept. */
#ifndef EBPFLB_NAT_H
#define EBPFLB_NAT_H

#include <uapi/linux/ip.h>

#include "abi.h"
#include "consts.h"
#include "csum.h"
#include "ct.h"
#include "drop_reasons.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

/* Write addr at addr_off and port at port_off, replacing old_addr/old_port. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, const struct pkt4 *pkt,
					__u32 addr_off, __be32 old_addr, __be32 addr,
					__u32 port_off, __be16 old_port, __be16 port)
{
	int ret;

	if (addr != old_addr) {
		if (bpf_skb_store_bytes(skb, addr_off, &addr, sizeof(addr), 0) < 0)
			return DROP_WRITE;
		ret = csum4_addr_replace(skb, pkt, old_addr, addr);
		if (ret < 0)
			return ret;
	}
	if (port != old_port) {
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return DROP_WRITE;
		ret = csum4_port_replace(skb, pkt, old_port, port);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Destination -> addr:port (client -> service becomes client -> backend). TCP and UDP
 * keep their ports at the same offsets. */
static __always_inline int nat4_rewrite_dst(struct __sk_buff *skb, const struct pkt4 *pkt,
					    __be32 addr, __be16 port)
{
	return nat4_rewrite(skb, pkt, pkt->l3_off + offsetof(struct iphdr, daddr), pkt->daddr,
			    addr, pkt->l4_off + offsetof(struct l4_ports, dest), pkt->dport, port);
}

/* Source -> addr:port (backend -> client becomes service -> client). */
static __always_inline int nat4_rewrite_src(struct __sk_buff *skb, const struct pkt4 *pkt,
					    __be32 addr, __be16 port)
{
	return nat4_rewrite(skb, pkt, pkt->l3_off + offsetof(struct iphdr, saddr), pkt->saddr,
			    addr, pkt->l4_off + offsetof(struct l4_ports, source), pkt->sport, port);
}

/* The bytes from the IPv4 header checksum to the TCP/UDP destination port: contiguous
 * when the IP header has no options. */
struct nat4_block {
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
} __attribute__((packed));

/* The packet's addresses and ports become saddr:sport -> daddr:dport, with one
 * bpf_skb_store_bytes (the IP header checksum computed here, in the same write) and at
 * most two L4 checksum fixes (the addresses through the pseudo-header, the ports), where
 * rewriting address and port one at a time takes up to four writes and six checksum
 * calls. A header with options takes that slower way. 0 or DROP_WRITE. */
static __always_inline int nat4_rewrite_flow(struct __sk_buff *skb, const struct pkt4 *pkt,
					     __be32 saddr, __be32 daddr, __be16 sport,
					     __be16 dport)
{
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct nat4_block *old = data + ETH_HLEN + offsetof(struct iphdr, check);
	struct nat4_block blk;
	__u64 flags = csum4_l4_flags(pkt);
	__u32 diff = 0;
	int ret;

	if (pkt->l3_off != ETH_HLEN || pkt->l4_off != ETH_HLEN + sizeof(struct iphdr) ||
	    (void *)(old + 1) > data_end) {
		ret = nat4_rewrite_dst(skb, pkt, daddr, dport);
		if (ret == 0)
			ret = nat4_rewrite_src(skb, pkt, saddr, sport);
		return ret;
	}
	if (saddr != pkt->saddr)
		diff = csum_diff32(diff, pkt->saddr, saddr);
	if (daddr != pkt->daddr)
		diff = csum_diff32(diff, pkt->daddr, daddr);
	blk.check = diff ? csum4_hdr_update(old->check, diff) : old->check;
	blk.saddr = saddr;
	blk.daddr = daddr;
	blk.sport = sport;
	blk.dport = dport;
	if (bpf_skb_store_bytes(skb, pkt->l3_off + offsetof(struct iphdr, check), &blk,
				sizeof(blk), 0) < 0)
		return DROP_WRITE;
	if (diff && bpf_l4_csum_replace(skb, pkt->csum_off, 0, diff,
					BPF_F_PSEUDO_HDR | flags) < 0)
		return DROP_WRITE;
	if ((sport != pkt->sport || dport != pkt->dport) &&
	    bpf_l4_csum_replace(skb, pkt->csum_off,
				(__u32)pkt->sport | (__u32)pkt->dport << 16,
				(__u32)sport | (__u32)dport << 16, flags | 4) < 0)
		return DROP_WRITE;
	return 0;
}

/* Take over the NAT port of the REPLY entry at key if its flow is over (ct_flow_over):
 * the old client's SERVICE entry goes first, so its next packet is a new flow with a
 * port of its own, then value replaces the entry. 1 when taken. */
static __always_inline int nat4_take_over(struct ct4_key *key, struct ct4_value *value)
{
	struct ct4_value *old = map_ct4_lookup(key);
	struct ct4_key service;

	if (!old || !ct_flow_over(old->flags, old->last_seen_ns, key->proto, value->created_ns))
		return 0;
	/* keyed as its client sent: peer (the client) -> nat (the frontend) */
	ct4_key_init(&service, old->peer_address, old->nat_address, old->peer_port, old->nat_port,
		     key->proto, CT_DIR_SERVICE);
	map_ct4_delete(&service);
	return map_ct4_update(key, value) == 0;
}

/* Claim a free source-NAT port for a new flow to be->address:be->port from snat_addr.
 * The port's owner is the flow's REPLY entry (value, from ct4_value_init; the client
 * is added to it as the peer): it is inserted only where none exists, trying up to
 * NAT_PORT_TRIES ports from a random start. Fills *key and *snat_port; 0 or
 * DROP_NAT_PORT_FULL (counted). */
static __always_inline int nat4_claim_port(struct ct4_key *key, struct ct4_value *value,
					   const struct pkt4 *pkt, const struct lb4_backend *be,
					   __be32 snat_addr, __be16 *snat_port)
{
	__u32 first = bpf_get_prandom_u32() % NAT_PORT_COUNT;
	__u32 i;

	value->peer_address = pkt->saddr;
	value->peer_port = pkt->sport;
	for (i = 0; i < NAT_PORT_TRIES; i++) {
		__be16 port = bpf_htons(NAT_PORT_MIN + (first + i) % NAT_PORT_COUNT);

		ct4_key_init(key, be->address, snat_addr, be->port, port, pkt->proto,
			     CT_DIR_REPLY);
		if (map_ct4_insert(key, value) == 0 || nat4_take_over(key, value)) {
			*snat_port = port;
			return 0;
		}
	}
	stats_global_inc(GSTAT_NAT_PORT_FULL);
	return DROP_NAT_PORT_FULL;
}

#endif

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

/* The bytes from the IPv4 header checksum to the TCP checksum, contiguous when the IP
 * header has no options; a UDP header ends with its checksum, 10 bytes sooner
 * (NAT4_BLOCK_UDP). */
struct nat4_block {
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be16 mid[6];		/* TCP seq, ack, offset/flags, window; UDP length, check */
	__sum16 tcp_check;
} __attribute__((packed));

#define NAT4_BLOCK_TCP		sizeof(struct nat4_block)
#define NAT4_BLOCK_UDP		(offsetof(struct nat4_block, mid) + 4)

/* nat4_rewrite_flow on a header without options, the block (len bytes: NAT4_BLOCK_*)
 * in the packet: the IP header checksum is computed here, the address change goes into
 * the L4 checksum with one bpf_l4_csum_replace (BPF_F_PSEUDO_HDR: right in every
 * checksum state), the port change is added here (csum_l4_ports), and one
 * bpf_skb_store_bytes writes it all: two helper calls, where the fields one at a time
 * took up to four writes and six checksum calls. 1 when the block is not in the linear
 * data (the caller then goes field by field), else 0 or DROP_WRITE. */
static __always_inline int nat4_rewrite_block(struct __sk_buff *skb, const struct pkt4 *pkt,
					      __be32 saddr, __be32 daddr, __be16 sport,
					      __be16 dport, const __u32 len)
{
	void *data, *data_end, *at;
	__u32 from = (__u32)pkt->sport | (__u32)pkt->dport << 16;
	__u32 to = (__u32)sport | (__u32)dport << 16;
	__u32 diff = 0, l4_check = CSUM_L4_UNKNOWN;
	__u64 flags = csum4_l4_flags(pkt);
	struct nat4_block blk;
	__u16 *blk_l4_check = (void *)&blk + len - 2;
	__u16 after;

	skb_barrier(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	at = data + ETH_HLEN + offsetof(struct iphdr, check);
	if (at + len > data_end)
		return 1;
	__builtin_memcpy(&blk, at, len);
	if (saddr != pkt->saddr)
		diff = csum_diff32(diff, pkt->saddr, saddr);
	if (daddr != pkt->daddr)
		diff = csum_diff32(diff, pkt->daddr, daddr);
	if (diff) {
		if (bpf_l4_csum_replace(skb, pkt->csum_off, 0, diff, BPF_F_PSEUDO_HDR | flags) < 0)
			return DROP_WRITE;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		at = data + ETH_HLEN + offsetof(struct iphdr, check);
		if (at + len > data_end)
			return DROP_WRITE;
		__builtin_memcpy(&after, at + len - 2, sizeof(after));
		l4_check = csum_l4_ports(*blk_l4_check, after, diff, from, to,
					 pkt->proto == IP4_PROTO_UDP);
		*blk_l4_check = l4_check == CSUM_L4_UNKNOWN ? after : l4_check;
		blk.check = csum4_hdr_update(blk.check, diff);
	}
	blk.saddr = saddr;
	blk.daddr = daddr;
	blk.sport = sport;
	blk.dport = dport;
	if (bpf_skb_store_bytes(skb, pkt->l3_off + offsetof(struct iphdr, check), &blk, len,
				0) < 0)
		return DROP_WRITE;
	if (l4_check == CSUM_L4_UNKNOWN && from != to &&
	    bpf_l4_csum_replace(skb, pkt->csum_off, from, to, flags | 4) < 0)
		return DROP_WRITE;
	return 0;
}

/* The packet's addresses and ports become saddr:sport -> daddr:dport, in one store
 * (nat4_rewrite_block) when the IP header has no options, else field by field. 0 or
 * DROP_WRITE. */
static __always_inline int nat4_rewrite_flow(struct __sk_buff *skb, const struct pkt4 *pkt,
					     __be32 saddr, __be32 daddr, __be16 sport,
					     __be16 dport)
{
	int ret = 1;

	if (pkt->l3_off == ETH_HLEN && pkt->l4_off == ETH_HLEN + sizeof(struct iphdr))
		ret = pkt->proto == IP4_PROTO_TCP ?
		      nat4_rewrite_block(skb, pkt, saddr, daddr, sport, dport, NAT4_BLOCK_TCP) :
		      nat4_rewrite_block(skb, pkt, saddr, daddr, sport, dport, NAT4_BLOCK_UDP);
	if (ret <= 0)
		return ret;
	ret = nat4_rewrite_dst(skb, pkt, daddr, dport);
	if (ret == 0)
		ret = nat4_rewrite_src(skb, pkt, saddr, sport);
	return ret;
}

/* Write the REPLY entry (key, value) that owns a NAT port: inserted where the port was
 * free (old NULL), else written over old, the entry of a flow that is over
 * (ct_flow_over), whose client's SERVICE entry (made in *service) goes first, so its
 * next packet is a new flow with a port of its own. 0, or < 0 where another CPU took
 * the free port meanwhile. */
static __always_inline int nat4_take_port(struct ct4_key *key, struct ct4_value *value,
					  const struct ct4_value *old, struct ct4_key *service)
{
	if (!old)
		return map_ct4_insert(key, value);
	/* keyed as its client sent: peer (the client) -> nat (the frontend) */
	ct4_key_init(service, old->peer_address, old->nat_address, old->peer_port, old->nat_port,
		     key->proto, CT_DIR_SERVICE);
	map_ct4_delete(service);
	return map_ct4_update(key, value);
}

/* Claim a free source-NAT port for a new flow to be->address:be->port from snat_addr.
 * The port's owner is the flow's REPLY entry (value, from ct4_value_init; the client
 * is added to it as the peer): up to NAT_PORT_TRIES ports from a random start are
 * looked up, and the first one free, or whose flow is over, is taken (nat4_take_port).
 * Only the look-up is in the loop: the verifier walks a loop's body once per try.
 * Fills *key and *snat_port (*service is scratch); 0 or DROP_NAT_PORT_FULL (counted,
 * also when another CPU took the port between look-up and insert). */
static __always_inline int nat4_claim_port(struct ct4_key *key, struct ct4_value *value,
					   struct ct4_key *service, const struct pkt4 *pkt,
					   const struct lb4_backend *be, __be32 snat_addr,
					   __be16 *snat_port)
{
	__u32 first = bpf_get_prandom_u32() % NAT_PORT_COUNT;
	struct ct4_value *old = NULL;
	__be16 port = 0;
	int found = 0;
	__u64 sum;
	__u32 i;

	value->peer_address = pkt->saddr;
	value->peer_port = pkt->sport;
	/* the key with port 0, then only its port changes: and its hash sum with it */
	ct4_key_init(key, be->address, snat_addr, be->port, 0, pkt->proto, CT_DIR_REPLY);
	sum = ct_hash_sum((const __u32 *)key, sizeof(*key) / 4);
	for (i = 0; i < NAT_PORT_TRIES; i++) {
		port = bpf_htons(NAT_PORT_MIN + (first + i) % NAT_PORT_COUNT);
		key->dport = port;
		if (!map_ct4_probe(key, sum + CT4_DPORT_SUM(port), &old) ||
		    (old && ct_flow_over(old->flags, old->last_seen_ns, key->proto,
					 value->created_ns))) {
			found = 1;
			break;
		}
	}
	if (found && nat4_take_port(key, value, old, service) == 0) {
		*snat_port = port;
		return 0;
	}
	stats_global_inc(GSTAT_NAT_PORT_FULL);
	return DROP_NAT_PORT_FULL;
}

#endif

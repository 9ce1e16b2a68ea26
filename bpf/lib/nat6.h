/* nat6.h: IPv6 source and destination NAT (nat.h's twin): rewriting 16-byte addresses
 * and ports with the TCP/UDP checksum fixed incrementally, and claiming a free
 * source-NAT port (same NAT_PORT_* range as IPv4). Offsets only, no packet pointers. */
#ifndef EBPFLB_NAT6_H
#define EBPFLB_NAT6_H

#include "abi.h"
#include "consts.h"
#include "csum.h"
#include "ct6.h"
#include "drop_reasons.h"
#include "ip6.h"
#include "maps.h"
#include "parse6.h"
#include "stats.h"

/* UDP checksum 0 would mean "none" (invalid over IPv6, RFC 8200 8.1, but a packet that
 * has it is passed on as it came): as csum4_l4_flags. */
static __always_inline __u64 csum6_l4_flags(const struct pkt6 *pkt)
{
	return pkt->proto == IP4_PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* An IPv6 address changed from old to new. Unlike IPv4 there is no IP header checksum
 * to fix, only the TCP/UDP one through its pseudo-header; an address is 16 bytes, more
 * than bpf_l4_csum_replace's 2 or 4, so the difference is summed by bpf_csum_diff and
 * applied as a diff (size 0). */
static __always_inline int csum6_addr_replace(struct __sk_buff *skb, const struct pkt6 *pkt,
					      struct addr6 *old, struct addr6 *new)
{
	__s64 diff = bpf_csum_diff(old->w, sizeof(*old), new->w, sizeof(*new), 0);

	if (diff < 0)
		return DROP_WRITE;
	if (csum6_pseudo_diff(skb, pkt->csum_off, diff, csum6_l4_flags(pkt)) < 0)
		return DROP_WRITE;
	return 0;
}

/* Write *addr at addr_off and port at port_off, replacing *old_addr/old_port. */
static __always_inline int nat6_rewrite(struct __sk_buff *skb, const struct pkt6 *pkt,
					__u32 addr_off, const struct addr6 *old_addr,
					const struct addr6 *addr, __u32 port_off,
					__be16 old_port, __be16 port)
{
	struct addr6 old = *old_addr, new = *addr;

	if (!addr6_eq(&old, &new)) {
		if (bpf_skb_store_bytes(skb, addr_off, &new, sizeof(new), 0) < 0)
			return DROP_WRITE;
		if (csum6_addr_replace(skb, pkt, &old, &new) < 0)
			return DROP_WRITE;
	}
	if (port != old_port) {
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return DROP_WRITE;
		if (bpf_l4_csum_replace(skb, pkt->csum_off, old_port, port,
					csum6_l4_flags(pkt) | sizeof(port)) < 0)
			return DROP_WRITE;
	}
	return 0;
}

/* Destination -> addr:port (client -> service becomes client -> backend). */
static __always_inline int nat6_rewrite_dst(struct __sk_buff *skb, const struct pkt6 *pkt,
					    const struct addr6 *addr, __be16 port)
{
	return nat6_rewrite(skb, pkt, pkt->l3_off + offsetof(struct ip6_hdr, daddr),
			    &pkt->daddr, addr, pkt->l4_off + offsetof(struct l4_ports, dest),
			    pkt->dport, port);
}

/* Source -> addr:port (backend -> client becomes service -> client). */
static __always_inline int nat6_rewrite_src(struct __sk_buff *skb, const struct pkt6 *pkt,
					    const struct addr6 *addr, __be16 port)
{
	return nat6_rewrite(skb, pkt, pkt->l3_off + offsetof(struct ip6_hdr, saddr),
			    &pkt->saddr, addr, pkt->l4_off + offsetof(struct l4_ports, source),
			    pkt->sport, port);
}

/* The bytes from the IPv6 source address to the TCP checksum, contiguous when no
 * extension header sits between; a UDP header ends with its checksum, 10 bytes sooner
 * (NAT6_BLOCK_UDP). */
struct nat6_block {
	struct addr6 saddr;
	struct addr6 daddr;
	__be16 sport;
	__be16 dport;
	__be16 mid[6];		/* TCP seq, ack, offset/flags, window; UDP length, check */
	__sum16 tcp_check;
} __attribute__((packed));

#define NAT6_BLOCK_TCP		sizeof(struct nat6_block)
#define NAT6_BLOCK_UDP		(offsetof(struct nat6_block, mid) + 4)

/* The diff of address old -> new added to sum (bpf_csum_diff's, without the call). */
static __always_inline __u32 csum6_addr_diff(__u32 sum, const struct addr6 *old,
					     const struct addr6 *new)
{
	sum = csum_diff32(sum, old->w[0], new->w[0]);
	sum = csum_diff32(sum, old->w[1], new->w[1]);
	sum = csum_diff32(sum, old->w[2], new->w[2]);
	return csum_diff32(sum, old->w[3], new->w[3]);
}

/* nat6_rewrite_flow without extension headers, the block (len bytes: NAT6_BLOCK_*) in
 * the packet: as nat4_rewrite_block, the address diff summed here and applied in one
 * pseudo-header fix, the port change added here (csum_l4_ports), one store. 1 when the
 * block is not in the linear data, else 0 or DROP_WRITE. */
static __always_inline int nat6_rewrite_block(struct __sk_buff *skb, const struct pkt6 *pkt,
					      const struct addr6 *saddr,
					      const struct addr6 *daddr, __be16 sport,
					      __be16 dport, const __u32 len)
{
	void *data, *data_end, *at;
	__u32 from = (__u32)pkt->sport | (__u32)pkt->dport << 16;
	__u32 to = (__u32)sport | (__u32)dport << 16;
	__u32 diff = 0, l4_check = CSUM_L4_UNKNOWN;
	__u64 flags = csum6_l4_flags(pkt);
	struct nat6_block blk;
	__u16 *blk_l4_check = (void *)&blk + len - 2;
	int moved = 0;
	__u16 after;

	skb_barrier(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	at = data + ETH_HLEN + offsetof(struct ip6_hdr, saddr);
	if (at + len > data_end)
		return 1;
	__builtin_memcpy(&blk, at, len);
	blk.saddr = *saddr;
	blk.daddr = *daddr;
	if (!addr6_eq(&blk.saddr, &pkt->saddr)) {
		diff = csum6_addr_diff(diff, &pkt->saddr, &blk.saddr);
		moved = 1;
	}
	if (!addr6_eq(&blk.daddr, &pkt->daddr)) {
		diff = csum6_addr_diff(diff, &pkt->daddr, &blk.daddr);
		moved = 1;
	}
	if (moved) {
		if (csum6_pseudo_diff(skb, pkt->csum_off, diff, flags) < 0)
			return DROP_WRITE;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		at = data + ETH_HLEN + offsetof(struct ip6_hdr, saddr);
		if (at + len > data_end)
			return DROP_WRITE;
		__builtin_memcpy(&after, at + len - 2, sizeof(after));
		l4_check = csum_l4_ports(*blk_l4_check, after, diff, from, to,
					 pkt->proto == IP4_PROTO_UDP);
		*blk_l4_check = l4_check == CSUM_L4_UNKNOWN ? after : l4_check;
	}
	blk.sport = sport;
	blk.dport = dport;
	if (bpf_skb_store_bytes(skb, pkt->l3_off + offsetof(struct ip6_hdr, saddr), &blk, len,
				0) < 0)
		return DROP_WRITE;
	if (l4_check == CSUM_L4_UNKNOWN && from != to &&
	    bpf_l4_csum_replace(skb, pkt->csum_off, from, to, flags | 4) < 0)
		return DROP_WRITE;
	return 0;
}

/* The packet's addresses and ports become *saddr:sport -> *daddr:dport, in one store
 * (nat6_rewrite_block) when no extension header sits between, else field by field. 0
 * or DROP_WRITE. */
static __always_inline int nat6_rewrite_flow(struct __sk_buff *skb, const struct pkt6 *pkt,
					     const struct addr6 *saddr,
					     const struct addr6 *daddr, __be16 sport,
					     __be16 dport)
{
	int ret = 1;

	if (pkt->l3_off == ETH_HLEN && pkt->l4_off == ETH_HLEN + sizeof(struct ip6_hdr))
		ret = pkt->proto == IP4_PROTO_TCP ?
		      nat6_rewrite_block(skb, pkt, saddr, daddr, sport, dport, NAT6_BLOCK_TCP) :
		      nat6_rewrite_block(skb, pkt, saddr, daddr, sport, dport, NAT6_BLOCK_UDP);
	if (ret <= 0)
		return ret;
	ret = nat6_rewrite_dst(skb, pkt, daddr, dport);
	if (ret == 0)
		ret = nat6_rewrite_src(skb, pkt, saddr, sport);
	return ret;
}

/* As nat4_take_port. */
static __always_inline int nat6_take_port(struct ct6_key *key, struct ct6_value *value,
					  const struct ct6_value *old, struct ct6_key *service)
{
	if (!old)
		return map_ct6_insert(key, value);
	ct6_key_init(service, &old->peer_address, &old->nat_address, old->peer_port,
		     old->nat_port, key->proto, CT_DIR_SERVICE);
	map_ct6_delete(service);
	return map_ct6_update(key, value);
}

/* Claim a free source-NAT port for a new flow to be from *snat_addr, as
 * nat4_claim_port: the flow's REPLY entry owns it. Fills *key and *snat_port; 0 or
 * DROP_NAT_PORT_FULL (counted). */
static __always_inline int nat6_claim_port(struct ct6_key *key, struct ct6_value *value,
					   struct ct6_key *service, const struct pkt6 *pkt,
					   const struct lb6_backend *be,
					   const struct addr6 *snat_addr, __be16 *snat_port)
{
	__u32 first = bpf_get_prandom_u32() % NAT_PORT_COUNT;
	struct ct6_value *old = NULL;
	__be16 port = 0;
	int found = 0;
	__u64 sum;
	__u32 i;

	value->peer_address = pkt->saddr;
	value->peer_port = pkt->sport;
	/* the key with port 0, then only its port changes: and its hash sum with it */
	ct6_key_init(key, &be->address, snat_addr, be->port, 0, pkt->proto, CT_DIR_REPLY);
	sum = ct_hash_sum((const __u32 *)key, sizeof(*key) / 4);
	for (i = 0; i < NAT_PORT_TRIES; i++) {
		port = bpf_htons(NAT_PORT_MIN + (first + i) % NAT_PORT_COUNT);
		key->dport = port;
		if (!map_ct6_probe(key, sum + CT6_DPORT_SUM(port), &old) ||
		    (old && ct_flow_over(old->flags, old->last_seen_ns, key->proto,
					 value->created_ns))) {
			found = 1;
			break;
		}
	}
	if (found && nat6_take_port(key, value, old, service) == 0) {
		*snat_port = port;
		return 0;
	}
	stats_global_inc(GSTAT_NAT_PORT_FULL);
	return DROP_NAT_PORT_FULL;
}

#endif

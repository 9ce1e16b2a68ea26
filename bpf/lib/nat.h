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
		if (map_ct4_insert(key, value) == 0) {
			*snat_port = port;
			return 0;
		}
	}
	stats_global_inc(GSTAT_NAT_PORT_FULL);
	return DROP_NAT_PORT_FULL;
}

#endif

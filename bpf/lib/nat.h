/* nat.h: rewriting a packet's destination (service -> backend) or source (backend ->
 * service) address and port, with the checksums fixed incrementally (csum.h). Works on
 * offsets only: bpf_skb_store_bytes may move packet data, so no pointer is kept. */
#ifndef EBPFLB_NAT_H
#define EBPFLB_NAT_H

#include <uapi/linux/ip.h>

#include "csum.h"
#include "drop_reasons.h"
#include "parse.h"

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

#endif

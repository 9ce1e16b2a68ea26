/* xdp_fib.h: where a translated XDP frame goes next: the kernel's FIB (routes and
 * neighbours) for its new destination, and the Ethernet addresses of that hop. A
 * look-up that does not succeed outright (no neighbour entry yet, a blackhole or
 * unreachable route, a packet over the MTU, a local address) sends the frame to the
 * stack instead, which resolves the neighbour, answers with ICMP, or delivers it; so
 * does a next hop out of an interface ebpflb_xdpdev does not list: the agent lists only
 * those a redirected frame reaches (ebpflb/dataplane/bpf/xdp.py says which). */
#ifndef EBPFLB_XDP_FIB_H
#define EBPFLB_XDP_FIB_H

#include <uapi/linux/if_ether.h>

#include "ip6.h"
#include "maps.h"
#include "stats.h"
#include "xdp_nat.h"
#include "xdp_parse.h"

/* Address families (written out: <linux/socket.h> is not included, see parse.h). */
#define XDP_AF_INET		2
#define XDP_AF_INET6		10

/* Whether a successful look-up's interface may take a redirected frame. */
static __always_inline int xdp_fib_usable(long ret, struct bpf_fib_lookup *fib)
{
	__u32 ifindex = fib->ifindex;

	if (ret != BPF_FIB_LKUP_RET_SUCCESS || !map_xdpdev_lookup(&ifindex)) {
		stats_global_inc(GSTAT_XDP_FIB_PASS);
		return 0;
	}
	return 1;
}

/* Look up t's IPv4 route from the frame's ingress interface: 1 when the frame can be
 * forwarded from here (fib->ifindex, smac, dmac are set), else 0. A TTL that would
 * expire is the stack's to answer. */
static __always_inline int xdp4_fib_lookup(struct xdp_md *ctx, const struct pkt4 *pkt,
					   const struct xdp_ip *xip,
					   const struct xdp4_tuple *t,
					   struct bpf_fib_lookup *fib)
{
	if (xip->ttl <= 1)
		return 0;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = XDP_AF_INET;
	fib->l4_protocol = pkt->proto;
	fib->sport = t->sport;
	fib->dport = t->dport;
	fib->tot_len = xip->ip_len;
	fib->ipv4_src = t->saddr;
	fib->ipv4_dst = t->daddr;
	fib->ifindex = ctx->ingress_ifindex;
	return xdp_fib_usable(bpf_fib_lookup(ctx, fib, sizeof(*fib), 0), fib);
}

/* As xdp4_fib_lookup, for IPv6. */
static __always_inline int xdp6_fib_lookup(struct xdp_md *ctx, const struct pkt6 *pkt,
					   const struct xdp_ip *xip,
					   const struct xdp6_tuple *t,
					   struct bpf_fib_lookup *fib)
{
	if (xip->ttl <= 1)
		return 0;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = XDP_AF_INET6;
	fib->l4_protocol = pkt->proto;
	fib->sport = t->sport;
	fib->dport = t->dport;
	fib->tot_len = xip->ip_len;
	__builtin_memcpy(fib->ipv6_src, t->saddr.w, sizeof(t->saddr));
	__builtin_memcpy(fib->ipv6_dst, t->daddr.w, sizeof(t->daddr));
	fib->ifindex = ctx->ingress_ifindex;
	return xdp_fib_usable(bpf_fib_lookup(ctx, fib, sizeof(*fib), 0), fib);
}

/* The next hop's Ethernet addresses, from a successful look-up. 0 or DROP_WRITE. */
static __always_inline int xdp_set_l2(struct xdp_md *ctx, const struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return DROP_WRITE;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return 0;
}

#endif

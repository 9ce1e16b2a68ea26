/* xdp_fib.h: where a translated XDP frame goes next: the kernel's FIB (routes and
 * neighbours) for its new destination, and the Ethernet addresses of that hop. A
 * look-up that does not succeed outright (no neighbour entry yet, a blackhole or
 * unreachable route, a packet over the MTU, a local address) sends the frame to the
 * stack instead, which resolves the neighbour, answers with ICMP, or delivers it; so
 * does a next hop out of an interface ebpflb_xdpdev does not list: the agent lists only
 * those a redirected frame reaches (ebpflb/dataplane/bpf/xdp.py says which).
 *
 * A look-up's answer is kept per CPU for the rest of the jiffy it was made in
 * (ebpflb_fibc4, ebpflb_fibc6): bpf_fib_lookup is half of a translated frame's cost or
 * more (in BPF_PROG_TEST_RUN here ~220 of ~410 ns for IPv4, ~390 of ~610 for IPv6;
 * the kept answer ~20), and a flow's frames come in bursts. So a route, neighbour or
 * ebpflb_xdpdev change reaches XDP at most one tick (1/HZ: 4 ms at HZ=250) late; a
 * failed look-up is never kept. */
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

/* A kept look-up's answer. */
struct xdp_fib_answer {
	__u32 ifindex;		/* the next hop's interface; 0: not usable, to the stack */
	__u8 dmac[ETH_ALEN];	/* the next hop's Ethernet address */
	__u8 smac[ETH_ALEN];	/* ifindex's own */
};

/* One kept IPv4 look-up: its inputs (the translated tuple, protocol, ingress
 * interface, and the frame length that fitted the path's MTU) and its answer. */
struct xdp4_fib_cache {
	__u64 jiffies;		/* bpf_jiffies64() at the look-up; 0: empty */
	struct xdp4_tuple t;	/* the addresses and ports looked up */
	__u32 ingress;		/* the frame's ingress ifindex */
	__u16 ip_len;		/* IP length of the frame looked up: a longer one looks up */
	__u8 proto;		/* IP4_PROTO_TCP or IP4_PROTO_UDP */
	__u8 pad;
	struct xdp_fib_answer a;
};

/* As xdp4_fib_cache, for IPv6. */
struct xdp6_fib_cache {
	__u64 jiffies;
	struct xdp6_tuple t;
	__u32 ingress;
	__u16 ip_len;
	__u8 proto;
	__u8 pad;
	struct xdp_fib_answer a;
};

#ifndef XDP_FIB_CACHE_SLOTS
#define XDP_FIB_CACHE_SLOTS 256	/* kept look-ups per CPU and family, direct-mapped (2^n) */
#endif

/* slot (a hash of the tuple) -> per CPU, the last look-up that hashed there. Caches,
 * never pinned: each load starts them empty. XDP only: declared here, not in maps.h,
 * as ebpflb_tc.c has no use for them. */
BPF_PERCPU_ARRAY(ebpflb_fibc4, struct xdp4_fib_cache, XDP_FIB_CACHE_SLOTS);
BPF_PERCPU_ARRAY(ebpflb_fibc6, struct xdp6_fib_cache, XDP_FIB_CACHE_SLOTS);
static __always_inline struct xdp4_fib_cache *map_fibc4_lookup(__u32 *slot);
static __always_inline struct xdp6_fib_cache *map_fibc6_lookup(__u32 *slot);

static __always_inline __u32 xdp_fib_slot(__u32 h)
{
	return (h * 0x9e3779b1) >> 16 & (XDP_FIB_CACHE_SLOTS - 1);
}

/* A kept answer as a look-up's: 1 when the frame can be forwarded from here. */
static __always_inline int xdp_fib_reuse(const struct xdp_fib_answer *a,
					 struct bpf_fib_lookup *fib)
{
	if (!a->ifindex) {
		stats_global_inc(GSTAT_XDP_FIB_PASS);
		return 0;
	}
	fib->ifindex = a->ifindex;
	__builtin_memcpy(fib->dmac, a->dmac, ETH_ALEN);
	__builtin_memcpy(fib->smac, a->smac, ETH_ALEN);
	return 1;
}

/* Keep a successful look-up's answer (usable: whether its interface may take it). */
static __always_inline void xdp_fib_keep(struct xdp_fib_answer *a,
					 const struct bpf_fib_lookup *fib, int usable)
{
	a->ifindex = usable ? fib->ifindex : 0;
	__builtin_memcpy(a->dmac, fib->dmac, ETH_ALEN);
	__builtin_memcpy(a->smac, fib->smac, ETH_ALEN);
}

/* Whether c holds this tick's look-up of t from ingress, for a frame of ip_len. */
static __always_inline int xdp4_fib_cached(const struct xdp4_fib_cache *c, __u64 now,
					   const struct xdp4_tuple *t, __u8 proto,
					   __u32 ingress, __u16 ip_len)
{
	return c->jiffies == now && c->t.saddr == t->saddr && c->t.daddr == t->daddr &&
	       c->t.sport == t->sport && c->t.dport == t->dport && c->proto == proto &&
	       c->ingress == ingress && ip_len <= c->ip_len;
}

/* Look up t's IPv4 route from the frame's ingress interface: 1 when the frame can be
 * forwarded from here (fib->ifindex, smac, dmac are set), else 0; this tick's kept
 * answer when there is one. A TTL that would expire is the stack's to answer. */
static __always_inline int xdp4_fib_lookup(struct xdp_md *ctx, const struct pkt4 *pkt,
					   const struct xdp_ip *xip,
					   const struct xdp4_tuple *t,
					   struct bpf_fib_lookup *fib)
{
	__u32 slot = xdp_fib_slot(t->saddr ^ t->daddr ^ ((__u32)t->sport << 16 | t->dport) ^
				  pkt->proto);
	__u32 ingress = ctx->ingress_ifindex;
	struct xdp4_fib_cache *c;
	__u64 now;
	long ret;
	int usable;

	if (xip->ttl <= 1)
		return 0;
	now = bpf_jiffies64();
	c = map_fibc4_lookup(&slot);
	if (c && xdp4_fib_cached(c, now, t, pkt->proto, ingress, xip->ip_len))
		return xdp_fib_reuse(&c->a, fib);
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = XDP_AF_INET;
	fib->l4_protocol = pkt->proto;
	fib->sport = t->sport;
	fib->dport = t->dport;
	fib->tot_len = xip->ip_len;
	fib->ipv4_src = t->saddr;
	fib->ipv4_dst = t->daddr;
	fib->ifindex = ingress;
	ret = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	usable = xdp_fib_usable(ret, fib);
	if (c && ret == BPF_FIB_LKUP_RET_SUCCESS) {
		c->jiffies = now;
		c->t = *t;
		c->ingress = ingress;
		c->ip_len = xip->ip_len;
		c->proto = pkt->proto;
		xdp_fib_keep(&c->a, fib, usable);
	}
	return usable;
}

/* As xdp4_fib_cached, for IPv6. */
static __always_inline int xdp6_fib_cached(const struct xdp6_fib_cache *c, __u64 now,
					   const struct xdp6_tuple *t, __u8 proto,
					   __u32 ingress, __u16 ip_len)
{
	return c->jiffies == now && addr6_eq(&c->t.saddr, &t->saddr) &&
	       addr6_eq(&c->t.daddr, &t->daddr) && c->t.sport == t->sport &&
	       c->t.dport == t->dport && c->proto == proto && c->ingress == ingress &&
	       ip_len <= c->ip_len;
}

/* As xdp4_fib_lookup, for IPv6. */
static __always_inline int xdp6_fib_lookup(struct xdp_md *ctx, const struct pkt6 *pkt,
					   const struct xdp_ip *xip,
					   const struct xdp6_tuple *t,
					   struct bpf_fib_lookup *fib)
{
	__u32 slot = xdp_fib_slot(t->saddr.w[3] ^ t->daddr.w[3] ^ t->daddr.w[2] ^
				  ((__u32)t->sport << 16 | t->dport) ^ pkt->proto);
	__u32 ingress = ctx->ingress_ifindex;
	struct xdp6_fib_cache *c;
	__u64 now;
	long ret;
	int usable;

	if (xip->ttl <= 1)
		return 0;
	now = bpf_jiffies64();
	c = map_fibc6_lookup(&slot);
	if (c && xdp6_fib_cached(c, now, t, pkt->proto, ingress, xip->ip_len))
		return xdp_fib_reuse(&c->a, fib);
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = XDP_AF_INET6;
	fib->l4_protocol = pkt->proto;
	fib->sport = t->sport;
	fib->dport = t->dport;
	fib->tot_len = xip->ip_len;
	__builtin_memcpy(fib->ipv6_src, t->saddr.w, sizeof(t->saddr));
	__builtin_memcpy(fib->ipv6_dst, t->daddr.w, sizeof(t->daddr));
	fib->ifindex = ingress;
	ret = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	usable = xdp_fib_usable(ret, fib);
	if (c && ret == BPF_FIB_LKUP_RET_SUCCESS) {
		c->jiffies = now;
		c->t = *t;
		c->ingress = ingress;
		c->ip_len = xip->ip_len;
		c->proto = pkt->proto;
		xdp_fib_keep(&c->a, fib, usable);
	}
	return usable;
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

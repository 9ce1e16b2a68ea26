/* ebpflb_xdp.c: the XDP entry program, attached to the node's uplinks, for Service
 * traffic arriving from outside the node: a client's packet to a NodePort,
 * LoadBalancer or external address is sent to one of the Service's backends (DNAT, and
 * SNAT to the node under externalTrafficPolicy: Cluster), and a remote backend's reply
 * arriving on the uplink is sent back to the client as from the frontend; both are
 * forwarded from here (FIB look-up, then a redirect through ebpflb_xdpdev) without
 * entering the node's IP stack. Conntrack, backend choice and the NAT port claim are
 * the tc program's own code (lb.h, ct.h, flow.h) on the same maps, so either program
 * can carry any packet of a flow. What XDP does not do (ClusterIP frontends, IPv4
 * options, IPv6 extension headers, fragments, ICMP, a Service without endpoints, a
 * pod reaching itself, a next hop the FIB cannot give yet) is XDP_PASS, untouched or
 * already translated, and the tc program behind it handles it as without XDP.
 *
 * A compilation unit of its own (ebpflb/dataplane/bpf/xdp.py loads it beside
 * ebpflb_tc.c): bcc rewrites map calls only in the file it compiles (see maps.h), and
 * refuses them inside macros, so the accessors cannot be shared; the few this
 * program's headers use are defined below, one line each, as in ebpflb_tc.c. */
#include <uapi/linux/bpf.h>

#include "lib/abi.h"
#include "lib/consts.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/stats.h"
#include "lib/lb.h"
#include "lib/ct.h"
#include "lib/lb6.h"
#include "lib/ct6.h"
#include "lib/flow.h"
#include "lib/xdp_parse.h"
#include "lib/xdp_nat.h"
#include "lib/xdp_fib.h"
#include "lib/xdp_verdict.h"

/* Map accessors declared in lib/maps.h: bcc rewrites map calls in this file only. */
static __always_inline struct lb4_service *map_svc4_lookup(struct lb4_key *key)
{ return ebpflb_svc4.lookup(key); }
static __always_inline __u32 *map_slot4_lookup(struct lb4_slot_key *key)
{ return ebpflb_slot4.lookup(key); }
static __always_inline struct lb4_backend *map_be4_lookup(__u32 *id)
{ return ebpflb_be4_v2.lookup(id); }
static __always_inline struct lb4_rnat *map_rnat4_lookup(__u32 *id)
{ return ebpflb_rnat4_v2.lookup(id); }
static __always_inline struct ct4_bucket *map_ct4_bucket(__u32 *index)
{ return ebpflb_ct4_v3.lookup(index); }
static __always_inline struct lb_stats *map_svcstat_lookup(__u32 *id)
{ return ebpflb_svcstat.lookup(id); }
static __always_inline __u64 *map_gstat_lookup(__u32 *index)
{ return ebpflb_gstat_v3.lookup(index); }
static __always_inline __u64 *map_drops_lookup(__u32 *reason)
{ return ebpflb_drops.lookup(reason); }
static __always_inline struct aff4_value *map_aff4_lookup(struct aff4_key *key)
{ return ebpflb_aff4.lookup(key); }
static __always_inline int map_aff4_update(struct aff4_key *key, struct aff4_value *value)
{ return ebpflb_aff4.update(key, value); }
static __always_inline __u8 *map_srcr4_lookup(struct srcrange4_key *key)
{ return ebpflb_srcr4.lookup(key); }
static __always_inline __u32 *map_cfg_lookup(__u32 *index)
{ return ebpflb_cfg.lookup(index); }
static __always_inline struct ct_clock *map_clock_lookup(__u32 *index)
{ return ebpflb_clock.lookup(index); }
static __always_inline struct ct_scratch *map_ctscr_lookup(__u32 *index)
{ return ebpflb_ctscr.lookup(index); }
static __always_inline void *map_mg4_lookup(__u32 *svc_id)
{ return ebpflb_mg4_v2.lookup(svc_id); }
static __always_inline struct lb6_service *map_svc6_lookup(struct lb6_key *key)
{ return ebpflb_svc6.lookup(key); }
static __always_inline struct lb6_backend *map_be6_lookup(__u32 *id)
{ return ebpflb_be6_v2.lookup(id); }
static __always_inline struct lb6_rnat *map_rnat6_lookup(__u32 *id)
{ return ebpflb_rnat6_v2.lookup(id); }
static __always_inline struct ct6_bucket *map_ct6_bucket(__u32 *index)
{ return ebpflb_ct6_v2.lookup(index); }
static __always_inline struct aff4_value *map_aff6_lookup(struct aff6_key *key)
{ return ebpflb_aff6.lookup(key); }
static __always_inline int map_aff6_update(struct aff6_key *key, struct aff4_value *value)
{ return ebpflb_aff6.update(key, value); }
static __always_inline __u8 *map_srcr6_lookup(struct srcrange6_key *key)
{ return ebpflb_srcr6.lookup(key); }
static __always_inline __u32 *map_xdpdev_lookup(__u32 *ifindex)
{ return ebpflb_xdpdev.lookup(ifindex); }
static __always_inline struct xdp4_fib_cache *map_fibc4_lookup(__u32 *slot)
{ return ebpflb_fibc4.lookup(slot); }
static __always_inline struct xdp6_fib_cache *map_fibc6_lookup(__u32 *slot)
{ return ebpflb_fibc6.lookup(slot); }

/* Send the IPv4 frame, whose flow is decided, to t: rewritten and redirected when the
 * FIB gives its next hop (*ifindex), else rewritten and handed to the stack. */
static __always_inline int xdp4_send(struct xdp_md *ctx, const struct pkt4 *pkt,
				     const struct xdp_ip *xip, const struct xdp4_tuple *t,
				     __u32 *ifindex)
{
	struct bpf_fib_lookup fib;
	int routed = xdp4_fib_lookup(ctx, pkt, xip, t, &fib);
	int ret = xdp4_rewrite(ctx, pkt, t, routed);

	if (ret == 0 && routed)
		ret = xdp_set_l2(ctx, &fib);
	if (ret < 0)
		return ret;
	if (!routed)
		return VERDICT_PASS;
	*ifindex = fib.ifindex;
	return VERDICT_REDIRECT;
}

/* Client -> NodePort/LoadBalancer/external frontend (lb4_forward of ebpflb_tc.c,
 * without what XDP leaves to tc). A VERDICT_* or DROP_*. */
static __always_inline int xdp4_forward(struct xdp_md *ctx, const struct pkt4 *pkt,
					const struct xdp_ip *xip,
					const struct lb4_service *svc, __u32 *ifindex)
{
	struct lb4_backend *be = NULL;
	struct ct4_value *ct;
	struct xdp4_tuple t;
	__u32 backend_id = 0, svc_id = svc->id;
	__u32 event = GSTAT_NEW_FLOW;
	__be32 snat_addr = 0;
	__be16 snat_port = 0;
	int ret;

	if (!(svc->flags & SVC_F_FROM_OUTSIDE))
		return VERDICT_PASS;
	ct = ct4_lookup(pkt, CT_DIR_SERVICE);
	if (ct) {
		be = lb4_lookup_backend(ct->backend_id, svc_id);
		if (be && ct4_matches_backend(ct, pkt, svc_id, be)) {
			snat_addr = ct->peer_address;
			snat_port = ct->peer_port;
			ct4_touch(ct);
			event = GSTAT_CT_HIT;
		} else {
			be = NULL;
			event = GSTAT_RESELECT;
			ct4_delete_reply(pkt, ct);
		}
	}
	if (!be) {
		if (!lb4_source_allowed(svc, pkt->saddr)) {
			stats_global_inc(GSTAT_SOURCE_RANGE_DROP);
			return DROP_SOURCE_RANGE;
		}
		if (svc->count == 0)
			return VERDICT_PASS;	/* refused or dropped by tc */
		ret = lb4_choose(svc, pkt, &backend_id, &be);
		if (ret < 0)
			return ret;
		if (be->address == pkt->saddr)
			return VERDICT_PASS;	/* hairpin: tc's */
		snat_addr = svc->snat_address;
		ret = lb4_track(pkt, svc_id, backend_id, be, snat_addr, &snat_port);
		if (ret < 0)
			return ret;
		if (snat_addr)
			stats_global_inc(GSTAT_SNAT);
	}
	t.saddr = snat_addr ? snat_addr : pkt->saddr;
	t.sport = snat_addr ? snat_port : pkt->sport;
	t.daddr = be->address;
	t.dport = be->port;
	ret = xdp4_send(ctx, pkt, xip, &t, ifindex);
	if (ret < 0)
		return ret;
	stats_global_inc(event);
	stats_svc_rx_add(svc_id, xip->ip_len + ETH_HLEN);
	if (ret == VERDICT_REDIRECT)
		stats_global_inc(GSTAT_XDP_FORWARD);
	return ret;
}

/* Remote backend -> client of a tracked flow, arriving on the uplink: as from the
 * frontend, back to the client. A flow without a REPLY entry passes untouched. */
static __always_inline int xdp4_reverse(struct xdp_md *ctx, const struct pkt4 *pkt,
					const struct xdp_ip *xip, __u32 *ifindex)
{
	struct ct4_value *ct;
	struct lb4_rnat *rnat;
	struct xdp4_tuple t;
	int ret;

	ct = ct4_lookup(pkt, CT_DIR_REPLY);
	if (!ct)
		return VERDICT_PASS;
	rnat = lb4_lookup_rnat(ct->svc_id);
	if (!rnat)
		return VERDICT_PASS;
	t.saddr = rnat->address;
	t.sport = rnat->port;
	t.daddr = ct->peer_address ? ct->peer_address : pkt->daddr;
	t.dport = ct->peer_address ? ct->peer_port : pkt->dport;
	ret = xdp4_send(ctx, pkt, xip, &t, ifindex);
	if (ret < 0)
		return ret;
	ct4_touch(ct);
	stats_global_inc(GSTAT_REPLY);
	stats_svc_tx_add(ct->svc_id, xip->ip_len + ETH_HLEN);
	if (ret == VERDICT_REDIRECT)
		stats_global_inc(GSTAT_XDP_REPLY);
	return ret;
}

/* IPv6: the same stages on struct pkt6 and the *6 maps. */

/* As xdp4_send. */
static __always_inline int xdp6_send(struct xdp_md *ctx, const struct pkt6 *pkt,
				     const struct xdp_ip *xip, const struct xdp6_tuple *t,
				     __u32 *ifindex)
{
	struct bpf_fib_lookup fib;
	int routed = xdp6_fib_lookup(ctx, pkt, xip, t, &fib);
	int ret = xdp6_rewrite(ctx, pkt, t, routed);

	if (ret == 0 && routed)
		ret = xdp_set_l2(ctx, &fib);
	if (ret < 0)
		return ret;
	if (!routed)
		return VERDICT_PASS;
	*ifindex = fib.ifindex;
	return VERDICT_REDIRECT;
}

/* As xdp4_forward. */
static __always_inline int xdp6_forward(struct xdp_md *ctx, const struct pkt6 *pkt,
					const struct xdp_ip *xip,
					const struct lb6_service *svc, __u32 *ifindex)
{
	struct lb6_backend *be = NULL;
	struct ct6_value *ct;
	struct xdp6_tuple t;
	struct addr6 snat_addr = {};
	__u32 backend_id = 0, svc_id = svc->id;
	__u32 event = GSTAT_NEW_FLOW;
	__be16 snat_port = 0;
	int ret;

	if (!(svc->flags & SVC_F_FROM_OUTSIDE))
		return VERDICT_PASS;
	ct = ct6_lookup(pkt, CT_DIR_SERVICE);
	if (ct) {
		be = lb6_lookup_backend(ct->backend_id, svc_id);
		if (be && ct6_matches_backend(ct, pkt, svc_id, be)) {
			snat_addr = ct->peer_address;
			snat_port = ct->peer_port;
			ct6_touch(ct);
			event = GSTAT_CT_HIT;
		} else {
			be = NULL;
			event = GSTAT_RESELECT;
			ct6_delete_reply(pkt, ct);
		}
	}
	if (!be) {
		if (!lb6_source_allowed(svc, &pkt->saddr)) {
			stats_global_inc(GSTAT_SOURCE_RANGE_DROP);
			return DROP_SOURCE_RANGE;
		}
		if (svc->count == 0)
			return VERDICT_PASS;
		ret = lb6_choose(svc, pkt, &backend_id, &be);
		if (ret < 0)
			return ret;
		if (addr6_eq(&be->address, &pkt->saddr))
			return VERDICT_PASS;
		snat_addr = svc->snat_address;
		ret = lb6_track(pkt, svc_id, backend_id, be, &snat_addr, &snat_port);
		if (ret < 0)
			return ret;
		if (!addr6_is_zero(&snat_addr))
			stats_global_inc(GSTAT_SNAT);
	}
	if (addr6_is_zero(&snat_addr)) {
		t.saddr = pkt->saddr;
		t.sport = pkt->sport;
	} else {
		t.saddr = snat_addr;
		t.sport = snat_port;
	}
	t.daddr = be->address;
	t.dport = be->port;
	ret = xdp6_send(ctx, pkt, xip, &t, ifindex);
	if (ret < 0)
		return ret;
	stats_global_inc(event);
	stats_svc_rx_add(svc_id, xip->ip_len + ETH_HLEN);
	if (ret == VERDICT_REDIRECT)
		stats_global_inc(GSTAT_XDP_FORWARD);
	return ret;
}

/* As xdp4_reverse. */
static __always_inline int xdp6_reverse(struct xdp_md *ctx, const struct pkt6 *pkt,
					const struct xdp_ip *xip, __u32 *ifindex)
{
	struct ct6_value *ct;
	struct lb6_rnat *rnat;
	struct xdp6_tuple t;
	int ret;

	ct = ct6_lookup(pkt, CT_DIR_REPLY);
	if (!ct)
		return VERDICT_PASS;
	rnat = lb6_lookup_rnat(ct->svc_id);
	if (!rnat)
		return VERDICT_PASS;
	t.saddr = rnat->address;
	t.sport = rnat->port;
	if (addr6_is_zero(&ct->peer_address)) {
		t.daddr = pkt->daddr;
		t.dport = pkt->dport;
	} else {
		t.daddr = ct->peer_address;
		t.dport = ct->peer_port;
	}
	ret = xdp6_send(ctx, pkt, xip, &t, ifindex);
	if (ret < 0)
		return ret;
	ct6_touch(ct);
	stats_global_inc(GSTAT_REPLY);
	stats_svc_tx_add(ct->svc_id, xip->ip_len + ETH_HLEN);
	if (ret == VERDICT_REDIRECT)
		stats_global_inc(GSTAT_XDP_REPLY);
	return ret;
}

/* An IPv6 frame: to a frontend, or perhaps a remote backend's reply. */
static __always_inline int xdp6_ingress(struct xdp_md *ctx, __u32 *ifindex)
{
	struct lb6_service *svc;
	struct xdp_ip xip = {};
	struct pkt6 pkt;

	switch (xdp6_parse(ctx, &pkt, &xip)) {
	case PKT_L4:
		svc = lb6_lookup_service(&pkt);
		return svc ? xdp6_forward(ctx, &pkt, &xip, svc, ifindex) :
			     xdp6_reverse(ctx, &pkt, &xip, ifindex);
	case PKT_FRAGMENT:
		stats_global_inc(GSTAT_FRAGMENT);
		break;
	}
	return VERDICT_PASS;
}

/* The IPv6 path as a program of its own, reached by a tail call (see ebpflb_tc.c). */
int ebpflb_xdp6(struct xdp_md *ctx)
{
	__u32 ifindex = 0;
	int verdict = xdp6_ingress(ctx, &ifindex);

	return verdict_xdp_exit(verdict, ifindex);
}

int ebpflb_xdp(struct xdp_md *ctx)
{
	struct lb4_service *svc;
	struct xdp_ip xip = {};
	struct pkt4 pkt;
	__u32 ifindex = 0;
	int verdict = VERDICT_PASS;

	switch (xdp4_parse(ctx, &pkt, &xip)) {
	case PKT_L4:
		svc = lb4_lookup_service(&pkt);
		verdict = svc ? xdp4_forward(ctx, &pkt, &xip, svc, &ifindex) :
				xdp4_reverse(ctx, &pkt, &xip, &ifindex);
		break;
	case PKT_FRAGMENT:
		stats_global_inc(GSTAT_FRAGMENT);
		break;
	case PKT_PASS:
		ebpflb_xtail.call(ctx, TAIL_IPV6);  /* returns only if unset */
		break;
	}
	return verdict_xdp_exit(verdict, ifindex);
}

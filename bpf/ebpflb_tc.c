/* ebpflb_tc.c: the tc entry program, attached (direct-action) at ingress of the
 * pod-facing veths and of the node's uplinks. A packet to a service frontend is sent
 * to one of its backends (daddr/dport rewritten; the source too for external traffic
 * and hairpin), a backend's reply (or ICMP error) is sent back as from the frontend
 * (saddr/sport rewritten); everything else passes untouched. ebpflb_tc_egress, on
 * egress of the pod veths, does the reverse translation only. IPv6 packets take the
 * lb6_* path: the same stages on the IPv6 maps (parse6.h, lb6.h, ct6.h, nat6.h). Built by
 * ebpflb/dataplane/bpf/loader.py with -I<bpf dir> and -D PIN_DIR/MAX_* flags. */
#include <uapi/linux/pkt_cls.h>

#include "lib/abi.h"
#include "lib/consts.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/verdict.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/stats.h"
#include "lib/lb.h"
#include "lib/affinity.h"
#include "lib/ct.h"
#include "lib/nat.h"
#include "lib/icmp.h"
#include "lib/reject.h"
#include "lib/parse6.h"
#include "lib/lb6.h"
#include "lib/affinity6.h"
#include "lib/ct6.h"
#include "lib/nat6.h"
#include "lib/icmp6.h"
#include "lib/reject6.h"
#include "lib/sock.h"
#include "lib/sock6.h"
#include "lib/flow.h"

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
static __always_inline struct sknat4_value *map_sknat4_lookup(struct sknat4_key *key)
{ return ebpflb_sknat4.lookup(key); }
static __always_inline int map_sknat4_update(struct sknat4_key *key, struct sknat4_value *v)
{ return ebpflb_sknat4.update(key, v); }

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
static __always_inline struct sknat6_value *map_sknat6_lookup(struct sknat6_key *key)
{ return ebpflb_sknat6.lookup(key); }
static __always_inline int map_sknat6_update(struct sknat6_key *key, struct sknat6_value *v)
{ return ebpflb_sknat6.update(key, v); }
static __always_inline struct sknetns_value *map_sknetns_lookup(__u64 *cookie)
{ return ebpflb_sknetns.lookup(cookie); }

/* The address a new flow to backend be is source-NATed to, or 0: a pod sent to itself
 * gets the hairpin address (else it would answer itself directly), external traffic
 * under externalTrafficPolicy: Cluster the node address (so replies return here). */
static __always_inline __be32 lb4_snat_address(const struct lb4_service *svc,
					       const struct pkt4 *pkt,
					       const struct lb4_backend *be)
{
	if (be->address == pkt->saddr) {
		stats_global_inc(GSTAT_HAIRPIN);
		return bpf_htonl(HAIRPIN_ADDRESS);
	}
	return svc->snat_address;
}

/* Client -> frontend: keep the flow's backend while it is valid, else choose one and
 * record the flow; then rewrite the destination to the backend, and the source to the
 * flow's NAT address if it has one. VERDICT_GO_ON, VERDICT_REDIRECT when refused, or
 * DROP_*. */
static __always_inline int lb4_forward(struct __sk_buff *skb, const struct pkt4 *pkt,
				       const struct lb4_service *svc)
{
	struct lb4_backend *be = NULL;
	struct ct4_value *ct;
	__u32 backend_id = 0, svc_id = svc->id;
	__u32 event = GSTAT_NEW_FLOW;
	__be32 snat_addr = 0;
	__be16 snat_port = 0;
	int ret;

	ct = ct4_lookup(pkt, CT_DIR_SERVICE);
	if (ct) {
		be = lb4_lookup_backend(ct->backend_id, svc_id);
		if (be && ct4_matches_backend(ct, pkt, svc_id, be)) {
			backend_id = ct->backend_id;
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
		if (svc->count == 0 && !(svc->flags & SVC_F_DROP_EMPTY))
			return lb4_reject(skb, pkt);
		ret = lb4_choose(svc, pkt, &backend_id, &be);
		if (ret < 0)
			return ret;
		snat_addr = lb4_snat_address(svc, pkt, be);
		ret = lb4_track(pkt, svc_id, backend_id, be, snat_addr, &snat_port);
		if (ret < 0)
			return ret;
		if (snat_addr)
			stats_global_inc(GSTAT_SNAT);
	}
	ret = nat4_rewrite_flow(skb, pkt, snat_addr ? snat_addr : pkt->saddr, be->address,
				snat_addr ? snat_port : pkt->sport, be->port);
	if (ret < 0)
		return ret;
	stats_global_inc(event);
	stats_svc_rx_add(svc_id, skb->len);
	return VERDICT_GO_ON;
}

/* Backend -> client of a tracked flow: rewrite the source to the service's frontend,
 * and the destination back to the client when the flow was source-NATed. A flow whose
 * service is gone passes untouched. A VERDICT_* or DROP_*. */
static __always_inline int lb4_reverse(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct ct4_value *ct;
	struct lb4_rnat *rnat;
	int ret;

	ct = ct4_lookup(pkt, CT_DIR_REPLY);
	if (!ct)
		return VERDICT_PASS;
	rnat = lb4_lookup_rnat(ct->svc_id);
	if (!rnat)
		return VERDICT_PASS;
	ret = nat4_rewrite_flow(skb, pkt, rnat->address,
				ct->peer_address ? ct->peer_address : pkt->daddr, rnat->port,
				ct->peer_address ? ct->peer_port : pkt->dport);
	if (ret < 0)
		return ret;
	ct4_touch(ct);
	stats_global_inc(GSTAT_REPLY);
	stats_svc_tx_add(ct->svc_id, skb->len);
	return VERDICT_GO_ON;
}

/* Client -> frontend: forward; anything else may be a reply to reverse-translate. */
static __always_inline int lb4_ingress(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct lb4_service *svc = lb4_lookup_service(pkt);

	return svc ? lb4_forward(skb, pkt, svc) : lb4_reverse(skb, pkt);
}

/* IPv6: the same stages as lb4_* above, on struct pkt6 and the *6 maps. */

/* The address a new IPv6 flow to be is source-NATed to, in *snat_addr (all zero:
 * none): the hairpin address for a pod reaching itself, else the service's. */
static __always_inline void lb6_snat_address(const struct lb6_service *svc,
					     const struct pkt6 *pkt,
					     const struct lb6_backend *be,
					     struct addr6 *snat_addr)
{
	if (addr6_eq(&be->address, &pkt->saddr)) {
		stats_global_inc(GSTAT_HAIRPIN);
		addr6_hairpin(snat_addr);
		return;
	}
	*snat_addr = svc->snat_address;
}

/* Client -> IPv6 frontend (see lb4_forward). VERDICT_GO_ON, VERDICT_REDIRECT or
 * DROP_*. */
static __always_inline int lb6_forward(struct __sk_buff *skb, const struct pkt6 *pkt,
				       const struct lb6_service *svc)
{
	struct lb6_backend *be = NULL;
	struct ct6_value *ct;
	struct addr6 snat_addr = {};
	__u32 backend_id = 0, svc_id = svc->id;
	__u32 event = GSTAT_NEW_FLOW;
	__be16 snat_port = 0;
	int ret;

	ct = ct6_lookup(pkt, CT_DIR_SERVICE);
	if (ct) {
		be = lb6_lookup_backend(ct->backend_id, svc_id);
		if (be && ct6_matches_backend(ct, pkt, svc_id, be)) {
			backend_id = ct->backend_id;
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
		if (svc->count == 0 && !(svc->flags & SVC_F_DROP_EMPTY))
			return lb6_reject(skb, pkt);
		ret = lb6_choose(svc, pkt, &backend_id, &be);
		if (ret < 0)
			return ret;
		lb6_snat_address(svc, pkt, be, &snat_addr);
		ret = lb6_track(pkt, svc_id, backend_id, be, &snat_addr, &snat_port);
		if (ret < 0)
			return ret;
		if (!addr6_is_zero(&snat_addr))
			stats_global_inc(GSTAT_SNAT);
	}
	if (addr6_is_zero(&snat_addr))
		ret = nat6_rewrite_flow(skb, pkt, &pkt->saddr, &be->address, pkt->sport,
					be->port);
	else
		ret = nat6_rewrite_flow(skb, pkt, &snat_addr, &be->address, snat_port,
					be->port);
	if (ret < 0)
		return ret;
	stats_global_inc(event);
	stats_svc_rx_add(svc_id, skb->len);
	return VERDICT_GO_ON;
}

/* Backend -> client of a tracked IPv6 flow (see lb4_reverse). A VERDICT_* or DROP_*. */
static __always_inline int lb6_reverse(struct __sk_buff *skb, const struct pkt6 *pkt)
{
	struct ct6_value *ct;
	struct lb6_rnat *rnat;
	int ret;

	ct = ct6_lookup(pkt, CT_DIR_REPLY);
	if (!ct)
		return VERDICT_PASS;
	rnat = lb6_lookup_rnat(ct->svc_id);
	if (!rnat)
		return VERDICT_PASS;
	if (addr6_is_zero(&ct->peer_address))
		ret = nat6_rewrite_flow(skb, pkt, &rnat->address, &pkt->daddr, rnat->port,
					pkt->dport);
	else
		ret = nat6_rewrite_flow(skb, pkt, &rnat->address, &ct->peer_address,
					rnat->port, ct->peer_port);
	if (ret < 0)
		return ret;
	ct6_touch(ct);
	stats_global_inc(GSTAT_REPLY);
	stats_svc_tx_add(ct->svc_id, skb->len);
	return VERDICT_GO_ON;
}

/* An IPv6 packet at ingress: forward to a frontend, reverse-translate a reply or an
 * ICMPv6 error; a fragment is counted; anything else (neighbour discovery, ESP...)
 * passes untouched. A VERDICT_* or DROP_*. */
static __always_inline int lb6_ingress(struct __sk_buff *skb)
{
	struct lb6_service *svc;
	struct pkt6 pkt;

	switch (pkt6_parse(skb, &pkt)) {
	case PKT_L4:
		svc = lb6_lookup_service(&pkt);
		return svc ? lb6_forward(skb, &pkt, svc) : lb6_reverse(skb, &pkt);
	case PKT_ICMP:
		return icmp6_reverse(skb, &pkt);
	case PKT_FRAGMENT:
		stats_global_inc(GSTAT_FRAGMENT);
		break;
	}
	return VERDICT_PASS;
}

/* An IPv6 packet at egress of a pod veth: reverse translation only (see
 * ebpflb_tc_egress). */
static __always_inline int lb6_egress(struct __sk_buff *skb)
{
	struct pkt6 pkt;

	switch (pkt6_parse(skb, &pkt)) {
	case PKT_L4:
		return lb6_reverse(skb, &pkt);
	case PKT_ICMP:
		return icmp6_reverse(skb, &pkt);
	}
	return VERDICT_PASS;
}

/* The IPv6 ingress path runs as a program of its own, ebpflb_tc6, reached by a tail
 * call: the verifier walks a program's every path within a budget (a million
 * instructions) and a stack of 512 bytes, and the IPv4 and IPv6 paths with the
 * conntrack tables inlined (cttable.h) do not fit in one. The loader puts it at
 * TAIL_IPV6 of ebpflb_tail (maps.h); an IPv6 packet pays the call, IPv4 nothing. */
int ebpflb_tc6(struct __sk_buff *skb)
{
	return verdict_tc_exit(skb, lb6_ingress(skb));
}

int ebpflb_tc(struct __sk_buff *skb)
{
	struct pkt4 pkt;
	int verdict = VERDICT_PASS;

	switch (pkt4_parse(skb, &pkt)) {
	case PKT_L4:
		verdict = lb4_ingress(skb, &pkt);
		break;
	case PKT_ICMP:
		verdict = icmp4_reverse(skb, &pkt);
		break;
	case PKT_FRAGMENT:
		stats_global_inc(GSTAT_FRAGMENT);
		break;
	case PKT_PASS:
		/* Not IPv4: IPv6 is picked by skb->protocol (the ethertype the stack
		 * read, no packet access). Tested here, after pkt4_parse, rather than
		 * first: an early IPv6 branch made every IPv4 packet ~15 ns slower
		 * (code layout), this costs IPv6 one ethertype read. */
		if (skb->protocol == bpf_htons(ETH_P_IPV6))
			ebpflb_tail.call(skb, TAIL_IPV6);  /* returns only if unset */
		break;
	}
	return verdict_tc_exit(skb, verdict);
}

/* Egress of the pod veths: replies on their way into a client pod that no ingress hook
 * saw untranslated, i.e. from a host-network backend on this node (the API server
 * behind kubernetes.default), which answers from the node's own stack. Only reverse
 * translation here: every forward packet already met the ingress program. A node with
 * no such backend (CFG_HOST_BACKENDS unset: most nodes) pays one array look-up. */
int ebpflb_tc_egress(struct __sk_buff *skb)
{
	__u32 index = CFG_HOST_BACKENDS;
	__u32 *host_backends = map_cfg_lookup(&index);
	struct pkt4 pkt;
	int verdict = VERDICT_PASS;

	if (host_backends && *host_backends) {
		switch (pkt4_parse(skb, &pkt)) {
		case PKT_L4:
			verdict = lb4_reverse(skb, &pkt);
			break;
		case PKT_ICMP:
			verdict = icmp4_reverse(skb, &pkt);
			break;
		case PKT_PASS:
			if (skb->protocol == bpf_htons(ETH_P_IPV6))
				verdict = lb6_egress(skb);
			break;
		}
	}
	return verdict_tc_exit(skb, verdict);
}

/* Socket-LB (lib/sock.h): cgroup hooks for the sockets of the agent's own namespace
 * and of this node's pods' namespaces. */
int ebpflb_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_forward(ctx, 0);
}

/* Unconnected UDP: each datagram of a socket goes where its earlier ones went. */
int ebpflb_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_forward(ctx, 1);
}

int ebpflb_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}

int ebpflb_sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}

/* IPv6 sockets (lib/sock6.h), IPv4-mapped peers of dual-stack sockets included. */
int ebpflb_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock6_forward(ctx, 0);
}

int ebpflb_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock6_forward(ctx, 1);
}

int ebpflb_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock6_reverse(ctx);
}

int ebpflb_sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock6_reverse(ctx);
}

/* ebpflb_tc.c: the tc entry program, attached (direct-action) at ingress of the
 * pod-facing veths. A packet to a service frontend is sent to one of its backends
 * (daddr/dport rewritten), a backend's reply is sent back as from the frontend
 * (saddr/sport rewritten); everything else passes untouched. Built by
 * ebpflb/dataplane/bpf/loader.py with -I<bpf dir> and -D PIN_DIR/MAX_* flags. */
#include <uapi/linux/pkt_cls.h>

#include "lib/abi.h"
#include "lib/consts.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/nat.h"
#include "lib/stats.h"
#include "lib/lb.h"
#include "lib/ct.h"

/* Map accessors declared in lib/maps.h: bcc rewrites map calls in this file only. */
static __always_inline struct lb4_service *map_svc4_lookup(struct lb4_key *key)
{ return ebpflb_svc4.lookup(key); }
static __always_inline __u32 *map_slot4_lookup(struct lb4_slot_key *key)
{ return ebpflb_slot4.lookup(key); }
static __always_inline struct lb4_backend *map_be4_lookup(__u32 *id)
{ return ebpflb_be4.lookup(id); }
static __always_inline struct lb4_rnat *map_rnat4_lookup(__u32 *id)
{ return ebpflb_rnat4.lookup(id); }
static __always_inline struct ct4_value *map_ct4_lookup(struct ct4_key *key)
{ return ebpflb_ct4.lookup(key); }
static __always_inline int map_ct4_update(struct ct4_key *key, struct ct4_value *value)
{ return ebpflb_ct4.update(key, value); }
static __always_inline int map_ct4_delete(struct ct4_key *key)
{ return ebpflb_ct4.delete(key); }
static __always_inline struct lb_stats *map_svcstat_lookup(__u32 *id)
{ return ebpflb_svcstat.lookup(id); }
static __always_inline __u64 *map_gstat_lookup(__u32 *index)
{ return ebpflb_gstat.lookup(index); }

/* Client -> frontend: keep the flow's backend while it is valid, else choose one and
 * record the flow; then rewrite the destination to the backend. 0 or DROP_*. */
static __always_inline int lb4_forward(struct __sk_buff *skb, const struct pkt4 *pkt,
				       const struct lb4_service *svc)
{
	struct lb4_backend *be = NULL;
	struct ct4_value *ct;
	__u32 backend_id = 0, svc_id = svc->id;
	__u32 event = GSTAT_NEW_FLOW;
	int ret;

	ct = ct4_lookup(pkt, CT_DIR_SERVICE);
	if (ct) {
		be = lb4_lookup_backend(ct->backend_id, svc_id);
		if (be && ct4_matches_backend(ct, svc_id, be)) {
			backend_id = ct->backend_id;
			ct4_touch(ct);
			event = GSTAT_CT_HIT;
		} else {
			be = NULL;
			event = GSTAT_RESELECT;
			ct4_delete_reply(pkt, ct->nat_address, ct->nat_port);
		}
	}
	if (!be) {
		ret = lb4_select_backend(svc, &backend_id, &be);
		if (ret < 0)
			return ret;
		ret = ct4_create(pkt, svc_id, backend_id, be);
		if (ret < 0)
			return ret;
	}
	ret = nat4_rewrite_dst(skb, pkt, be->address, be->port);
	if (ret < 0)
		return ret;
	stats_global_inc(event);
	stats_svc_rx_add(svc_id, skb->len);
	return 0;
}

/* Backend -> client of a tracked flow: rewrite the source to the service's frontend.
 * A flow whose service is gone passes untouched. 0 or DROP_*. */
static __always_inline int lb4_reverse(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct ct4_value *ct;
	struct lb4_rnat *rnat;
	int ret;

	ct = ct4_lookup(pkt, CT_DIR_REPLY);
	if (!ct)
		return 0;
	rnat = lb4_lookup_rnat(ct->svc_id);
	if (!rnat)
		return 0;
	ret = nat4_rewrite_src(skb, pkt, rnat->address, rnat->port);
	if (ret < 0)
		return ret;
	ct4_touch(ct);
	stats_global_inc(GSTAT_REPLY);
	stats_svc_tx_add(ct->svc_id, skb->len);
	return 0;
}

int ebpflb_tc(struct __sk_buff *skb)
{
	struct lb4_service *svc;
	struct pkt4 pkt;
	int ret;

	ret = pkt4_parse(skb, &pkt);
	if (ret == PKT_FRAGMENT)
		stats_global_inc(GSTAT_FRAGMENT);
	if (ret == 0) {
		svc = lb4_lookup_service(&pkt);
		ret = svc ? lb4_forward(skb, &pkt, svc) : lb4_reverse(skb, &pkt);
	}
	return ret < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

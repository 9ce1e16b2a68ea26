/* flow.h: the new-flow stages both entry programs (tc, XDP) share: choosing a backend
 * for a new flow (affinity first, then lb.h's selection) and recording the flow in
 * conntrack (its REPLY entry, which claims the source-NAT port when there is one, then
 * its SERVICE entry). No packet access: they work on the parsed pkt4/pkt6 only. The
 * flow's keys and value are built in the per-CPU ebpflb_ctscr (maps.h says why). */
#ifndef EBPFLB_FLOW_H
#define EBPFLB_FLOW_H

#include "abi.h"
#include "affinity.h"
#include "affinity6.h"
#include "ct.h"
#include "ct6.h"
#include "ip6.h"
#include "lb.h"
#include "lb6.h"
#include "nat.h"
#include "nat6.h"
#include "stats.h"

/* Choose a backend for a new flow of svc: the client's affinity backend when it has a
 * valid one, else a random slot (remembered for affinity). 0 or DROP_*. */
static __always_inline int lb4_choose(const struct lb4_service *svc, const struct pkt4 *pkt,
				      __u32 *backend_id, struct lb4_backend **be)
{
	int ret;

	if (svc->affinity_timeout) {
		*be = aff4_lookup(svc, pkt->saddr, backend_id);
		if (*be) {
			stats_global_inc(GSTAT_AFFINITY_HIT);
			aff4_record(svc, pkt->saddr, *backend_id);
			return 0;
		}
	}
	ret = lb4_select_backend(svc, pkt, backend_id, be);
	if (ret == 0 && svc->affinity_timeout)
		aff4_record(svc, pkt->saddr, *backend_id);
	return ret;
}

/* Record a new flow of the packet to backend be: its REPLY entry first (with source
 * NAT to snat_addr it is what claims the port, set in *snat_port), then its SERVICE
 * entry. 0 or DROP_* (counted; nothing is left half-written). */
static __always_inline int lb4_track(const struct pkt4 *pkt, __u32 svc_id, __u32 backend_id,
				     const struct lb4_backend *be, __be32 snat_addr,
				     __be16 *snat_port)
{
	__u32 zero = 0;
	struct ct_scratch *s = map_ctscr_lookup(&zero);
	int ret;

	if (!s)
		return DROP_CT_FULL;
	ct4_value_init(&s->value4, pkt, svc_id, backend_id);
	if (snat_addr)
		ret = nat4_claim_port(&s->reply4, &s->value4, &s->service4, pkt, be, snat_addr,
				      snat_port);
	else
		ret = ct4_create_reply(&s->reply4, &s->value4, pkt, be);
	if (ret < 0)
		return ret;
	return ct4_create_service(&s->service4, &s->reply4, &s->value4, pkt, be, snat_addr,
				  *snat_port);
}

/* IPv6: the same stages on struct pkt6 and the *6 maps. */

/* Choose a backend for a new IPv6 flow of svc (see lb4_choose). 0 or DROP_*. */
static __always_inline int lb6_choose(const struct lb6_service *svc, const struct pkt6 *pkt,
				      __u32 *backend_id, struct lb6_backend **be)
{
	int ret;

	if (svc->affinity_timeout) {
		*be = aff6_lookup(svc, &pkt->saddr, backend_id);
		if (*be) {
			stats_global_inc(GSTAT_AFFINITY_HIT);
			aff6_record(svc, &pkt->saddr, *backend_id);
			return 0;
		}
	}
	ret = lb6_select_backend(svc, pkt, backend_id, be);
	if (ret == 0 && svc->affinity_timeout)
		aff6_record(svc, &pkt->saddr, *backend_id);
	return ret;
}

/* Record a new IPv6 flow to backend be (see lb4_track). 0 or DROP_*. */
static __always_inline int lb6_track(const struct pkt6 *pkt, __u32 svc_id, __u32 backend_id,
				     const struct lb6_backend *be,
				     const struct addr6 *snat_addr, __be16 *snat_port)
{
	__u32 zero = 0;
	struct ct_scratch *s = map_ctscr_lookup(&zero);
	int ret;

	if (!s)
		return DROP_CT_FULL;
	ct6_value_init(&s->value6, pkt, svc_id, backend_id);
	if (!addr6_is_zero(snat_addr))
		ret = nat6_claim_port(&s->reply6, &s->value6, &s->service6, pkt, be, snat_addr,
				      snat_port);
	else
		ret = ct6_create_reply(&s->reply6, &s->value6, pkt, be);
	if (ret < 0)
		return ret;
	return ct6_create_service(&s->service6, &s->reply6, &s->value6, pkt, be, snat_addr,
				  *snat_port);
}

#endif

/* lb6.h: IPv6 service lookup and backend selection (lb.h's twin): the service of a
 * frontend, random or Maglev choice of a backend for a new flow, whether a backend is
 * still its service's, and source ranges. Slots and Maglev tables are lb.h's maps,
 * keyed by ids shared with IPv4. */
#ifndef EBPFLB_LB6_H
#define EBPFLB_LB6_H

#include "abi.h"
#include "consts.h"
#include "drop_reasons.h"
#include "ip6.h"
#include "lb.h"
#include "maps.h"
#include "stats.h"

/* The service whose frontend the packet is addressed to, or NULL. */
static __always_inline struct lb6_service *lb6_lookup_service(const struct pkt6 *pkt)
{
	struct lb6_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.address = pkt->daddr;
	key.dport = pkt->dport;
	key.proto = pkt->proto;
	return map_svc6_lookup(&key);
}

/* Backend id's entry if it still belongs to service svc_id, else NULL (a removed
 * one's is all zero, see lb4_lookup_backend). */
static __always_inline struct lb6_backend *lb6_lookup_backend(__u32 backend_id, __u32 svc_id)
{
	struct lb6_backend *be = map_be6_lookup(&backend_id);

	if (!be || be->svc_id != svc_id)
		return NULL;
	return be;
}

/* Where replies of service svc_id are rewritten to, or NULL once it is deleted (its
 * entry zeroed, see lb4_lookup_rnat). */
static __always_inline struct lb6_rnat *lb6_lookup_rnat(__u32 svc_id)
{
	struct lb6_rnat *rnat = map_rnat6_lookup(&svc_id);

	if (!rnat || !rnat->port)
		return NULL;
	return rnat;
}

/* Whether svc admits a new flow from saddr (see lb4_source_allowed). */
static __always_inline int lb6_source_allowed(const struct lb6_service *svc,
					      const struct addr6 *saddr)
{
	struct srcrange6_key key;

	if (!(svc->flags & SVC_F_SRC_RANGES))
		return 1;
	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 32 + 128;
	key.svc_id = svc->id;
	key.address = *saddr;
	return map_srcr6_lookup(&key) != NULL;
}

/* The flow's hash for Maglev, as lb4_flow_hash with each address's four raw words
 * mixed in turn (ebpflb/maglev.py computes it alike). */
static __always_inline __u32 lb6_flow_hash(const struct pkt6 *pkt)
{
	__u32 h = FLOW_HASH_SEED;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		h = lb_mix32(h ^ pkt->saddr.w[i]);
#pragma unroll
	for (i = 0; i < 4; i++)
		h = lb_mix32(h ^ pkt->daddr.w[i]);
	h = lb_mix32(h ^ (((__u32)pkt->sport << 16) | pkt->dport));
	return lb_mix32(h ^ pkt->proto);
}

/* The backend svc's Maglev table gives the flow, or NULL (see lb4_maglev_backend). */
static __always_inline struct lb6_backend *lb6_maglev_backend(const struct lb6_service *svc,
							      const struct pkt6 *pkt,
							      __u32 *backend_id)
{
	__u32 index = CFG_MAGLEV_SIZE, svc_id = svc->id, slot;
	struct lb6_backend *be;
	__u32 *size, *id;
	void *table;

	size = map_cfg_lookup(&index);
	if (!size || !*size)
		return NULL;
	table = map_mg4_lookup(&svc_id);
	if (!table)
		return NULL;
	slot = lb6_flow_hash(pkt) % *size;
	id = bpf_map_lookup_elem(table, &slot);
	if (!id)
		return NULL;
	be = lb6_lookup_backend(*id, svc_id);
	if (!be || !(be->flags & BE_F_ACTIVE))
		return NULL;
	*backend_id = *id;
	return be;
}

/* A random slot among the svc->count (> 0) usable ones: sets *backend_id and *be; 0
 * or DROP_BACKEND_MISSING (counted). */
static __always_inline int lb6_random_backend(const struct lb6_service *svc,
					      __u32 *backend_id, struct lb6_backend **be)
{
	struct lb4_slot_key key;
	__u32 *id;

	__builtin_memset(&key, 0, sizeof(key));
	key.svc_id = svc->id;
	key.slot = bpf_get_prandom_u32() % svc->count;
	id = map_slot4_lookup(&key);
	*be = id ? lb6_lookup_backend(*id, svc->id) : NULL;
	if (!*be) {
		stats_global_inc(GSTAT_BACKEND_MISSING);
		return DROP_BACKEND_MISSING;
	}
	*backend_id = *id;
	return 0;
}

/* Pick a backend for a new flow (see lb4_select_backend). 0 or DROP_* (counted). */
static __always_inline int lb6_select_backend(const struct lb6_service *svc,
					      const struct pkt6 *pkt,
					      __u32 *backend_id, struct lb6_backend **be)
{
	if (svc->count == 0) {
		stats_global_inc(GSTAT_NO_BACKEND);
		return DROP_NO_BACKEND;
	}
	if (svc->flags & SVC_F_MAGLEV) {
		*be = lb6_maglev_backend(svc, pkt, backend_id);
		if (*be)
			return 0;
	}
	return lb6_random_backend(svc, backend_id, be);
}

#endif

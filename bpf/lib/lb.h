/* lb.h: service lookup and backend selection: which backend a new flow gets (random
 * slot, as kube-proxy and Cilium do by default, or Maglev consistent hashing), whether
 * a backend is still one of its service's, and whether a client may use a frontend
 * at all (source ranges). */
#ifndef EBPFLB_LB_H
#define EBPFLB_LB_H

#include "abi.h"
#include "consts.h"
#include "drop_reasons.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

/* The service whose frontend the packet is addressed to, or NULL. */
static __always_inline struct lb4_service *lb4_lookup_service(const struct pkt4 *pkt)
{
	struct lb4_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.address = pkt->daddr;
	key.dport = pkt->dport;
	key.proto = pkt->proto;
	return map_svc4_lookup(&key);
}

/* Backend id's entry if it still belongs to service svc_id, else NULL. A removed
 * backend's entry is all zero: its svc_id 0 is never a service's (ids start at 1). */
static __always_inline struct lb4_backend *lb4_lookup_backend(__u32 backend_id, __u32 svc_id)
{
	struct lb4_backend *be = map_be4_lookup(&backend_id);

	if (!be || be->svc_id != svc_id)
		return NULL;
	return be;
}

/* Where replies of service svc_id are rewritten to, or NULL once it is deleted (its
 * entry zeroed: a frontend's port is never 0). */
static __always_inline struct lb4_rnat *lb4_lookup_rnat(__u32 svc_id)
{
	struct lb4_rnat *rnat = map_rnat4_lookup(&svc_id);

	if (!rnat || !rnat->port)
		return NULL;
	return rnat;
}

/* Whether svc admits a new flow from saddr: always, unless it has source ranges
 * (loadBalancerSourceRanges) and saddr is in none of them. */
static __always_inline int lb4_source_allowed(const struct lb4_service *svc, __be32 saddr)
{
	struct srcrange4_key key;

	if (!(svc->flags & SVC_F_SRC_RANGES))
		return 1;
	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = 64;
	key.svc_id = svc->id;
	key.address = saddr;
	return map_srcr4_lookup(&key) != NULL;
}

/* lowbias32 (Chris Wellons' integer hash): a good avalanche for two multiplies. */
static __always_inline __u32 lb_mix32(__u32 x)
{
	x ^= x >> 16;
	x *= 0x7feb352dU;
	x ^= x >> 15;
	x *= 0x846ca68bU;
	x ^= x >> 16;
	return x;
}

/* The flow's hash for Maglev: the same 5-tuple gives the same value on every node
 * (ebpflb/maglev.py computes it alike, on the same raw network-order words). */
static __always_inline __u32 lb4_flow_hash(const struct pkt4 *pkt)
{
	__u32 h = FLOW_HASH_SEED;

	h = lb_mix32(h ^ pkt->saddr);
	h = lb_mix32(h ^ pkt->daddr);
	h = lb_mix32(h ^ (((__u32)pkt->sport << 16) | pkt->dport));
	return lb_mix32(h ^ pkt->proto);
}

/* The backend svc's Maglev table gives the flow (sets *backend_id), or NULL when the
 * frontend has no table or the entry is stale: the caller then chooses at random. */
static __always_inline struct lb4_backend *lb4_maglev_backend(const struct lb4_service *svc,
							      const struct pkt4 *pkt,
							      __u32 *backend_id)
{
	__u32 index = CFG_MAGLEV_SIZE, svc_id = svc->id, slot;
	struct lb4_backend *be;
	__u32 *size, *id;
	void *table;

	size = map_cfg_lookup(&index);
	if (!size || !*size)
		return NULL;
	table = map_mg4_lookup(&svc_id);
	if (!table)
		return NULL;
	slot = lb4_flow_hash(pkt) % *size;
	id = bpf_map_lookup_elem(table, &slot);
	if (!id)
		return NULL;
	be = lb4_lookup_backend(*id, svc_id);
	if (!be || !(be->flags & BE_F_ACTIVE))
		return NULL;
	*backend_id = *id;
	return be;
}

/* A random slot among the svc->count (> 0) usable ones: sets *backend_id and *be; 0
 * or DROP_BACKEND_MISSING (counted). */
static __always_inline int lb4_random_backend(const struct lb4_service *svc,
					      __u32 *backend_id, struct lb4_backend **be)
{
	struct lb4_slot_key key;
	__u32 *id;

	__builtin_memset(&key, 0, sizeof(key));
	key.svc_id = svc->id;
	key.slot = bpf_get_prandom_u32() % svc->count;
	id = map_slot4_lookup(&key);
	*be = id ? lb4_lookup_backend(*id, svc->id) : NULL;
	if (!*be) {
		stats_global_inc(GSTAT_BACKEND_MISSING);
		return DROP_BACKEND_MISSING;
	}
	*backend_id = *id;
	return 0;
}

/* Pick a backend for a new flow: by the Maglev table for a SVC_F_MAGLEV frontend,
 * else a random slot among the svc->count usable ones. Sets *backend_id and *be; 0
 * or a DROP_* code (counted). */
static __always_inline int lb4_select_backend(const struct lb4_service *svc,
					      const struct pkt4 *pkt,
					      __u32 *backend_id, struct lb4_backend **be)
{
	if (svc->count == 0) {
		stats_global_inc(GSTAT_NO_BACKEND);
		return DROP_NO_BACKEND;
	}
	if (svc->flags & SVC_F_MAGLEV) {
		*be = lb4_maglev_backend(svc, pkt, backend_id);
		if (*be)
			return 0;
	}
	return lb4_random_backend(svc, backend_id, be);
}

#endif

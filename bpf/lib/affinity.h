/* affinity.h: sessionAffinity: ClientIP. A client's new flows to a frontend go to the
 * backend its last new flow got, while that backend still serves new flows and less
 * than the frontend's timeout has passed since that last flow (kube-proxy's "recent"
 * match counts from the last use too). Flows already tracked never look here. */
#ifndef EBPFLB_AFFINITY_H
#define EBPFLB_AFFINITY_H

#include "abi.h"
#include "consts.h"
#include "lb.h"
#include "maps.h"

static __always_inline void aff4_key_init(struct aff4_key *key, __be32 client, __u32 svc_id)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->client = client;
	key->svc_id = svc_id;
}

/* The client's affinity backend of svc if it is still valid (sets *backend_id), or NULL. */
static __always_inline struct lb4_backend *aff4_lookup(const struct lb4_service *svc,
						       __be32 client, __u32 *backend_id)
{
	struct lb4_backend *be;
	struct aff4_value *val;
	struct aff4_key key;

	aff4_key_init(&key, client, svc->id);
	val = map_aff4_lookup(&key);
	if (!val)
		return NULL;
	if (bpf_ktime_get_ns() - val->last_ns > (__u64)svc->affinity_timeout * NSEC_PER_SEC)
		return NULL;
	be = lb4_lookup_backend(val->backend_id, svc->id);
	if (!be || !(be->flags & BE_F_ACTIVE))
		return NULL;
	*backend_id = val->backend_id;
	return be;
}

/* A new flow of client to svc went to backend_id: remember it, now. */
static __always_inline void aff4_record(const struct lb4_service *svc, __be32 client,
					__u32 backend_id)
{
	struct aff4_value val;
	struct aff4_key key;

	aff4_key_init(&key, client, svc->id);
	__builtin_memset(&val, 0, sizeof(val));
	val.last_ns = bpf_ktime_get_ns();
	val.backend_id = backend_id;
	map_aff4_update(&key, &val);
}

#endif

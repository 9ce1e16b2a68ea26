/* affinity6.h: sessionAffinity: ClientIP for IPv6 clients (affinity.h's twin, with the
 * same rules: the last new flow's backend, while it still serves new flows and the
 * frontend's timeout since that flow has not passed). The value is an aff4_value. */
#ifndef EBPFLB_AFFINITY6_H
#define EBPFLB_AFFINITY6_H

#include "abi.h"
#include "consts.h"
#include "lb6.h"
#include "maps.h"

static __always_inline void aff6_key_init(struct aff6_key *key, const struct addr6 *client,
					  __u32 svc_id)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->client = *client;
	key->svc_id = svc_id;
}

/* The client's affinity backend of svc if it is still valid (sets *backend_id), or NULL. */
static __always_inline struct lb6_backend *aff6_lookup(const struct lb6_service *svc,
						       const struct addr6 *client,
						       __u32 *backend_id)
{
	struct lb6_backend *be;
	struct aff4_value *val;
	struct aff6_key key;

	aff6_key_init(&key, client, svc->id);
	val = map_aff6_lookup(&key);
	if (!val)
		return NULL;
	if (bpf_ktime_get_ns() - val->last_ns > (__u64)svc->affinity_timeout * NSEC_PER_SEC)
		return NULL;
	be = lb6_lookup_backend(val->backend_id, svc->id);
	if (!be || !(be->flags & BE_F_ACTIVE))
		return NULL;
	*backend_id = val->backend_id;
	return be;
}

/* A new flow of client to svc went to backend_id: remember it, now. */
static __always_inline void aff6_record(const struct lb6_service *svc,
					const struct addr6 *client, __u32 backend_id)
{
	struct aff4_value val;
	struct aff6_key key;

	aff6_key_init(&key, client, svc->id);
	__builtin_memset(&val, 0, sizeof(val));
	val.last_ns = bpf_ktime_get_ns();
	val.backend_id = backend_id;
	map_aff6_update(&key, &val);
}

#endif

/* ct.h: connection tracking. A translated flow has two entries in ebpflb_ct4: the
 * SERVICE one (client -> frontend, keyed as the client sends) names the backend, so
 * the flow keeps it while backends change; the REPLY one (backend -> client, keyed as
 * the backend answers) names the service whose frontend replies are rewritten to. */
#ifndef EBPFLB_CT_H
#define EBPFLB_CT_H

#include "abi.h"
#include "consts.h"
#include "drop_reasons.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

static __always_inline void ct4_key_init(struct ct4_key *key, __be32 saddr, __be32 daddr,
					 __be16 sport, __be16 dport, __u8 proto, __u8 dir)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->saddr = saddr;
	key->daddr = daddr;
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->dir = dir;
}

/* The entry for the packet's own 5-tuple in direction dir, or NULL. */
static __always_inline struct ct4_value *ct4_lookup(const struct pkt4 *pkt, __u8 dir)
{
	struct ct4_key key;

	ct4_key_init(&key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, pkt->proto, dir);
	return map_ct4_lookup(&key);
}

/* A packet of the flow was seen. */
static __always_inline void ct4_touch(struct ct4_value *ct)
{
	ct->last_seen_ns = bpf_ktime_get_ns();
}

/* Does the SERVICE entry ct still send the flow to backend be of service svc_id? */
static __always_inline int ct4_matches_backend(const struct ct4_value *ct, __u32 svc_id,
					       const struct lb4_backend *be)
{
	return ct->svc_id == svc_id && be->address == ct->nat_address &&
	       be->port == ct->nat_port;
}

/* Forget the REPLY entry of a flow that was sent to old_addr:old_port (its backend is
 * gone and the flow is moving to another one). */
static __always_inline void ct4_delete_reply(const struct pkt4 *pkt, __be32 old_addr,
					     __be16 old_port)
{
	struct ct4_key key;

	ct4_key_init(&key, old_addr, pkt->saddr, old_port, pkt->sport, pkt->proto,
		     CT_DIR_REPLY);
	map_ct4_delete(&key);
}

/* Write (or overwrite) both entries of the packet's flow, now sent to backend be.
 * 0 or DROP_CT_FULL (counted; the SERVICE entry is rolled back). */
static __always_inline int ct4_create(const struct pkt4 *pkt, __u32 svc_id,
				      __u32 backend_id, const struct lb4_backend *be)
{
	struct ct4_key svc_key, reply_key;
	struct ct4_value value;
	__u64 now = bpf_ktime_get_ns();

	ct4_key_init(&svc_key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, pkt->proto,
		     CT_DIR_SERVICE);
	__builtin_memset(&value, 0, sizeof(value));
	value.created_ns = now;
	value.last_seen_ns = now;
	value.backend_id = backend_id;
	value.svc_id = svc_id;
	value.nat_address = be->address;
	value.nat_port = be->port;
	if (map_ct4_update(&svc_key, &value) < 0)
		goto full;

	ct4_key_init(&reply_key, be->address, pkt->saddr, be->port, pkt->sport, pkt->proto,
		     CT_DIR_REPLY);
	value.nat_address = pkt->daddr;
	value.nat_port = pkt->dport;
	if (map_ct4_update(&reply_key, &value) < 0) {
		map_ct4_delete(&svc_key);
		goto full;
	}
	return 0;
full:
	stats_global_inc(GSTAT_CT_FULL);
	return DROP_CT_FULL;
}

#endif

/* ct6.h: IPv6 connection tracking in ebpflb_ct6_v2, as ct.h does it for IPv4: two
 * entries per flow, SERVICE (client -> frontend, names the backend) and REPLY (backend ->
 * client or the source-NAT address, names the service and, when NATed, the client).
 * An all-zero peer_address means "not source-NATed" (:: is never a NAT address). */
#ifndef EBPFLB_CT6_H
#define EBPFLB_CT6_H

#include "abi.h"
#include "consts.h"
#include "ct.h"
#include "drop_reasons.h"
#include "ip6.h"
#include "maps.h"
#include "stats.h"

static __always_inline void ct6_key_init(struct ct6_key *key, const struct addr6 *saddr,
					 const struct addr6 *daddr, __be16 sport, __be16 dport,
					 __u8 proto, __u8 dir)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->saddr = *saddr;
	key->daddr = *daddr;
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->dir = dir;
}

/* A packet of the flow was seen (see ct4_touch). */
static __always_inline void ct6_touch(struct ct6_value *ct)
{
	__u64 now = ct_now();

	if (now - ct->last_seen_ns >= CT_TOUCH_NS)
		ct->last_seen_ns = now;
}

/* Does the SERVICE entry ct still send the packet's flow to backend be of service
 * svc_id? As ct4_matches_backend. */
static __always_inline int ct6_matches_backend(const struct ct6_value *ct, const struct pkt6 *pkt,
					       __u32 svc_id, const struct lb6_backend *be)
{
	if (!(be->flags & BE_F_ACTIVE) && pkt_leaves_inactive(pkt->proto, pkt->tcp_flags))
		return 0;
	return ct->svc_id == svc_id && addr6_eq(&be->address, &ct->nat_address) &&
	       be->port == ct->nat_port;
}

/* The REPLY key of the flow whose SERVICE entry is ct. */
static __always_inline void ct6_reply_key(struct ct6_key *key, const struct pkt6 *pkt,
					  const struct ct6_value *ct)
{
	int natted = !addr6_is_zero(&ct->peer_address);

	ct6_key_init(key, &ct->nat_address, natted ? &ct->peer_address : &pkt->saddr,
		     ct->nat_port, natted ? ct->peer_port : pkt->sport, pkt->proto,
		     CT_DIR_REPLY);
}

/* As ct4_note_close. */
static __always_inline void ct6_note_close(const struct pkt6 *pkt, struct ct6_value *ct, __u8 dir)
{
	int note = ct_note_of(pkt->proto, pkt->tcp_flags);
	struct ct6_value *reply = ct;
	struct ct6_key key;

	if (note == CT_NOTE_NONE)
		return;
	if (dir == CT_DIR_SERVICE) {
		ct6_reply_key(&key, pkt, ct);
		reply = map_ct6_lookup(&key);
		if (!reply)
			return;
	}
	ct_apply_note(&reply->flags, note);
}

/* The entry for the packet's own 5-tuple in direction dir, or NULL; as ct4_lookup. */
static __always_inline struct ct6_value *ct6_lookup(const struct pkt6 *pkt, __u8 dir)
{
	struct ct6_value *ct;
	struct ct6_key key;

	ct6_key_init(&key, &pkt->saddr, &pkt->daddr, pkt->sport, pkt->dport, pkt->proto, dir);
	ct = map_ct6_lookup(&key);
	if (ct)
		ct6_note_close(pkt, ct, dir);
	return ct;
}

/* Forget the REPLY entry of the flow whose SERVICE entry is ct. */
static __always_inline void ct6_delete_reply(const struct pkt6 *pkt, const struct ct6_value *ct)
{
	struct ct6_key key;

	ct6_reply_key(&key, pkt, ct);
	map_ct6_delete(&key);
}

/* A new flow's value, as its REPLY entry holds it (see ct4_value_init). */
static __always_inline void ct6_value_init(struct ct6_value *value, const struct pkt6 *pkt,
					   __u32 svc_id, __u32 backend_id)
{
	__u64 now = ct_now();

	__builtin_memset(value, 0, sizeof(*value));
	value->created_ns = now;
	value->last_seen_ns = now;
	value->backend_id = backend_id;
	value->svc_id = svc_id;
	value->nat_address = pkt->daddr;
	value->nat_port = pkt->dport;
}

/* Write the REPLY entry of a flow that keeps its client address. Fills *key; 0 or
 * DROP_CT_FULL (counted). */
static __always_inline int ct6_create_reply(struct ct6_key *key, struct ct6_value *value,
					    const struct pkt6 *pkt, const struct lb6_backend *be)
{
	ct6_key_init(key, &be->address, &pkt->saddr, be->port, pkt->sport, pkt->proto,
		     CT_DIR_REPLY);
	if (map_ct6_update(key, value) < 0) {
		stats_global_inc(GSTAT_CT_FULL);
		return DROP_CT_FULL;
	}
	return 0;
}

/* Write the SERVICE entry of the packet's flow, now sent to backend be and source-NATed
 * to *snat_addr:snat_port unless snat_addr is all zero, once its REPLY entry
 * (reply_key) is written. 0 or DROP_CT_FULL (counted; the REPLY entry is removed). */
static __always_inline int ct6_create_service(struct ct6_key *key, struct ct6_key *reply_key,
					      struct ct6_value *value, const struct pkt6 *pkt,
					      const struct lb6_backend *be,
					      const struct addr6 *snat_addr, __be16 snat_port)
{
	ct6_key_init(key, &pkt->saddr, &pkt->daddr, pkt->sport, pkt->dport, pkt->proto,
		     CT_DIR_SERVICE);
	value->nat_address = be->address;
	value->nat_port = be->port;
	value->peer_address = *snat_addr;
	value->peer_port = addr6_is_zero(snat_addr) ? 0 : snat_port;
	if (map_ct6_update(key, value) < 0) {
		map_ct6_delete(reply_key);
		stats_global_inc(GSTAT_CT_FULL);
		return DROP_CT_FULL;
	}
	return 0;
}

#endif

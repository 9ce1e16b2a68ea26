/* ct.h: connection tracking. A translated flow has two entries in ebpflb_ct4: the
 * SERVICE one (client -> frontend, keyed as the client sends) names the backend, so
 * the flow keeps it while backends change; the REPLY one (backend -> client, keyed as
 * the backend answers) names the service whose frontend replies are rewritten to.
 * A source-NATed flow (external traffic to a backend anywhere, a pod reaching itself)
 * is answered to the NAT address and port: its REPLY entry is keyed so, and names the
 * client (peer) that replies go back to. */
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

/* The REPLY key of the flow whose SERVICE entry is ct: the backend answers the client,
 * or the source-NAT address and port the flow was given. */
static __always_inline void ct4_reply_key(struct ct4_key *key, const struct pkt4 *pkt,
					  const struct ct4_value *ct)
{
	__be32 daddr = ct->peer_address ? ct->peer_address : pkt->saddr;
	__be16 dport = ct->peer_address ? ct->peer_port : pkt->sport;

	ct4_key_init(key, ct->nat_address, daddr, ct->nat_port, dport, pkt->proto,
		     CT_DIR_REPLY);
}

/* Forget the REPLY entry of the flow whose SERVICE entry is ct (its backend is gone
 * and the flow is moving to another one). */
static __always_inline void ct4_delete_reply(const struct pkt4 *pkt, const struct ct4_value *ct)
{
	struct ct4_key key;

	ct4_reply_key(&key, pkt, ct);
	map_ct4_delete(&key);
}

/* Claim a free source-NAT port for a flow to be->address:be->port from snat_addr: the
 * REPLY entry is inserted only where none exists, trying up to NAT_PORT_TRIES ports
 * from a random start. Fills *key and value->peer_port; 0 or DROP_NAT_PORT_FULL. */
static __always_inline int ct4_insert_snat_reply(struct ct4_key *key, struct ct4_value *value,
						 const struct pkt4 *pkt,
						 const struct lb4_backend *be, __be32 snat_addr,
						 __be16 *snat_port)
{
	__u32 first = bpf_get_prandom_u32() % NAT_PORT_COUNT;
	__u32 i;

	for (i = 0; i < NAT_PORT_TRIES; i++) {
		__be16 port = bpf_htons(NAT_PORT_MIN + (first + i) % NAT_PORT_COUNT);

		ct4_key_init(key, be->address, snat_addr, be->port, port, pkt->proto,
			     CT_DIR_REPLY);
		if (map_ct4_insert(key, value) == 0) {
			*snat_port = port;
			return 0;
		}
	}
	stats_global_inc(GSTAT_NAT_PORT_FULL);
	return DROP_NAT_PORT_FULL;
}

/* Write (or overwrite) both entries of the packet's flow, now sent to backend be, and
 * with snat_addr != 0 source-NATed to snat_addr and a free port (set in *snat_port).
 * 0 or a DROP_* code (counted; nothing is left half-written). */
static __always_inline int ct4_create(const struct pkt4 *pkt, __u32 svc_id,
				      __u32 backend_id, const struct lb4_backend *be,
				      __be32 snat_addr, __be16 *snat_port)
{
	struct ct4_key svc_key, reply_key;
	struct ct4_value value;
	__u64 now = bpf_ktime_get_ns();
	int ret;

	__builtin_memset(&value, 0, sizeof(value));
	value.created_ns = now;
	value.last_seen_ns = now;
	value.backend_id = backend_id;
	value.svc_id = svc_id;
	/* REPLY first: with source NAT it is what claims the port. */
	value.nat_address = pkt->daddr;
	value.nat_port = pkt->dport;
	if (snat_addr) {
		value.peer_address = pkt->saddr;
		value.peer_port = pkt->sport;
		ret = ct4_insert_snat_reply(&reply_key, &value, pkt, be, snat_addr, snat_port);
		if (ret < 0)
			return ret;
	} else {
		ct4_key_init(&reply_key, be->address, pkt->saddr, be->port, pkt->sport,
			     pkt->proto, CT_DIR_REPLY);
		if (map_ct4_update(&reply_key, &value) < 0)
			goto full;
	}

	ct4_key_init(&svc_key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, pkt->proto,
		     CT_DIR_SERVICE);
	value.nat_address = be->address;
	value.nat_port = be->port;
	value.peer_address = snat_addr;
	value.peer_port = snat_addr ? *snat_port : 0;
	if (map_ct4_update(&svc_key, &value) < 0) {
		map_ct4_delete(&reply_key);
		goto full;
	}
	return 0;
full:
	stats_global_inc(GSTAT_CT_FULL);
	return DROP_CT_FULL;
}

#endif

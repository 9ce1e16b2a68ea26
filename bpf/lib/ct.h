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

/* The flows' clock: CLOCK_MONOTONIC, as bpf_ktime_get_ns and userspace's
 * time.monotonic_ns(), at tick resolution (a flow's age and idle time, ebpflb
 * conntrack, need no better). bpf_ktime_get_coarse_ns reads the time of the last tick;
 * as a helper call it costs ~35 ns here, a tenth of a conntrack hit. bpf_jiffies64 is
 * inlined by the verifier into one load: the coarse time is read again only when
 * jiffies moved since this CPU last read it, and cached per CPU (ebpflb_clock) in
 * between. The timekeeper updates the coarse time just after jiffies, so the cached
 * value may lag it by up to a tick (1-4 ms): still tick resolution. */
static __always_inline __u64 ct_now(void)
{
	__u32 index = 0;
	struct ct_clock *clock = map_clock_lookup(&index);
	__u64 jiffies = bpf_jiffies64();

	if (!clock)
		return bpf_ktime_get_coarse_ns();
	if (clock->jiffies != jiffies || !clock->now_ns) {
		clock->now_ns = bpf_ktime_get_coarse_ns();
		clock->jiffies = jiffies;
	}
	return clock->now_ns;
}

/* A packet of the flow was seen. last_seen_ns moves only once it is CT_TOUCH_NS old:
 * a write per packet would dirty the entry's cache line for every CPU that reads it. */
static __always_inline void ct4_touch(struct ct4_value *ct)
{
	__u64 now = ct_now();

	if (now - ct->last_seen_ns >= CT_TOUCH_NS)
		ct->last_seen_ns = now;
}

/* Does the SERVICE entry ct still send the packet's flow to backend be of service
 * svc_id? Not when the backend no longer takes new flows and the packet may leave it
 * (pkt_leaves_inactive: a SYN on a reused port, a UDP datagram): it chooses again. */
static __always_inline int ct4_matches_backend(const struct ct4_value *ct, const struct pkt4 *pkt,
					       __u32 svc_id, const struct lb4_backend *be)
{
	if (!(be->flags & BE_F_ACTIVE) && pkt_leaves_inactive(pkt->proto, pkt->tcp_flags))
		return 0;
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

/* Whether a flow's REPLY entry (flags, last_seen_ns) says the flow is over, so a new
 * flow may take its NAT port (consts.h NAT_REUSE_*). Family-agnostic. */
static __always_inline int ct_flow_over(__u16 flags, __u64 last_seen_ns, __u8 proto, __u64 now)
{
	__u64 idle = now - last_seen_ns;

	if (now < last_seen_ns)
		return 0;
	if (flags & CT_F_CLOSING)
		return idle > NAT_REUSE_CLOSED_NS;
	return idle > (proto == IP4_PROTO_TCP ? NAT_REUSE_TCP_NS : NAT_REUSE_OTHER_NS);
}

#define CT_NOTE_NONE		0	/* the segment says nothing of the flow's end */
#define CT_NOTE_CLOSE		1	/* a TCP FIN or RST */
#define CT_NOTE_OPEN		2	/* a SYN opening the tuple again */

/* What a packet says of its flow's end (family-agnostic). */
static __always_inline int ct_note_of(__u8 proto, __u8 tcp_flags)
{
	if (pkt_opens_tcp(proto, tcp_flags))
		return CT_NOTE_OPEN;
	if (proto == IP4_PROTO_TCP && (tcp_flags & (TCP_F_FIN | TCP_F_RST)))
		return CT_NOTE_CLOSE;
	return CT_NOTE_NONE;
}

/* Mark (CT_NOTE_CLOSE) or clear (CT_NOTE_OPEN) CT_F_CLOSING in a REPLY entry's flags. */
static __always_inline void ct_apply_note(__u16 *flags, int note)
{
	if (note == CT_NOTE_OPEN)
		*flags &= ~CT_F_CLOSING;
	else
		*flags |= CT_F_CLOSING;
}

/* A TCP FIN or RST marks its flow closing, on the REPLY entry (the one that holds a
 * NAT port, see ct_flow_over); a SYN opening the tuple again clears the mark. Only
 * those segments pay for it. */
static __always_inline void ct4_note_close(const struct pkt4 *pkt, struct ct4_value *ct, __u8 dir)
{
	int note = ct_note_of(pkt->proto, pkt->tcp_flags);
	struct ct4_value *reply = ct;
	struct ct4_key key;

	if (note == CT_NOTE_NONE)
		return;
	if (dir == CT_DIR_SERVICE) {
		ct4_reply_key(&key, pkt, ct);
		reply = map_ct4_lookup(&key);
		if (!reply)
			return;
	}
	ct_apply_note(&reply->flags, note);
}

/* The entry for the packet's own 5-tuple in direction dir, or NULL; a FIN, RST or SYN
 * of a tracked flow is noted (ct4_note_close). */
static __always_inline struct ct4_value *ct4_lookup(const struct pkt4 *pkt, __u8 dir)
{
	struct ct4_value *ct;
	struct ct4_key key;

	ct4_key_init(&key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, pkt->proto, dir);
	ct = map_ct4_lookup(&key);
	if (ct)
		ct4_note_close(pkt, ct, dir);
	return ct;
}

/* A new flow's value, as its REPLY entry holds it: the backend, the service, the times,
 * and the frontend (nat_*) that replies are rewritten to. A source-NAT port claim
 * (nat.h) adds the client (peer_*) before the REPLY entry is written. */
static __always_inline void ct4_value_init(struct ct4_value *value, const struct pkt4 *pkt,
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

/* Write (or overwrite) the REPLY entry of a flow that keeps its client address:
 * backend -> client. Fills *key; 0 or DROP_CT_FULL (counted). */
static __always_inline int ct4_create_reply(struct ct4_key *key, struct ct4_value *value,
					    const struct pkt4 *pkt, const struct lb4_backend *be)
{
	ct4_key_init(key, be->address, pkt->saddr, be->port, pkt->sport, pkt->proto,
		     CT_DIR_REPLY);
	if (map_ct4_update(key, value) < 0) {
		stats_global_inc(GSTAT_CT_FULL);
		return DROP_CT_FULL;
	}
	return 0;
}

/* Write (or overwrite) the SERVICE entry of the packet's flow (its key made in *key),
 * now sent to backend be (and source-NATed to snat_addr:snat_port when snat_addr != 0),
 * once its REPLY entry (reply_key) is written. 0 or DROP_CT_FULL (counted; the REPLY
 * entry is removed again, so nothing is left half-written). */
static __always_inline int ct4_create_service(struct ct4_key *key, struct ct4_key *reply_key,
					      struct ct4_value *value, const struct pkt4 *pkt,
					      const struct lb4_backend *be, __be32 snat_addr,
					      __be16 snat_port)
{
	ct4_key_init(key, pkt->saddr, pkt->daddr, pkt->sport, pkt->dport, pkt->proto,
		     CT_DIR_SERVICE);
	value->nat_address = be->address;
	value->nat_port = be->port;
	value->peer_address = snat_addr;
	value->peer_port = snat_addr ? snat_port : 0;
	if (map_ct4_update(key, value) < 0) {
		map_ct4_delete(reply_key);
		stats_global_inc(GSTAT_CT_FULL);
		return DROP_CT_FULL;
	}
	return 0;
}

#endif

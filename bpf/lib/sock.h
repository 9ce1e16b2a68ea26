/* sock.h: socket-LB, translation where a socket is addressed instead of per packet.
 * connect() and sendmsg() are sent to a backend, and getpeername() and recvmsg() show
 * the frontend again, as kube-proxy's OUTPUT chain and Cilium's socket-LB do. Two
 * kinds of sockets are served:
 * - the agent's own network namespace (CFG_NETNS_*: host-network pods, the kubelet,
 *   node processes), whose packets cross no veth or uplink on their way in, so the tc
 *   programs cannot translate them at all;
 * - this node's pods (ebpflb_sknetns, `--socket-lb pods`), whose packets tc would
 *   translate, but at a cost on every packet: a pod's connection sent to the backend
 *   at connect() is never looked at again (tc sees a pod address, not a frontend, so
 *   a flow is never translated twice).
 * The set of pods is a set of netns cookies, not a cgroup: the programs hang on the
 * cgroup root (every process of the machine) and lab nodes share one machine's
 * cgroups, so only the namespace tells node 1's pods from node 2's. On a real node a
 * pod's cgroup would do too (Cilium attaches to the root and serves every namespace);
 * the cookie set is what keeps each lab node's agent to its own pods, and costs one
 * hash look-up. Every other namespace's traffic is the tc programs' (or another node's
 * agent's, in the lab). */
#ifndef EBPFLB_SOCK_H
#define EBPFLB_SOCK_H

#include <uapi/linux/bpf.h>

#include "abi.h"
#include "affinity.h"
#include "consts.h"
#include "lb.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

#define SOCK_PASS	1	/* a cgroup sock_addr hook's "go on" */
#define SOCK_DENY	0	/* ... and its "refuse" (EPERM unless sock_refuse says) */
#define SOCK_ECONNREFUSED	111

/* Refuse a connect() or sendmsg() to a frontend without a usable endpoint: with
 * ECONNREFUSED, what kube-proxy's REJECT rule and the tc path's RST give a client,
 * where the kernel lets a hook choose its errno (bpf_set_retval, Linux 5.18: the
 * loader passes -DHAVE_SET_RETVAL); else the plain deny's EPERM. */
static __always_inline int sock_refuse(void)
{
#ifdef HAVE_SET_RETVAL
	bpf_set_retval(-SOCK_ECONNREFUSED);
#endif
	return SOCK_DENY;
}

/* Whose socket a hook runs for: one the agent serves (ours), and the client addresses
 * its packets carry (a pod's; zero for the agent's own namespace, whose sockets may
 * use any node address: no affinity is kept for them, as before). */
struct sock_client {
	__be32 addr4;
	struct addr6 addr6;
};

/* Whether the socket (of either family) lives in the agent's network namespace or in
 * one of this node's pods' (then *client holds the pod's addresses). */
static __always_inline int sock_ours(struct bpf_sock_addr *ctx, struct sock_client *client)
{
	__u32 lo_index = CFG_NETNS_LO, hi_index = CFG_NETNS_HI;
	__u32 *lo = map_cfg_lookup(&lo_index), *hi = map_cfg_lookup(&hi_index);
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct sknetns_value *pod;

	__builtin_memset(client, 0, sizeof(*client));
	if (lo && hi && netns == (((__u64)*hi << 32) | *lo) && netns)
		return 1;
	pod = map_sknetns_lookup(&netns);
	if (!pod)
		return 0;
	client->addr4 = pod->addr4;
	client->addr6 = pod->addr6;
	return 1;
}

/* The backend for a datagram of an unconnected socket: the slot that a hash of the
 * socket's cookie and the frontend picks among the svc->count (> 0) usable ones, so
 * every datagram of one socket to one frontend reaches the same backend (a random slot
 * per datagram scattered one socket's 50 datagrams 20/18/12 over three backends).
 * When the backends change, the agent rewrites the slots and the socket moves with
 * them; no state is kept. Sets *backend_id and *be; 0 or DROP_BACKEND_MISSING. */
static __always_inline int sock4_stable_backend(struct bpf_sock_addr *ctx,
						const struct lb4_service *svc,
						const struct pkt4 *pkt, __u32 *backend_id,
						struct lb4_backend **be)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb4_slot_key key;
	__u32 h = FLOW_HASH_SEED;
	__u32 *id;

	h = lb_mix32(h ^ (__u32)cookie);
	h = lb_mix32(h ^ (__u32)(cookie >> 32));
	h = lb_mix32(h ^ pkt->daddr);
	h = lb_mix32(h ^ (((__u32)pkt->dport << 16) | pkt->proto));
	__builtin_memset(&key, 0, sizeof(key));
	key.svc_id = svc->id;
	key.slot = h % svc->count;
	id = map_slot4_lookup(&key);
	*be = id ? lb4_lookup_backend(*id, svc->id) : NULL;
	if (!*be) {
		stats_global_inc(GSTAT_BACKEND_MISSING);
		return DROP_BACKEND_MISSING;
	}
	*backend_id = *id;
	return 0;
}

/* What sock4_translate (and sock6_translate) did. */
#define SOCK_XLATE_NONE		0	/* not a frontend socket-LB serves: untouched */
#define SOCK_XLATE_DONE		1	/* sent to *be; the way back is recorded */
#define SOCK_XLATE_REFUSE	2	/* a frontend without a usable endpoint */

/* connect() or sendmsg() of ctx's socket to the IPv4 frontend in pkt (daddr, dport,
 * proto): choose one of its backends (*be) and remember the frontend for the way back,
 * keyed by the socket's cookie and the IPv4 backend. A connect() gets a random backend;
 * a datagram of an unconnected socket (per_socket) the same one as the socket's
 * earlier datagrams to that frontend. The caller writes the backend into its own
 * address field: user_ip4, or the last word of an IPv4-mapped user_ip6 (sock6.h).
 * A SOCK_XLATE_* value. */
static __always_inline int sock4_translate(struct bpf_sock_addr *ctx, int per_socket,
					   const struct pkt4 *pkt, __be32 client,
					   struct lb4_backend **be)
{
	struct sknat4_value frontend;
	struct sknat4_key back;
	struct lb4_service *svc;
	__u32 backend_id;
	int affine;

	svc = lb4_lookup_service(pkt);
	if (!svc || (svc->flags & SVC_F_SRC_RANGES))
		return SOCK_XLATE_NONE;	/* not a frontend, or one for listed clients only */
	if (svc->count == 0) {
		stats_global_inc(GSTAT_NO_BACKEND);
		return SOCK_XLATE_REFUSE;
	}
	/* sessionAffinity: ClientIP of a pod: the backend tc would give its address, and
	 * tc's flows of that pod get the one chosen here (one map, one key). */
	affine = svc->affinity_timeout && client;
	*be = affine ? aff4_lookup(svc, client, &backend_id) : NULL;
	if (*be)
		stats_global_inc(GSTAT_AFFINITY_HIT);
	/* No source port yet, so no Maglev (it needs the whole 5-tuple). */
	else if (per_socket ? sock4_stable_backend(ctx, svc, pkt, &backend_id, be) < 0
			    : lb4_random_backend(svc, &backend_id, be) < 0)
		return SOCK_XLATE_REFUSE;
	if (affine)
		aff4_record(svc, client, backend_id);
	__builtin_memset(&back, 0, sizeof(back));
	back.cookie = bpf_get_socket_cookie(ctx);
	back.address = (*be)->address;
	back.port = (*be)->port;
	__builtin_memset(&frontend, 0, sizeof(frontend));
	frontend.address = pkt->daddr;
	frontend.port = pkt->dport;
	map_sknat4_update(&back, &frontend);
	stats_global_inc(GSTAT_SOCK_LB);
	return SOCK_XLATE_DONE;
}

/* connect() or sendmsg() to an IPv4 frontend: address the socket (or datagram) to one
 * of its backends. SOCK_PASS, or sock_refuse() for a Service without a usable endpoint. */
static __always_inline int sock4_forward(struct bpf_sock_addr *ctx, int per_socket)
{
	struct lb4_backend *be = NULL;
	struct sock_client client;
	struct pkt4 pkt;
	int ret;

	if (ctx->protocol != IP4_PROTO_TCP && ctx->protocol != IP4_PROTO_UDP)
		return SOCK_PASS;
	if (!sock_ours(ctx, &client))
		return SOCK_PASS;
	__builtin_memset(&pkt, 0, sizeof(pkt));
	pkt.daddr = ctx->user_ip4;
	pkt.dport = (__be16)ctx->user_port;
	pkt.proto = ctx->protocol;
	ret = sock4_translate(ctx, per_socket, &pkt, client.addr4, &be);
	if (ret == SOCK_XLATE_REFUSE)
		return sock_refuse();
	if (ret == SOCK_XLATE_DONE && be) {
		ctx->user_ip4 = be->address;
		ctx->user_port = (__u32)be->port;
	}
	return SOCK_PASS;
}

/* The frontend that ctx's socket asked for when it was sent to the IPv4 backend
 * address:port, or NULL (not a translated socket). */
static __always_inline struct sknat4_value *sock4_frontend(struct bpf_sock_addr *ctx,
							   __be32 address, __be16 port)
{
	struct sknat4_key back;

	__builtin_memset(&back, 0, sizeof(back));
	back.cookie = bpf_get_socket_cookie(ctx);
	back.address = address;
	back.port = port;
	return map_sknat4_lookup(&back);
}

/* getpeername() or recvmsg() of a translated socket: the frontend, not the backend. */
static __always_inline int sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct sknat4_value *frontend;
	struct sock_client client;

	if (!sock_ours(ctx, &client))
		return SOCK_PASS;
	frontend = sock4_frontend(ctx, ctx->user_ip4, (__be16)ctx->user_port);
	if (frontend) {
		ctx->user_ip4 = frontend->address;
		ctx->user_port = (__u32)frontend->port;
	}
	return SOCK_PASS;
}

#endif

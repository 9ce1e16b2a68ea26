/* sock6.h: socket-LB for the IPv6 sockets of the agent's namespace and of this node's
 * pods (sock.h says why it exists and which sockets it serves): connect6, sendmsg6, recvmsg6 and getpeername6 do for an AF_INET6 socket what
 * the IPv4 hooks do, with the IPv6 service and backend maps (the slot map is shared:
 * ids are one space). A dual-stack AF_INET6 socket may also name an IPv4 peer as an
 * IPv4-mapped address (::ffff:10.96.0.10): that is an IPv4 flow on the wire, so it is
 * looked up in the IPv4 maps and sent to ::ffff:<IPv4 backend>.
 *
 * The reverse entry of such an IPv4-mapped translation is kept in ebpflb_sknat4, keyed
 * by the IPv4 backend, not in ebpflb_sknat6: an unconnected AF_INET6 UDP socket's
 * sendmsg() to a mapped address runs the kernel's IPv4 path and so the *sendmsg4* hook
 * (udpv6_sendmsg hands it to udp_sendmsg), which records it in sknat4, while its
 * recvmsg() runs the *recvmsg6* hook with ::ffff:<backend>. Keyed as IPv4, both halves
 * meet in one map whichever hook wrote the entry; the socket cookie in the key keeps
 * sockets apart whatever their family. */
#ifndef EBPFLB_SOCK6_H
#define EBPFLB_SOCK6_H

#include <uapi/linux/bpf.h>

#include "abi.h"
#include "affinity6.h"
#include "consts.h"
#include "ip6.h"
#include "lb.h"
#include "maps.h"
#include "stats.h"
#include "sock.h"

/* Whether ctx's IPv6 address is IPv4-mapped (::ffff:a.b.c.d). */
static __always_inline int sock6_v4mapped(const struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

/* The IPv6 service of frontend (address, port, proto), or NULL. */
static __always_inline struct lb6_service *sock6_lookup_service(const struct addr6 *address,
								 __be16 port, __u8 proto)
{
	struct lb6_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.address = *address;
	key.dport = port;
	key.proto = proto;
	return map_svc6_lookup(&key);
}

/* The backend of the svc->count (> 0) usable slots that a new socket (or datagram)
 * gets: a random slot for connect(); for a datagram of an unconnected socket
 * (per_socket), the slot a hash of the socket's cookie and the frontend picks, so all
 * its datagrams to that frontend reach one backend (as sock4_stable_backend). No
 * Maglev: there is no source port yet. *be or NULL (counted). */
static __always_inline struct lb6_backend *sock6_backend(struct bpf_sock_addr *ctx,
							 const struct lb6_service *svc,
							 const struct addr6 *daddr, __be16 dport,
							 __u8 proto, int per_socket,
							 __u32 *backend_id)
{
	struct lb4_slot_key key;
	struct lb6_backend *be;
	__u32 h = FLOW_HASH_SEED, *id;
	__u64 cookie;

	__builtin_memset(&key, 0, sizeof(key));
	key.svc_id = svc->id;
	if (per_socket) {
		cookie = bpf_get_socket_cookie(ctx);
		h = lb_mix32(h ^ (__u32)cookie);
		h = lb_mix32(h ^ (__u32)(cookie >> 32));
		h = lb_mix32(h ^ daddr->w[0]);
		h = lb_mix32(h ^ daddr->w[1]);
		h = lb_mix32(h ^ daddr->w[2]);
		h = lb_mix32(h ^ daddr->w[3]);
		h = lb_mix32(h ^ (((__u32)dport << 16) | proto));
		key.slot = h % svc->count;
	} else {
		key.slot = bpf_get_prandom_u32() % svc->count;
	}
	id = map_slot4_lookup(&key);
	if (!id)
		goto missing;
	*backend_id = *id;
	be = map_be6_lookup(backend_id);
	if (!be || be->svc_id != svc->id)
		goto missing;
	return be;
missing:
	stats_global_inc(GSTAT_BACKEND_MISSING);
	return NULL;
}

/* connect() or sendmsg() of ctx's socket to the IPv6 frontend (daddr, dport, proto):
 * choose a backend (*be) and record the frontend for the way back in ebpflb_sknat6. A
 * SOCK_XLATE_* value, as sock4_translate. */
static __always_inline int sock6_translate(struct bpf_sock_addr *ctx, int per_socket,
					   const struct addr6 *daddr, __be16 dport, __u8 proto,
					   const struct addr6 *client, struct lb6_backend **be)
{
	struct sknat6_value frontend;
	struct sknat6_key back;
	struct lb6_service *svc;
	__u32 backend_id;
	int affine;

	svc = sock6_lookup_service(daddr, dport, proto);
	if (!svc || (svc->flags & SVC_F_SRC_RANGES))
		return SOCK_XLATE_NONE;
	if (svc->count == 0) {
		stats_global_inc(GSTAT_NO_BACKEND);
		return SOCK_XLATE_REFUSE;
	}
	/* A pod's sessionAffinity: ClientIP, in tc's map under its address (sock4_translate). */
	affine = svc->affinity_timeout && !addr6_is_zero(client);
	*be = affine ? aff6_lookup(svc, client, &backend_id) : NULL;
	if (*be) {
		stats_global_inc(GSTAT_AFFINITY_HIT);
	} else {
		*be = sock6_backend(ctx, svc, daddr, dport, proto, per_socket, &backend_id);
		if (!*be)
			return SOCK_XLATE_REFUSE;
	}
	if (affine)
		aff6_record(svc, client, backend_id);
	__builtin_memset(&back, 0, sizeof(back));
	back.cookie = bpf_get_socket_cookie(ctx);
	back.address = (*be)->address;
	back.port = (*be)->port;
	__builtin_memset(&frontend, 0, sizeof(frontend));
	frontend.address = *daddr;
	frontend.port = dport;
	map_sknat6_update(&back, &frontend);
	stats_global_inc(GSTAT_SOCK_LB);
	return SOCK_XLATE_DONE;
}

/* An IPv4-mapped connect() or sendmsg(): the IPv4 frontend in the last word. */
static __always_inline int sock6_forward_mapped(struct bpf_sock_addr *ctx, int per_socket,
						const struct sock_client *client)
{
	struct lb4_backend *be = NULL;
	struct pkt4 pkt;
	int ret;

	__builtin_memset(&pkt, 0, sizeof(pkt));
	pkt.daddr = ctx->user_ip6[3];
	pkt.dport = (__be16)ctx->user_port;
	pkt.proto = ctx->protocol;
	ret = sock4_translate(ctx, per_socket, &pkt, client->addr4, &be);
	if (ret == SOCK_XLATE_DONE && be) {
		ctx->user_ip6[3] = be->address;	/* stays ::ffff:<backend> */
		ctx->user_port = (__u32)be->port;
	}
	return ret;
}

/* A native IPv6 connect() or sendmsg(). */
static __always_inline int sock6_forward_native(struct bpf_sock_addr *ctx, int per_socket,
						const struct sock_client *client)
{
	struct lb6_backend *be = NULL;
	struct addr6 daddr;
	int ret;

	daddr.w[0] = ctx->user_ip6[0];
	daddr.w[1] = ctx->user_ip6[1];
	daddr.w[2] = ctx->user_ip6[2];
	daddr.w[3] = ctx->user_ip6[3];
	ret = sock6_translate(ctx, per_socket, &daddr, (__be16)ctx->user_port, ctx->protocol,
			      &client->addr6, &be);
	if (ret == SOCK_XLATE_DONE && be) {
		ctx->user_ip6[0] = be->address.w[0];
		ctx->user_ip6[1] = be->address.w[1];
		ctx->user_ip6[2] = be->address.w[2];
		ctx->user_ip6[3] = be->address.w[3];
		ctx->user_port = (__u32)be->port;
	}
	return ret;
}

/* connect() or sendmsg() of an AF_INET6 socket to a frontend of either family:
 * address it to one of the frontend's backends. SOCK_PASS, or a refusal (a Service
 * without a usable endpoint), as sock4_forward. */
static __always_inline int sock6_forward(struct bpf_sock_addr *ctx, int per_socket)
{
	struct sock_client client;
	int ret;

	if (ctx->protocol != IP4_PROTO_TCP && ctx->protocol != IP4_PROTO_UDP)
		return SOCK_PASS;
	if (!sock_ours(ctx, &client))
		return SOCK_PASS;
	if (sock6_v4mapped(ctx))
		ret = sock6_forward_mapped(ctx, per_socket, &client);
	else
		ret = sock6_forward_native(ctx, per_socket, &client);
	return ret == SOCK_XLATE_REFUSE ? sock_refuse() : SOCK_PASS;
}

/* getpeername() or recvmsg() of a translated AF_INET6 socket: the frontend, not the
 * backend (an IPv4-mapped backend shows its IPv4-mapped frontend). */
static __always_inline int sock6_reverse(struct bpf_sock_addr *ctx)
{
	struct sknat4_value *frontend4;
	struct sknat6_value *frontend;
	struct sknat6_key back;
	struct sock_client client;

	if (!sock_ours(ctx, &client))
		return SOCK_PASS;
	if (sock6_v4mapped(ctx)) {
		frontend4 = sock4_frontend(ctx, ctx->user_ip6[3], (__be16)ctx->user_port);
		if (frontend4) {
			ctx->user_ip6[3] = frontend4->address;
			ctx->user_port = (__u32)frontend4->port;
		}
		return SOCK_PASS;
	}
	__builtin_memset(&back, 0, sizeof(back));
	back.cookie = bpf_get_socket_cookie(ctx);
	back.address.w[0] = ctx->user_ip6[0];
	back.address.w[1] = ctx->user_ip6[1];
	back.address.w[2] = ctx->user_ip6[2];
	back.address.w[3] = ctx->user_ip6[3];
	back.port = (__be16)ctx->user_port;
	frontend = map_sknat6_lookup(&back);
	if (frontend) {
		ctx->user_ip6[0] = frontend->address.w[0];
		ctx->user_ip6[1] = frontend->address.w[1];
		ctx->user_ip6[2] = frontend->address.w[2];
		ctx->user_ip6[3] = frontend->address.w[3];
		ctx->user_port = (__u32)frontend->port;
	}
	return SOCK_PASS;
}

#endif

/* abi.h: every struct shared with Python (ebpflb/dataplane/bpf/abi.py mirrors each one,
 * and tests/bpf/test_abi.py checks sizes and offsets). Addresses and ports are in
 * network byte order, everything else in host order. Padding is written out because
 * keys are hashed as raw bytes. A layout change renames the map (_v2). */
#ifndef EBPFLB_ABI_H
#define EBPFLB_ABI_H

#include "consts.h"

/* Service map key: one frontend (ClusterIP:port/proto, NodePort, external IP...). */
struct lb4_key {
	__be32 address;		/* frontend IPv4 address */
	__be16 dport;		/* frontend port */
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
};

/* Service map value. */
struct lb4_service {
	__u32 id;		/* frontend id: slot, reverse-NAT and stats index, 1..MAX_SERVICES-1 */
	__u16 count;		/* backend slots usable by new flows (0 = no backend: drop) */
	__u16 flags;		/* SVC_F_* */
	__u32 affinity_timeout;	/* seconds of ClientIP affinity, 0 = none */
	__be32 snat_address;	/* new flows' clients are source-NATed to this node
				 * address (externalTrafficPolicy: Cluster); 0 = keep */
};

/* Slot map key: the slot-th backend of a service, 0 <= slot < count. */
struct lb4_slot_key {
	__u32 svc_id;
	__u32 slot;
};

/* Backend map value, keyed by a __u32 backend id (1..MAX_BACKENDS). A backend id
 * belongs to one service: an entry that exists means "this endpoint is still part of
 * svc_id", so established flows keep it while it stays, and re-select once it is gone. */
struct lb4_backend {
	__be32 address;		/* pod IPv4 address */
	__be16 port;		/* pod port */
	__u8 proto;
	__u8 flags;		/* BE_F_* */
	__u32 svc_id;		/* owning frontend id */
};

/* Reverse-NAT map value, keyed by a __u32 frontend id: what replies are rewritten to. */
struct lb4_rnat {
	__be32 address;		/* frontend address */
	__be16 port;		/* frontend port */
	__u16 pad;
};

/* Conntrack key: the packet's own 5-tuple, plus which side of the flow it describes. */
struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;		/* CT_DIR_SERVICE: client -> frontend; CT_DIR_REPLY: backend -> client */
	__u16 pad;
};

/* Conntrack value. */
struct ct4_value {
	__u64 created_ns;	/* CLOCK_MONOTONIC ns (ct_now) at flow creation */
	__u64 last_seen_ns;	/* ct_now() at the last packet, to CT_TOUCH_NS */
	__u32 backend_id;
	__u32 svc_id;
	__be32 nat_address;	/* SERVICE: backend address; REPLY: frontend address */
	__be16 nat_port;	/* SERVICE: backend port; REPLY: frontend port */
	__u16 flags;		/* CT_F_* */
	__be32 peer_address;	/* SERVICE: the source the flow is NATed to (node address
				 * or hairpin address); REPLY: the client replies go back
				 * to; 0 = no source NAT */
	__be16 peer_port;
	__u16 pad;
};

/* Session affinity map key: one client of one frontend. */
struct aff4_key {
	__be32 client;
	__u32 svc_id;
};

/* Session affinity map value. */
struct aff4_value {
	__u64 last_ns;		/* bpf_ktime_get_ns() when a new flow last used it */
	__u32 backend_id;
	__u32 pad;
};

/* Source-range map key (an LPM trie): prefixlen counts svc_id's 32 bits, which always
 * match whole, plus the range's own prefix length. */
struct srcrange4_key {
	__u32 prefixlen;
	__u32 svc_id;
	__be32 address;
};

/* Socket-LB reverse map key: a socket and the backend it was sent to at connect() or
 * sendmsg(), so its peer name and received datagrams show the frontend again. */
struct sknat4_key {
	__u64 cookie;		/* bpf_get_socket_cookie() */
	__be32 address;		/* backend address */
	__be16 port;		/* backend port */
	__u16 pad;
};

/* Socket-LB reverse map value: the frontend the socket asked for. */
struct sknat4_value {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* Per-frontend counters (per-CPU array indexed by frontend id). */
struct lb_stats {
	__u64 rx_packets;	/* client -> service packets translated */
	__u64 rx_bytes;
	__u64 tx_packets;	/* backend -> client replies reverse-translated */
	__u64 tx_bytes;
};

/* Service names map value, keyed by a __u32 frontend id: what the CLI shows. Written
 * by userspace only, never read by the data path. NUL-terminated strings. */
struct lb_svc_meta {
	char ns[64];		/* Service namespace */
	char name[64];		/* Service name */
	char port[16];		/* Service port name ("" for an unnamed port) */
};

/* IPv6: separate maps with their own key and value structs, as Cilium keeps lb6_* beside
 * lb4_*. Sharing one map with 16-byte addresses for both families would double every
 * IPv4 key the hot path hashes (8 -> 20 bytes for a service, 16 -> 40 for conntrack),
 * change the layout of maps that live flows are pinned in (an upgrade would drop them),
 * and buy nothing: a packet is of one family and looks up that family's maps. What is
 * keyed by id only is shared: frontend ids and backend ids are one space each, so the
 * slot, Maglev, stats and meta maps serve both families. */

/* An IPv6 address, in network byte order; four words so it compares in four loads. */
struct addr6 {
	__be32 w[4];
};

/* IPv6 service map key (ebpflb_svc6). */
struct lb6_key {
	struct addr6 address;	/* frontend IPv6 address */
	__be16 dport;		/* frontend port */
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
};

/* IPv6 service map value: lb4_service with a 16-byte source-NAT address. */
struct lb6_service {
	__u32 id;		/* frontend id, from the same space as IPv4's */
	__u16 count;		/* backend slots usable by new flows (0 = no backend) */
	__u16 flags;		/* SVC_F_* */
	__u32 affinity_timeout;	/* seconds of ClientIP affinity, 0 = none */
	struct addr6 snat_address;	/* node address new flows are source-NATed to;
					 * all zero = keep the client's */
};

/* IPv6 backend map value (ebpflb_be6_v2), keyed by a __u32 backend id from the same
 * space as IPv4's: the slot map (lb4_slot_key) serves both families. */
struct lb6_backend {
	struct addr6 address;	/* pod IPv6 address */
	__be16 port;		/* pod port */
	__u8 proto;
	__u8 flags;		/* BE_F_* */
	__u32 svc_id;		/* owning frontend id */
};

/* IPv6 reverse-NAT map value, keyed by a __u32 frontend id. */
struct lb6_rnat {
	struct addr6 address;	/* frontend address */
	__be16 port;		/* frontend port */
	__u16 pad;
};

/* The conntrack tables (cttable.h) are arrays of buckets of CT_WAYS entries. A
 * bucket's head fills one cache line: a writer's lock, each way's tag (0: empty, else
 * 16 bits of the key's hash | 1, so a look-up compares keys only where a tag matches)
 * and, in bucket 0 only, the seed the table's keys are hashed with. */
struct ct_head {
	__u64 lock;		/* 0: free; 1: a writer holds the bucket */
	__u16 tags[CT_WAYS];
	__u32 seed;		/* bucket 0: the hash seed the table was made with */
	__u32 pad[9];
};

struct ct4_slot {
	struct ct4_key key;
	struct ct4_value value;
};

struct ct4_bucket {
	struct ct_head head;
	struct ct4_slot ways[CT_WAYS];
};

/* IPv6 conntrack key: as ct4_key. */
struct ct6_key {
	struct addr6 saddr;
	struct addr6 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;		/* CT_DIR_* */
	__u16 pad;
};

/* IPv6 conntrack value: as ct4_value. */
struct ct6_value {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 backend_id;
	__u32 svc_id;
	struct addr6 nat_address;	/* SERVICE: backend address; REPLY: frontend address */
	__be16 nat_port;
	__u16 flags;		/* CT_F_* */
	struct addr6 peer_address;	/* as ct4_value.peer_address; all zero = no NAT */
	__be16 peer_port;
	__u16 pad;
};

struct ct6_slot {
	struct ct6_key key;
	struct ct6_value value;
};

struct ct6_bucket {
	struct ct_head head;
	struct ct6_slot ways[CT_WAYS];
};

/* IPv6 session affinity key; the value is an aff4_value. */
struct aff6_key {
	struct addr6 client;
	__u32 svc_id;
};

/* IPv6 source-range key (an LPM trie): prefixlen counts svc_id's 32 bits plus the
 * range's own prefix length. */
struct srcrange6_key {
	__u32 prefixlen;
	__u32 svc_id;
	struct addr6 address;
};

/* IPv6 socket-LB reverse map key: a socket and the backend it was sent to. */
struct sknat6_key {
	__u64 cookie;		/* bpf_get_socket_cookie() */
	struct addr6 address;	/* backend address */
	__be16 port;		/* backend port */
	__u16 pad;
	__u32 pad2;
};

/* IPv6 socket-LB reverse map value: the frontend the socket asked for. */
struct sknat6_value {
	struct addr6 address;
	__be16 port;
	__u16 pad;
};

/* Socket-LB for pods: the pod of this node whose network namespace has the key's netns
 * cookie (a __u64, bpf_get_netns_cookie()), and the addresses its packets carry as
 * their source there: the client address of sessionAffinity, as tc keys it. */
struct sknetns_value {
	__be32 addr4;		/* the pod's IPv4 address; 0 = none */
	struct addr6 addr6;	/* the pod's IPv6 address; all zero = none */
};

_Static_assert(sizeof(struct lb4_key) == 8, "lb4_key");
_Static_assert(sizeof(struct lb4_service) == 16, "lb4_service");
_Static_assert(sizeof(struct lb4_slot_key) == 8, "lb4_slot_key");
_Static_assert(sizeof(struct lb4_backend) == 12, "lb4_backend");
_Static_assert(sizeof(struct lb4_rnat) == 8, "lb4_rnat");
_Static_assert(sizeof(struct ct4_key) == 16, "ct4_key");
_Static_assert(sizeof(struct ct4_value) == 40, "ct4_value");
_Static_assert(sizeof(struct ct_head) == 64, "ct_head");
_Static_assert(sizeof(struct ct4_bucket) == 64 + CT_WAYS * 56, "ct4_bucket");
_Static_assert(sizeof(struct aff4_key) == 8, "aff4_key");
_Static_assert(sizeof(struct aff4_value) == 16, "aff4_value");
_Static_assert(sizeof(struct srcrange4_key) == 12, "srcrange4_key");
_Static_assert(sizeof(struct sknat4_key) == 16, "sknat4_key");
_Static_assert(sizeof(struct sknat4_value) == 8, "sknat4_value");
_Static_assert(sizeof(struct lb_stats) == 32, "lb_stats");
_Static_assert(sizeof(struct lb_svc_meta) == 144, "lb_svc_meta");
_Static_assert(sizeof(struct addr6) == 16, "addr6");
_Static_assert(sizeof(struct lb6_key) == 20, "lb6_key");
_Static_assert(sizeof(struct lb6_service) == 28, "lb6_service");
_Static_assert(sizeof(struct lb6_backend) == 24, "lb6_backend");
_Static_assert(sizeof(struct lb6_rnat) == 20, "lb6_rnat");
_Static_assert(sizeof(struct ct6_key) == 40, "ct6_key");
_Static_assert(sizeof(struct ct6_value) == 64, "ct6_value");
_Static_assert(sizeof(struct ct6_bucket) == 64 + CT_WAYS * 104, "ct6_bucket");
_Static_assert(sizeof(struct aff6_key) == 20, "aff6_key");
_Static_assert(sizeof(struct srcrange6_key) == 24, "srcrange6_key");
_Static_assert(sizeof(struct sknat6_key) == 32, "sknat6_key");
_Static_assert(sizeof(struct sknat6_value) == 20, "sknat6_value");
_Static_assert(sizeof(struct sknetns_value) == 20, "sknetns_value");

#endif

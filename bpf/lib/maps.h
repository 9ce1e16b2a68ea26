/* maps.h: every map of the data path, pinned under PIN_DIR (names mirrored in
 * ebpflb/dataplane/bpf/abi.py), and the accessors through which the other headers
 * reach them.
 *
 * bcc workaround: bcc rewrites `map.lookup()` calls into real map references only in
 * the main source file, never in an included header (a header's call compiles but
 * fails to load). So the headers call the map_* accessors declared here, and
 * ebpflb_tc.c defines them, one line each. Declarations in headers are fine: bcc
 * creates and pins every map it sees declared. */
#ifndef EBPFLB_MAPS_H
#define EBPFLB_MAPS_H

#include "abi.h"
#include "consts.h"
#include "drop_reasons.h"

/* frontend (address, port, proto) -> service: backend count, id, flags */
BPF_TABLE_PINNED("hash", struct lb4_key, struct lb4_service, ebpflb_svc4,
		 MAX_SERVICES, PIN_DIR "/ebpflb_svc4");
/* (service id, slot) -> backend id: the backends new flows are spread over */
BPF_TABLE_PINNED("hash", struct lb4_slot_key, __u32, ebpflb_slot4,
		 MAX_BACKENDS, PIN_DIR "/ebpflb_slot4");
/* backend id -> backend address, port and owning service; svc_id 0 = no backend.
 * (_v2: an array indexed by the id, not a hash keyed by it: the verifier inlines the
 * look-up, ~30 ns less a packet. An entry is never deleted, the agent zeroes it.
 * BPF_F_MMAPABLE: the agent reads it back in one copy.) */
BPF_TABLE_PINNED("array", __u32, struct lb4_backend, ebpflb_be4_v2,
		 MAX_BACKENDS, PIN_DIR "/ebpflb_be4_v2", BPF_F_MMAPABLE);
/* service id -> frontend address and port that replies are rewritten to; port 0 = no
 * frontend (_v2: an array, as ebpflb_be4_v2) */
BPF_TABLE_PINNED("array", __u32, struct lb4_rnat, ebpflb_rnat4_v2,
		 MAX_SERVICES, PIN_DIR "/ebpflb_rnat4_v2", BPF_F_MMAPABLE);
/* 5-tuple + direction -> flow's backend (SERVICE) or frontend (REPLY): cttable.h's
 * buckets (_v3: an array of buckets, no longer an LRU hash; BPF_F_MMAPABLE: the CLI
 * reads it in one copy) */
BPF_TABLE_PINNED("array", __u32, struct ct4_bucket, ebpflb_ct4_v3,
		 CT_BUCKETS, PIN_DIR "/ebpflb_ct4_v3", BPF_F_MMAPABLE);
/* service id -> per-CPU packet and byte counters */
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_stats, ebpflb_svcstat,
		 MAX_SERVICES, PIN_DIR "/ebpflb_svcstat");
/* GSTAT_* index -> per-CPU global counter */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ebpflb_gstat_v3,
		 GSTAT_MAX, PIN_DIR "/ebpflb_gstat_v3");
/* -DROP_* reason -> per-CPU count of packets dropped for it (at the programs' exit) */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ebpflb_drops, DROP_MAX,
		 PIN_DIR "/ebpflb_drops");
/* The shape of every Maglev table (BPF_F_INNER_MAP: tables of any size fit in;
 * BPF_F_MMAPABLE: the agent writes a table with one copy into its memory). */
BPF_F_TABLE("array", __u32, __u32, ebpflb_mgtmpl, 1, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
/* frontend id -> its Maglev table: slot -> backend id, rewritten in place by the agent
 * (_v2: the tables became mmapable; an outer map's inner-map flags are fixed) */
BPF_TABLE_PINNED("array_of_maps$ebpflb_mgtmpl", __u32, __u32, ebpflb_mg4_v2, MAX_SERVICES,
		 PIN_DIR "/ebpflb_mg4_v2");
/* (host socket, backend) -> the frontend it asked for; LRU-evicted */
BPF_TABLE_PINNED("lru_hash", struct sknat4_key, struct sknat4_value, ebpflb_sknat4,
		 MAX_SOCK_NAT, PIN_DIR "/ebpflb_sknat4");
/* One per CPU: the jiffies value at which the coarse clock was last read, and what it
 * read (ct.h ct_now). A cache, never pinned: each load starts it afresh. */
struct ct_clock {
	__u64 jiffies;
	__u64 now_ns;
};
BPF_PERCPU_ARRAY(ebpflb_clock, struct ct_clock, 1);
/* One per CPU: where a new flow's conntrack keys and value are built (flow.h), off the
 * entry programs' stack, whose 512 bytes the IPv4 and IPv6 paths all but fill. A
 * scratch, never pinned. */
struct ct_scratch {
	struct ct4_key reply4;
	struct ct4_key service4;
	struct ct4_value value4;
	struct ct6_key reply6;
	struct ct6_key service6;
	struct ct6_value value6;
};
BPF_PERCPU_ARRAY(ebpflb_ctscr, struct ct_scratch, 1);
/* CFG_* index -> a setting written by the agent */
BPF_TABLE_PINNED("array", __u32, __u32, ebpflb_cfg, CFG_MAX, PIN_DIR "/ebpflb_cfg");
/* (client, frontend id) -> the backend its last new flow got; LRU-evicted */
BPF_TABLE_PINNED("lru_hash", struct aff4_key, struct aff4_value, ebpflb_aff4,
		 MAX_AFFINITY, PIN_DIR "/ebpflb_aff4");
/* (frontend id, client prefix) -> 1: the clients a frontend with SVC_F_SRC_RANGES admits */
BPF_TABLE_PINNED("lpm_trie", struct srcrange4_key, __u8, ebpflb_srcr4,
		 MAX_SRC_RANGES, PIN_DIR "/ebpflb_srcr4", BPF_F_NO_PREALLOC);
/* service id -> namespace/name/port names for the CLI; userspace only, never read here */
BPF_TABLE_PINNED("hash", __u32, struct lb_svc_meta, ebpflb_svcmeta,
		 MAX_SERVICES, PIN_DIR "/ebpflb_svcmeta", BPF_F_NO_PREALLOC);


/* IPv6 (abi.h says why these are maps of their own). The slot, Maglev, stats and meta
 * maps above are keyed by ids from one space and serve both families. */
/* IPv6 frontend (address, port, proto) -> service */
BPF_TABLE_PINNED("hash", struct lb6_key, struct lb6_service, ebpflb_svc6,
		 MAX_SERVICES, PIN_DIR "/ebpflb_svc6");
/* backend id -> IPv6 backend address, port and owning service; svc_id 0 = no backend
 * (_v2: an array, as ebpflb_be4_v2) */
BPF_TABLE_PINNED("array", __u32, struct lb6_backend, ebpflb_be6_v2,
		 MAX_BACKENDS, PIN_DIR "/ebpflb_be6_v2", BPF_F_MMAPABLE);
/* service id -> IPv6 frontend address and port replies are rewritten to; port 0 = none
 * (_v2: an array, as ebpflb_be4_v2) */
BPF_TABLE_PINNED("array", __u32, struct lb6_rnat, ebpflb_rnat6_v2,
		 MAX_SERVICES, PIN_DIR "/ebpflb_rnat6_v2", BPF_F_MMAPABLE);
/* IPv6 5-tuple + direction -> flow's backend or frontend (_v2: buckets, as
 * ebpflb_ct4_v3) */
BPF_TABLE_PINNED("array", __u32, struct ct6_bucket, ebpflb_ct6_v2,
		 CT_BUCKETS, PIN_DIR "/ebpflb_ct6_v2", BPF_F_MMAPABLE);
/* (IPv6 client, frontend id) -> the backend its last new flow got; LRU-evicted */
BPF_TABLE_PINNED("lru_hash", struct aff6_key, struct aff4_value, ebpflb_aff6,
		 MAX_AFFINITY, PIN_DIR "/ebpflb_aff6");
/* (frontend id, IPv6 client prefix) -> 1: the clients a SVC_F_SRC_RANGES frontend admits */
BPF_TABLE_PINNED("lpm_trie", struct srcrange6_key, __u8, ebpflb_srcr6,
		 MAX_SRC_RANGES, PIN_DIR "/ebpflb_srcr6", BPF_F_NO_PREALLOC);
/* (IPv6 socket, backend) -> the frontend it asked for; LRU-evicted */
BPF_TABLE_PINNED("lru_hash", struct sknat6_key, struct sknat6_value, ebpflb_sknat6,
		 MAX_SOCK_NAT, PIN_DIR "/ebpflb_sknat6");
/* netns cookie -> this node's pod living there, whose sockets socket-LB translates */
BPF_TABLE_PINNED("hash", __u64, struct sknetns_value, ebpflb_sknetns,
		 MAX_POD_NETNS, PIN_DIR "/ebpflb_sknetns");
/* ifindex -> 1: the interfaces the XDP program may redirect a frame to (the agent
 * writes them; a frame whose FIB next hop is not here goes to the stack). A hash, not
 * a devmap: ifindexes are sparse and bcc 0.26 knows no devmap_hash. */
BPF_TABLE_PINNED("hash", __u32, __u32, ebpflb_xdpdev, MAX_XDP_DEVS,
		 PIN_DIR "/ebpflb_xdpdev");
/* TAIL_* -> the entry programs' tail-called parts: the tc program's (ebpflb_tc6) and
 * the XDP program's (ebpflb_xdp6). Pinned: the kernel empties a program array once no
 * file or pin holds it, and the loader's process (the agent's isolated child, then
 * the agent itself) goes while the programs stay attached. */
BPF_TABLE_PINNED("prog", __u32, __u32, ebpflb_tail, TAIL_MAX, PIN_DIR "/ebpflb_tail");
BPF_TABLE_PINNED("prog", __u32, __u32, ebpflb_xtail, TAIL_MAX, PIN_DIR "/ebpflb_xtail");

/* Accessors, defined in ebpflb_tc.c (see above for why; ebpflb_xdp.c, a compilation
 * unit of its own, defines the ones its headers use). Update/delete return the
 * helper's 0 or negative errno. */
static __always_inline struct lb4_service *map_svc4_lookup(struct lb4_key *key);
static __always_inline __u32 *map_slot4_lookup(struct lb4_slot_key *key);
static __always_inline struct lb4_backend *map_be4_lookup(__u32 *id);
static __always_inline struct lb4_rnat *map_rnat4_lookup(__u32 *id);
static __always_inline struct ct4_bucket *map_ct4_bucket(__u32 *index);
static __always_inline struct lb_stats *map_svcstat_lookup(__u32 *id);
static __always_inline __u64 *map_gstat_lookup(__u32 *index);
static __always_inline __u64 *map_drops_lookup(__u32 *reason);
static __always_inline struct aff4_value *map_aff4_lookup(struct aff4_key *key);
static __always_inline int map_aff4_update(struct aff4_key *key, struct aff4_value *value);
static __always_inline __u8 *map_srcr4_lookup(struct srcrange4_key *key);
static __always_inline __u32 *map_cfg_lookup(__u32 *index);
static __always_inline struct ct_clock *map_clock_lookup(__u32 *index);
static __always_inline struct ct_scratch *map_ctscr_lookup(__u32 *index);
static __always_inline void *map_mg4_lookup(__u32 *svc_id);
static __always_inline struct sknat4_value *map_sknat4_lookup(struct sknat4_key *key);
static __always_inline int map_sknat4_update(struct sknat4_key *key, struct sknat4_value *v);

static __always_inline struct lb6_service *map_svc6_lookup(struct lb6_key *key);
static __always_inline struct lb6_backend *map_be6_lookup(__u32 *id);
static __always_inline struct lb6_rnat *map_rnat6_lookup(__u32 *id);
static __always_inline struct ct6_bucket *map_ct6_bucket(__u32 *index);
static __always_inline struct aff4_value *map_aff6_lookup(struct aff6_key *key);
static __always_inline int map_aff6_update(struct aff6_key *key, struct aff4_value *value);
static __always_inline __u8 *map_srcr6_lookup(struct srcrange6_key *key);
static __always_inline struct sknat6_value *map_sknat6_lookup(struct sknat6_key *key);
static __always_inline int map_sknat6_update(struct sknat6_key *key, struct sknat6_value *v);
static __always_inline struct sknetns_value *map_sknetns_lookup(__u64 *cookie);
static __always_inline __u32 *map_xdpdev_lookup(__u32 *ifindex);

/* The conntrack tables' map_ct4_* and map_ct6_* operations, on the buckets above. */
#include "cttable.h"
#endif

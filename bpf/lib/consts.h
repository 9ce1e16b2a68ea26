/* consts.h: tunables (overridable with -D from the loader) and flag bits, grouped by
 * the struct that carries them. Mirrored in ebpflb/dataplane/bpf/abi.py. */
#ifndef EBPFLB_CONSTS_H
#define EBPFLB_CONSTS_H

#ifndef PIN_DIR
#define PIN_DIR "/sys/fs/bpf/ebpflb"
#endif
#ifndef MAX_SERVICES
#define MAX_SERVICES 131072	/* frontends; also the size of id-indexed maps */
#endif
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 524288	/* backend ids and backend slots (100,000 Services x 5) */
#endif
#ifndef MAX_CONNTRACK
#define MAX_CONNTRACK 262144	/* conntrack entries (two per flow) */
#endif
/* The conntrack tables (cttable.h): CT_BUCKETS buckets of CT_WAYS entries each. The
 * loader sets CT_BUCKETS to a power of two holding twice MAX_CONNTRACK rounded up to
 * one (ebpflb/dataplane/bpf/cttable.py ct_buckets), so a bucket is rarely full, and
 * the hash's multipliers (CT_M*, cttable.h) to those of the pinned tables' seed. */
#define CT_WAYS			8
#ifndef CT_BUCKETS
#define CT_BUCKETS		65536
#endif
#define CT_LOCK_TRIES		16	/* a bucket's writer holds it for ~20 instructions */
#ifndef MAX_AFFINITY
#define MAX_AFFINITY 65536	/* (client, frontend) session-affinity entries */
#endif
#ifndef MAX_POD_NETNS
#define MAX_POD_NETNS 4096	/* pod network namespaces socket-LB serves (a node runs ~110) */
#endif
#ifndef MAX_SOCK_NAT
#define MAX_SOCK_NAT 65536	/* (socket, backend) pairs of translated host sockets */
#endif
#ifndef MAX_XDP_DEVS
#define MAX_XDP_DEVS 4096	/* interfaces XDP may redirect to (uplinks, pod veths) */
#endif
#ifndef MAX_SRC_RANGES
#define MAX_SRC_RANGES 16384	/* loadBalancerSourceRanges entries, all frontends */
#endif

/* Source NAT (NodePort/external traffic under externalTrafficPolicy: Cluster, and
 * hairpin): ports are taken from above the default ephemeral range (32768-60999), so
 * they meet neither the node's own sockets nor the NodePort range. */
#define NAT_PORT_MIN		61000
#define NAT_PORT_COUNT		4536	/* 61000..65535 */
#define NAT_PORT_TRIES		16	/* bounded search for a free port */
/* A NAT port is held by its flow's REPLY entry; nothing deletes entries but eviction
 * from a full bucket (cttable.h), so a port is taken over once its flow is over:
 * closed (a FIN or RST seen) for longer than Linux keeps TIME_WAIT (a SYN reusing the
 * tuple earlier may meet the backend's TIME_WAIT socket), or idle past its protocol's
 * lifetime (Cilium's CT lifetimes: 6 h for TCP, 60 s otherwise). */
#define NAT_REUSE_CLOSED_NS	(60ULL * NSEC_PER_SEC)
#define NAT_REUSE_TCP_NS	(21600ULL * NSEC_PER_SEC)
#define NAT_REUSE_OTHER_NS	(60ULL * NSEC_PER_SEC)
/* A pod reaching its own Service is source-NATed to this link-local address, so its
 * answer (to an address not its own) comes back through the node to be translated. */
#define HAIRPIN_ADDRESS		0xa9fe2a01	/* 169.254.42.1, host order */
/* IPv6's hairpin address: a unique-local one (RFC 4193), fd65:6270:6c62::2a ("ebplb"),
 * not link-local, so the pod's answer is routed back to the node like IPv4's. Its four
 * words in host order. */
#define HAIRPIN6_W0		0xfd656270
#define HAIRPIN6_W1		0x6c620000
#define HAIRPIN6_W2		0x00000000
#define HAIRPIN6_W3		0x0000002a
#define NSEC_PER_SEC		1000000000ULL
/* A conntrack entry's last_seen_ns moves once it is this old, not on every packet. */
#define CT_TOUCH_NS		NSEC_PER_SEC
#define FLOW_HASH_SEED		0x6562706cU	/* "ebpl": ebpflb/maglev.py hashes alike */

/* lb4_service.flags: the frontend's kind, for inspection. */
#define SVC_F_CLUSTERIP		0x0001
#define SVC_F_NODEPORT		0x0002
#define SVC_F_EXTERNAL		0x0004
#define SVC_F_LOADBALANCER	0x0008
#define SVC_F_SRC_RANGES	0x0010	/* only clients in ebpflb_srcr4 are admitted */
#define SVC_F_DROP_EMPTY	0x0020	/* no backend: drop (Local policy), not reject */
#define SVC_F_MAGLEV		0x0040	/* new flows choose by the Maglev table, not at random */
/* The kinds whose traffic arrives from outside the node: the XDP program's. */
#define SVC_F_FROM_OUTSIDE	(SVC_F_NODEPORT | SVC_F_EXTERNAL | SVC_F_LOADBALANCER)

/* The entry programs' tail calls (ebpflb_tail, ebpflb_xtail), by index. */
#define TAIL_IPV6		0	/* ebpflb_tc6 / ebpflb_xdp6: the IPv6 path */
#define TAIL_MAX		1

/* ebpflb_cfg: settings the agent writes, by index. */
#define CFG_HOST_BACKENDS	0	/* non-zero: some backend is an address of this node */
#define CFG_MAGLEV_SIZE		1	/* entries of every Maglev table; 0 = no Maglev */
#define CFG_NETNS_LO		2	/* the agent's netns cookie, low and high words: */
#define CFG_NETNS_HI		3	/* socket-LB translates sockets of that netns only */
#define CFG_MAX			4

/* lb4_backend.flags */
#define BE_F_ACTIVE		0x01	/* in the slot list (gets new flows) */
#define BE_F_TERMINATING	0x02

/* ct4_value.flags / ct6_value.flags */
#define CT_F_CLOSING		0x0001	/* a TCP FIN or RST of the flow was seen */

/* ct4_key.dir */
#define CT_DIR_SERVICE		0
#define CT_DIR_REPLY		1

/* Global counters: index into ebpflb_gstat_v3 (per-CPU array of __u64; _v2 had 16). */
#define GSTAT_NEW_FLOW		0	/* backend chosen for a new flow */
#define GSTAT_CT_HIT		1	/* packet of a known flow, backend still valid */
#define GSTAT_RESELECT		2	/* known flow whose backend is gone: chose again */
#define GSTAT_REPLY		3	/* reply reverse-translated */
#define GSTAT_NO_BACKEND	4	/* dropped: service has no usable backend */
#define GSTAT_FRAGMENT		5	/* IP fragment passed untouched */
#define GSTAT_CT_FULL		6	/* conntrack insert failed: packet dropped */
#define GSTAT_BACKEND_MISSING	7	/* dropped: slot names a backend that is not there */
#define GSTAT_SOURCE_RANGE_DROP	8	/* dropped: client outside loadBalancerSourceRanges */
#define GSTAT_SNAT		9	/* new flow source-NATed (external traffic, hairpin) */
#define GSTAT_NAT_PORT_FULL	10	/* dropped: no free source-NAT port found */
#define GSTAT_AFFINITY_HIT	11	/* new flow sent to its client's affinity backend */
#define GSTAT_HAIRPIN		12	/* new flow of a pod to its own Service and itself */
#define GSTAT_ICMP_ERROR	13	/* ICMP error about a flow reverse-translated */
#define GSTAT_REJECT		14	/* new flow to a Service without endpoints refused */
#define GSTAT_SOCK_LB		15	/* host socket translated at connect() or sendmsg() */
#define GSTAT_RESET		16	/* TCP segment of a Service without endpoints: reset */
#define GSTAT_XDP_FORWARD	17	/* XDP: translated and redirected (client -> backend) */
#define GSTAT_XDP_REPLY		18	/* XDP: reply reverse-translated and redirected */
#define GSTAT_XDP_FIB_PASS	19	/* XDP: translated, no usable next hop: to the stack */
#define GSTAT_MAX		32	/* room for more without a new map */

#endif

/* consts.h: tunables (overridable with -D from the loader) and flag bits, grouped by
 * the struct that carries them. Mirrored in ebpflb/dataplane/bpf/abi.py. */
#ifndef EBPFLB_CONSTS_H
#define EBPFLB_CONSTS_H

#ifndef PIN_DIR
#define PIN_DIR "/sys/fs/bpf/ebpflb"
#endif
#ifndef MAX_SERVICES
#define MAX_SERVICES 65536	/* frontends; also the size of id-indexed maps */
#endif
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 262144	/* backend ids and backend slots */
#endif
#ifndef MAX_CONNTRACK
#define MAX_CONNTRACK 262144	/* conntrack entries (two per flow) */
#endif

/* lb4_service.flags: the frontend's kind, for inspection. */
#define SVC_F_CLUSTERIP		0x0001
#define SVC_F_NODEPORT		0x0002
#define SVC_F_EXTERNAL		0x0004
#define SVC_F_LOADBALANCER	0x0008

/* lb4_backend.flags */
#define BE_F_ACTIVE		0x01	/* in the slot list (gets new flows) */
#define BE_F_TERMINATING	0x02

/* ct4_key.dir */
#define CT_DIR_SERVICE		0
#define CT_DIR_REPLY		1

/* Global counters: index into ebpflb_gstat (per-CPU array of __u64). */
#define GSTAT_NEW_FLOW		0	/* backend chosen for a new flow */
#define GSTAT_CT_HIT		1	/* packet of a known flow, backend still valid */
#define GSTAT_RESELECT		2	/* known flow whose backend is gone: chose again */
#define GSTAT_REPLY		3	/* reply reverse-translated */
#define GSTAT_NO_BACKEND	4	/* dropped: service has no usable backend */
#define GSTAT_FRAGMENT		5	/* IP fragment passed untouched */
#define GSTAT_CT_FULL		6	/* conntrack insert failed: packet dropped */
#define GSTAT_BACKEND_MISSING	7	/* dropped: slot names a backend that is not there */
#define GSTAT_MAX		8

#endif

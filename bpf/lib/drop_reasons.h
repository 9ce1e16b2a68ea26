/* drop_reasons.h: why a packet is dropped. A stage returns a negative DROP_* code
 * (verdict.h) and the one exit of each entry program drops it and counts it by reason
 * in ebpflb_drops, indexed by -code. Mirrored by ebpflb.dataplane.bpf.abi.DropReason;
 * `ebpflb stats` names each by its suffix in lower case. */
#ifndef EBPFLB_DROP_REASONS_H
#define EBPFLB_DROP_REASONS_H

#define DROP_NO_BACKEND		-1	/* service has no usable backend (nor a refusal) */
#define DROP_BACKEND_MISSING	-2	/* slot points at a backend id that is not there */
#define DROP_CT_FULL		-3	/* conntrack entry could not be written */
#define DROP_WRITE		-4	/* packet rewrite helper failed */
#define DROP_SOURCE_RANGE	-5	/* client outside loadBalancerSourceRanges */
#define DROP_NAT_PORT_FULL	-6	/* no free source-NAT port */
#define DROP_MAX		16	/* entries of ebpflb_drops: room for more reasons */

#endif

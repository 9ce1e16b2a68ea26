/* drop_reasons.h: the one error idiom of the data path: 0 = go on, a negative DROP_*
 * code = drop. Mirrored by ebpflb.dataplane.bpf.abi.DropReason. */
#ifndef EBPFLB_DROP_REASONS_H
#define EBPFLB_DROP_REASONS_H

#define DROP_NO_BACKEND		-1	/* service has no usable backend */
#define DROP_BACKEND_MISSING	-2	/* slot points at a backend id that is not there */
#define DROP_CT_FULL		-3	/* conntrack entry could not be written */
#define DROP_WRITE		-4	/* packet rewrite helper failed */
#define DROP_SOURCE_RANGE	-5	/* client outside loadBalancerSourceRanges */
#define DROP_NAT_PORT_FULL	-6	/* no free source-NAT port */

#endif

/* verdict.h: what each stage of an entry program returns, and the one exit that turns
 * it into the tc action. A stage says go on (0: the next stage, or pass once none is
 * left), pass (leave the packet as it now is), redirect (it was turned, in place, into
 * an answer that goes back out of the interface it came in on) or drop, with a
 * negative DROP_* reason. The exit counts every drop by reason, once, in ebpflb_drops. */
#ifndef EBPFLB_VERDICT_H
#define EBPFLB_VERDICT_H

#include <uapi/linux/pkt_cls.h>

#include "drop_reasons.h"
#include "maps.h"

#define VERDICT_GO_ON		0	/* stage done: on to the next one */
#define VERDICT_PASS		1	/* leave the packet to the stack, untouched from here */
#define VERDICT_REDIRECT	2	/* send the (rewritten) packet back out of its interface */
/* < 0: DROP_* */

static __always_inline void verdict_count_drop(int reason)
{
	__u32 index = -reason;
	__u64 *count = map_drops_lookup(&index);

	if (count)
		*count += 1;
}

/* The one exit of a tc entry program. */
static __always_inline int verdict_tc_exit(struct __sk_buff *skb, int verdict)
{
	if (verdict == VERDICT_REDIRECT)
		return bpf_redirect(skb->ifindex, 0);
	if (verdict < 0) {
		verdict_count_drop(verdict);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

#endif

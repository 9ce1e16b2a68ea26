/* xdp_verdict.h: the one exit of the XDP entry program, turning a stage's VERDICT_*
 * (verdict.h) into an XDP action: go on and pass are XDP_PASS (the stack, and the tc
 * program behind it, take the frame as it now is), redirect sends it out of the
 * interface the FIB look-up chose (xdp_fib.h), a drop is XDP_DROP, counted by reason
 * once, as the tc exit counts it. */
#ifndef EBPFLB_XDP_VERDICT_H
#define EBPFLB_XDP_VERDICT_H

#include <uapi/linux/bpf.h>

#include "maps.h"
#include "verdict.h"

static __always_inline int verdict_xdp_exit(int verdict, __u32 ifindex)
{
	if (verdict == VERDICT_REDIRECT)
		return bpf_redirect(ifindex, 0);
	if (verdict < 0) {
		verdict_count_drop(verdict);
		return XDP_DROP;
	}
	return XDP_PASS;
}

#endif

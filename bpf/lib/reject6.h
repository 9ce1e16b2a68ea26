/* reject6.h: an IPv6 Service with no endpoint at all refuses its traffic, as reject.h
 * does for IPv4. Stub until it is written: the packet is dropped and counted. */
#ifndef EBPFLB_REJECT6_H
#define EBPFLB_REJECT6_H

#include "consts.h"
#include "drop_reasons.h"
#include "ip6.h"
#include "stats.h"
#include "verdict.h"

static __always_inline int lb6_reject(struct __sk_buff *skb, const struct pkt6 *pkt)
{
	stats_global_inc(GSTAT_NO_BACKEND);
	return DROP_NO_BACKEND;
}

#endif

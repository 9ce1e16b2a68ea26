/* icmp6.h: ICMPv6 errors about a tracked IPv6 flow, reverse-translated like icmp.h's
 * ICMP errors (the quoted packet and the outer header). Stub until it is written:
 * every ICMPv6 packet passes untouched. */
#ifndef EBPFLB_ICMP6_H
#define EBPFLB_ICMP6_H

#include "ip6.h"
#include "verdict.h"

static __always_inline int icmp6_reverse(struct __sk_buff *skb, const struct pkt6 *pkt)
{
	return VERDICT_PASS;
}

#endif

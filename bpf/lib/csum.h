/* csum.h: incremental checksum fixes after a header rewrite. Never a full recompute:
 * packets from a veth often carry a partial (offloaded) checksum, which only the
 * kernel's incremental helpers handle. */
#ifndef EBPFLB_CSUM_H
#define EBPFLB_CSUM_H

#include <uapi/asm-generic/errno-base.h>
#include <uapi/linux/ip.h>

#include "drop_reasons.h"
#include "parse.h"

/* UDP checksum 0 means "none": keep it 0, and write a computed 0 as 0xffff. */
static __always_inline __u64 csum4_l4_flags(const struct pkt4 *pkt)
{
	return pkt->proto == IP4_PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* An IPv4 address changed from old to new: the IP header checksum, and the TCP/UDP
 * checksum through its pseudo-header. */
static __always_inline int csum4_addr_replace(struct __sk_buff *skb, const struct pkt4 *pkt,
					      __be32 old, __be32 new)
{
	if (bpf_l3_csum_replace(skb, pkt->l3_off + offsetof(struct iphdr, check),
				old, new, sizeof(new)) < 0)
		return DROP_WRITE;
	if (bpf_l4_csum_replace(skb, pkt->csum_off, old, new,
				BPF_F_PSEUDO_HDR | csum4_l4_flags(pkt) | sizeof(new)) < 0)
		return DROP_WRITE;
	return 0;
}

/* A TCP/UDP port changed from old to new: the L4 checksum only (ports are not in the
 * pseudo-header). */
static __always_inline int csum4_port_replace(struct __sk_buff *skb, const struct pkt4 *pkt,
					      __be16 old, __be16 new)
{
	if (bpf_l4_csum_replace(skb, pkt->csum_off, old, new,
				csum4_l4_flags(pkt) | sizeof(new)) < 0)
		return DROP_WRITE;
	return 0;
}


#define CSUM_F_IPV6		(1ULL << 7)	/* BPF_F_IPV6, absent from older UAPI headers */

/* Apply diff (bpf_csum_diff of a changed IPv6 address) to the checksum at off, whose
 * pseudo-header holds that address (TCP, UDP, ICMPv6). BPF_F_IPV6 (Linux 6.16 and the
 * stable kernels it went back to) keeps a CHECKSUM_COMPLETE packet's skb->csum right:
 * an IPv6 header's addresses are inside what that sum covers, IPv4's are not, and
 * without the flag the helper adjusts it as for IPv4. A kernel that does not know the
 * flag refuses it (-EINVAL, nothing changed): then the call is made without. */
static __always_inline long csum6_pseudo_diff(struct __sk_buff *skb, __u32 off, __s64 diff,
					      __u64 flags)
{
	long ret = bpf_l4_csum_replace(skb, off, 0, diff, flags | BPF_F_PSEUDO_HDR | CSUM_F_IPV6);

	if (ret == -EINVAL)
		ret = bpf_l4_csum_replace(skb, off, 0, diff, flags | BPF_F_PSEUDO_HDR);
	return ret;
}
#endif

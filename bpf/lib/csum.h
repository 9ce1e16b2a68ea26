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

/* One's-complement arithmetic for sums computed here rather than by a helper (each
 * helper call costs tens of ns): a 32-bit running sum with end-around carry, as the
 * kernel's __wsum, and its fold to 16 bits. Byte order does not matter as long as
 * every word is taken as it lies in the packet. */
static __always_inline __u32 csum_add32(__u32 sum, __u32 x)
{
	sum += x;
	return sum + (sum < x);
}

/* The diff (a __wsum, as bpf_csum_diff gives) of a 32-bit word changed from old to
 * new, added to sum. */
static __always_inline __u32 csum_diff32(__u32 sum, __u32 old, __u32 new)
{
	return csum_add32(csum_add32(sum, ~old), new);
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The IPv4 header checksum after fields summing to diff changed (RFC 1624 eq. 3), as
 * bpf_l3_csum_replace computes it; the IP header checksum is never offloaded. */
static __always_inline __sum16 csum4_hdr_update(__sum16 check, __u32 diff)
{
	return (__sum16)(__u16)~csum_fold32(csum_add32(diff, (__u16)~check));
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

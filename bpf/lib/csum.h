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

/* csum_l4_ports's answer when it cannot tell (see there). */
#define CSUM_L4_UNKNOWN		0x10000

/* The TCP/UDP checksum field once the ports, summing to from as they lie in the packet
 * (sport | dport << 16), become to -- given that bpf_l4_csum_replace with
 * BPF_F_PSEUDO_HDR of the nonzero address diff has just turned the field from before
 * into after: this saves the helper call that fixed the ports (10-20 ns per rewrite).
 * The packet's checksum state, which a program cannot read, decides: under
 * CHECKSUM_PARTIAL (a local sender's offloaded checksum, every pod's packet on a veth)
 * the field holds the pseudo-header sum, which the helper moved by +diff and which the
 * ports are not part of; in any other state it holds the full checksum, which moved by
 * -diff and must take the ports too (as the helper would, the same bits). after tells
 * the two apart, unless diff sums to zero (then both give the same value): then, and
 * whenever after is neither, CSUM_L4_UNKNOWN, and the caller makes the helper call.
 * udp: BPF_F_MARK_MANGLED_0 was set (a zero field, "no checksum", stays zero; a
 * computed zero is written 0xffff). CHECKSUM_COMPLETE's skb->csum needs nothing for the
 * ports: the port and field changes cancel in it. */
static __always_inline __u32 csum_l4_ports(__u16 before, __u16 after, __u32 diff, __u32 from,
					   __u32 to, int udp)
{
	__u16 partial = csum_fold32(csum_add32(diff, before));
	__u16 full = (__u16)~csum_fold32(csum_add32(diff, ~(__u32)before));
	__u16 fixed;

	if (udp && !before)
		return 0;
	if (udp && !partial)
		partial = 0xffff;
	if (udp && !full)
		full = 0xffff;
	if (partial == full)
		return CSUM_L4_UNKNOWN;
	if (after == partial)
		return after;
	if (after != full)
		return CSUM_L4_UNKNOWN;
	if (from == to)
		return after;
	fixed = (__u16)~csum_fold32(csum_diff32(~(__u32)after, from, to));
	if (udp && !fixed)
		fixed = 0xffff;
	return fixed;
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

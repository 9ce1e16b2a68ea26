/* parse6.h: Ethernet/IPv6/TCP/UDP parsing with bounds checks, the only IPv6 code that
 * reads packet memory (parse.h's twin). It walks the extension headers an upper-layer
 * header may follow and fills a struct pkt6 (ip6.h) with fields and offsets, no
 * pointers. */
#ifndef EBPFLB_PARSE6_H
#define EBPFLB_PARSE6_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/udp.h>

#include "ip6.h"
#include "parse.h"

/* IPv6 next-header values (written out for the reason parse.h gives). */
#define IP6_NH_HOPOPTS		0	/* hop-by-hop options */
#define IP6_NH_ROUTING		43	/* routing header */
#define IP6_NH_FRAGMENT		44	/* fragment header */
#define IP6_NH_DSTOPTS		60	/* destination options */
#define IP6_HDR_LEN		40	/* the fixed header: no IHL, extensions are chained */
#define IP6_FRAG_HDR_LEN	8

/* Why a loop at all: IPv6 has no IHL; options, routing and fragment data are separate
 * headers chained by next-header, so the TCP/UDP header is found only by walking them.
 * The verifier wants a bound: real traffic carries 0-2 of them, RFC 8200's recommended
 * order has at most 4 before a fragment header (hop-by-hop, destination, routing,
 * destination again). More than that passes untouched. */
#define IP6_MAX_EXT_HDRS	4

/* The fixed IPv6 header, as <linux/ipv6.h> lays it out (that header is not included:
 * it pulls in the socket headers too). */
struct ip6_hdr {
	__be32 vtc_flow;	/* version 4 bits, traffic class 8, flow label 20 */
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	struct addr6 saddr;
	struct addr6 daddr;
};

/* The first two bytes of hop-by-hop, routing and destination options headers alike:
 * next header, and the length in 8-byte units not counting the first 8. */
struct ip6_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

/* Fill pkt from the packet: one of parse.h's PKT_* kinds (PKT_ICMP for ICMPv6). */
static __always_inline int pkt6_parse(struct __sk_buff *skb, struct pkt6 *pkt)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct ip6_hdr *ip;
	struct ip6_ext_hdr ext;
	struct l4_ports *ports;
	__u32 l4_off, l4_len, end;
	__u8 nexthdr;
	int i;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if (pkt4_linear(skb, ETH_HLEN + IP6_HDR_LEN))
		return PKT_PASS;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return PKT_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || (ip->vtc_flow & bpf_htonl(0xf0000000)) !=
	    bpf_htonl(0x60000000))
		return PKT_PASS;
	/* the payload length must fit in the packet (0 is a jumbogram: not ours) */
	end = ETH_HLEN + IP6_HDR_LEN + bpf_ntohs(ip->payload_len);
	if (end == ETH_HLEN + IP6_HDR_LEN || end > skb->len)
		return PKT_PASS;
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->l3_off = ETH_HLEN;
	nexthdr = ip->nexthdr;
	l4_off = ETH_HLEN + IP6_HDR_LEN;

	/* Read through bpf_skb_load_bytes: the offsets are variable, and it needs no
	 * linear data nor pointer bounds for them. */
#pragma unroll
	for (i = 0; i < IP6_MAX_EXT_HDRS; i++) {
		if (nexthdr != IP6_NH_HOPOPTS && nexthdr != IP6_NH_ROUTING &&
		    nexthdr != IP6_NH_DSTOPTS && nexthdr != IP6_NH_FRAGMENT)
			break;
		if (bpf_skb_load_bytes(skb, l4_off, &ext, sizeof(ext)) < 0)
			return PKT_PASS;
		/* Any fragment header, even an atomic one (offset 0, M=0, RFC 6946): it is
		 * counted and passed like an IPv4 fragment. Atomic fragments are obsolete
		 * (RFC 8021) and rare; one code path for every fragment is simpler. */
		if (nexthdr == IP6_NH_FRAGMENT)
			return PKT_FRAGMENT;
		nexthdr = ext.nexthdr;
		l4_off += ((__u32)ext.hdrlen + 1) * 8;
	}
	if (nexthdr == IP6_PROTO_ICMPV6) {
		pkt->proto = IP6_PROTO_ICMPV6;
		pkt->l4_off = l4_off;
		return PKT_ICMP;
	}
	if (nexthdr != IP4_PROTO_TCP && nexthdr != IP4_PROTO_UDP)
		return PKT_PASS;	/* ESP, no next header, too many extensions... */
	l4_len = nexthdr == IP4_PROTO_TCP ? TCP_HDR_LEN : sizeof(struct udphdr);
	if (l4_off + l4_len > end)
		return PKT_PASS;
	pkt->proto = nexthdr;

	/* Up to the end of the TCP/UDP header; the pointer is re-derived after it. The
	 * bound keeps the offset small for the verifier (4 extensions of up to 2 KiB). */
	if (l4_off > ETH_HLEN + IP6_HDR_LEN + IP6_MAX_EXT_HDRS * 2048 ||
	    pkt4_linear(skb, l4_off + l4_len))
		return PKT_PASS;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ports = data + l4_off;
	if ((void *)ports + l4_len > data_end || (void *)(ports + 1) > data_end)
		return PKT_PASS;
	pkt->csum_off = l4_off + (nexthdr == IP4_PROTO_TCP ? TCP_CSUM_OFF :
				   offsetof(struct udphdr, check));
	/* (checked again with a constant: the verifier does not carry l4_len's bound) */
	if (nexthdr == IP4_PROTO_TCP && (void *)ports + TCP_HDR_LEN <= data_end)
		pkt->tcp_flags = *((__u8 *)ports + TCP_FLAGS_OFF);
	pkt->sport = ports->source;
	pkt->dport = ports->dest;
	pkt->l4_off = l4_off;
	return PKT_L4;
}

#endif

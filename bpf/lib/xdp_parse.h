/* xdp_parse.h: Ethernet/IPv4/IPv6/TCP/UDP parsing of an XDP frame (struct xdp_md), the
 * only XDP code that reads headers before a rewrite. It fills the same struct pkt4 /
 * pkt6 as the tc parsers (parse.h, parse6.h), so lb.h, ct.h and flow.h serve both
 * programs, plus what forwarding needs (struct xdp_ip). It is deliberately narrower
 * than the tc parsers: IPv4 options, IPv6 extension headers, fragments, ICMP and VLAN
 * tags are PKT_PASS (or PKT_FRAGMENT) here and the tc program, still attached behind
 * XDP, handles them as it always has. */
#ifndef EBPFLB_XDP_PARSE_H
#define EBPFLB_XDP_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#include "ip6.h"
#include "parse.h"
#include "parse6.h"

/* What forwarding needs beyond struct pkt4/pkt6: the IP length for the FIB look-up's
 * MTU check, and the TTL / hop limit it decrements. */
struct xdp_ip {
	__u16 ip_len;		/* IPv4 total length, or IPv6 header + payload length */
	__u8 ttl;		/* IPv4 TTL or IPv6 hop limit */
	__u8 pad;
};

/* The L4 header length the parsers require of a TCP or UDP packet. */
static __always_inline __u32 xdp_l4_len(__u8 proto)
{
	return proto == IP4_PROTO_TCP ? TCP_HDR_LEN : sizeof(struct udphdr);
}

/* Fill pkt and ip from an IPv4 frame: PKT_L4, PKT_FRAGMENT or PKT_PASS. */
static __always_inline int xdp4_parse(struct xdp_md *ctx, struct pkt4 *pkt, struct xdp_ip *xip)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct l4_ports *ports;
	struct iphdr *ip;
	__u32 l4_len;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return PKT_PASS;
	ip = (void *)(eth + 1);
	/* ihl 5 only: options (rare, and some must be updated when forwarding) are tc's */
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl != 5)
		return PKT_PASS;
	if (pkt4_is_fragment(ip))
		return PKT_FRAGMENT;
	if (ip->protocol != IP4_PROTO_TCP && ip->protocol != IP4_PROTO_UDP)
		return PKT_PASS;
	l4_len = xdp_l4_len(ip->protocol);
	ports = (void *)(ip + 1);
	if ((void *)ports + l4_len > data_end || bpf_ntohs(ip->tot_len) < sizeof(*ip) + l4_len ||
	    data + ETH_HLEN + bpf_ntohs(ip->tot_len) > data_end)
		return PKT_PASS;
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->sport = ports->source;
	pkt->dport = ports->dest;
	pkt->proto = ip->protocol;
	/* (checked again with a constant: the verifier does not carry l4_len's bound) */
	if (pkt->proto == IP4_PROTO_TCP && (void *)ports + TCP_HDR_LEN <= data_end)
		pkt->tcp_flags = *((__u8 *)ports + TCP_FLAGS_OFF);
	pkt->l3_off = ETH_HLEN;
	pkt->l4_off = ETH_HLEN + sizeof(*ip);
	pkt->csum_off = pkt->l4_off + (pkt->proto == IP4_PROTO_TCP ? TCP_CSUM_OFF :
				       offsetof(struct udphdr, check));
	xip->ip_len = bpf_ntohs(ip->tot_len);
	xip->ttl = ip->ttl;
	return PKT_L4;
}

/* Fill pkt and ip from an IPv6 frame whose upper layer follows the fixed header
 * directly (no extension header): PKT_L4, PKT_FRAGMENT or PKT_PASS. */
static __always_inline int xdp6_parse(struct xdp_md *ctx, struct pkt6 *pkt, struct xdp_ip *xip)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct l4_ports *ports;
	struct ip6_hdr *ip;
	__u32 l4_len, payload;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return PKT_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end ||
	    (ip->vtc_flow & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
		return PKT_PASS;
	if (ip->nexthdr == IP6_NH_FRAGMENT)
		return PKT_FRAGMENT;
	if (ip->nexthdr != IP4_PROTO_TCP && ip->nexthdr != IP4_PROTO_UDP)
		return PKT_PASS;
	l4_len = xdp_l4_len(ip->nexthdr);
	payload = bpf_ntohs(ip->payload_len);
	ports = (void *)(ip + 1);
	if ((void *)ports + l4_len > data_end || payload < l4_len ||
	    data + ETH_HLEN + IP6_HDR_LEN + payload > data_end)
		return PKT_PASS;
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->sport = ports->source;
	pkt->dport = ports->dest;
	pkt->proto = ip->nexthdr;
	if (pkt->proto == IP4_PROTO_TCP && (void *)ports + TCP_HDR_LEN <= data_end)
		pkt->tcp_flags = *((__u8 *)ports + TCP_FLAGS_OFF);
	pkt->l3_off = ETH_HLEN;
	pkt->l4_off = ETH_HLEN + IP6_HDR_LEN;
	pkt->csum_off = pkt->l4_off + (pkt->proto == IP4_PROTO_TCP ? TCP_CSUM_OFF :
				       offsetof(struct udphdr, check));
	xip->ip_len = IP6_HDR_LEN + payload;
	xip->ttl = ip->hop_limit;
	return PKT_L4;
}

#endif

/* parse.h: Ethernet/IPv4/TCP/UDP parsing with bounds checks, the only place that reads
 * packet memory. It copies what the later stages need into a struct pkt4 (fields and
 * offsets, no pointers), so nothing holds a packet pointer across a helper that can
 * move packet data. */
#ifndef EBPFLB_PARSE_H
#define EBPFLB_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

/* IP protocol numbers and the TCP header facts used here are written out rather than
 * taken from <linux/in.h> and <linux/tcp.h>: under bcc those pull in the kernel's
 * socket headers and triple the compile time (about 0.4 s -> 1.1 s). */
#define IP4_PROTO_ICMP		1	/* IPPROTO_ICMP */
#define IP4_PROTO_TCP		6	/* IPPROTO_TCP */
#define IP4_PROTO_UDP		17	/* IPPROTO_UDP */
#define TCP_HDR_LEN		20	/* sizeof(struct tcphdr), without options */
#define TCP_CSUM_OFF		16	/* offsetof(struct tcphdr, check) */
#define TCP_FLAGS_OFF		13	/* the byte of struct tcphdr holding FIN..CWR */
#define TCP_F_FIN		0x01	/* tcphdr flag bits (the byte at TCP_FLAGS_OFF) */
#define TCP_F_SYN		0x02
#define TCP_F_RST		0x04
#define TCP_F_ACK		0x10

/* The first 4 bytes of a TCP or UDP header alike. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

/* What pkt4_parse() found. Anything but PKT_L4 and PKT_ICMP passes untouched. */
#define PKT_L4			0	/* IPv4 TCP/UDP, not a fragment: translatable */
#define PKT_PASS		1	/* not IPv4 TCP/UDP, truncated or malformed */
#define PKT_FRAGMENT		2	/* an IPv4 fragment: no ports to translate */
#define PKT_ICMP		3	/* IPv4 ICMP (not a fragment): saddr, daddr and the
				 * offsets are set; icmp.h reads the rest */

/* iphdr.frag_off bits (host order; net/ip.h is not UAPI) */
#define IP4_MF			0x2000
#define IP4_OFFSET		0x1fff

/* What the later stages know about a translatable packet. */
struct pkt4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* IP4_PROTO_TCP / IP4_PROTO_UDP */
	__u8 tcp_flags;		/* TCP: the header's flags byte (TCP_F_*); 0 otherwise */
	__u8 pad[2];
	__u32 l3_off;		/* offset of the IPv4 header */
	__u32 l4_off;		/* offset of the TCP/UDP header */
	__u32 csum_off;		/* offset of the TCP/UDP checksum */
};

/* A TCP segment that opens a connection: SYN without ACK. */
static __always_inline int pkt_opens_tcp(__u8 proto, __u8 tcp_flags)
{
	return proto == IP4_PROTO_TCP && (tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN;
}

/* Whether a tracked flow's packet may choose again once its backend stops taking new
 * flows (not ready, or terminating while others are ready): a TCP segment that opens a
 * connection (SYN without ACK) on the 5-tuple of a closed one still in conntrack
 * (clients reuse ports fast), and any UDP datagram, as kube-proxy clears the UDP
 * conntrack entries of endpoints that are no longer ready. Established TCP drains. */
static __always_inline int pkt_leaves_inactive(__u8 proto, __u8 tcp_flags)
{
	return proto == IP4_PROTO_UDP || pkt_opens_tcp(proto, tcp_flags);
}

static __always_inline int pkt4_is_fragment(const struct iphdr *ip)
{
	return (ip->frag_off & bpf_htons(IP4_MF | IP4_OFFSET)) != 0;
}

/* Verifier workaround: with several reads of skb->data/data_end in one function, clang
 * may compute &skb->data_end once and load through that copy, which the verifier
 * refuses ("dereference of modified ctx ptr"). A function that re-reads them after a
 * helper call first hides skb behind this empty asm, so no address is shared. */
#define skb_barrier(skb)	asm volatile("" : "+r"(skb))

/* Make the first len bytes linear, when they are not already. Almost always they are
 * (a sender puts every header in the skb's head), and then nothing is done: pulling
 * un-clones the skb, which a TCP sender's packet always is, and copying its head
 * would cost every packet, translated or not, about as much as all the rest of this
 * program. 0, or PKT_PASS when the packet is shorter than len. */
static __always_inline int pkt4_linear(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (len > skb->len || bpf_skb_pull_data(skb, len) < 0)
		return PKT_PASS;
	return 0;
}

/* Fill pkt from the packet: one of the PKT_* kinds above. */
static __always_inline int pkt4_parse(struct __sk_buff *skb, struct pkt4 *pkt)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct l4_ports *ports;
	__u32 ip_len, l4_off, l4_len;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if (pkt4_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return PKT_PASS;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return PKT_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return PKT_PASS;
	if (ip->protocol != IP4_PROTO_TCP && ip->protocol != IP4_PROTO_UDP &&
	    ip->protocol != IP4_PROTO_ICMP)
		return PKT_PASS;
	if (pkt4_is_fragment(ip))
		return PKT_FRAGMENT;
	if (ip->protocol == IP4_PROTO_ICMP) {
		pkt->proto = IP4_PROTO_ICMP;
		pkt->saddr = ip->saddr;
		pkt->daddr = ip->daddr;
		pkt->l3_off = ETH_HLEN;
		pkt->l4_off = ETH_HLEN + ip->ihl * 4;
		return PKT_ICMP;
	}
	/* the IP length must cover the headers and fit in the packet */
	ip_len = bpf_ntohs(ip->tot_len);
	if (ETH_HLEN + ip_len > skb->len)
		return PKT_PASS;
	l4_off = ETH_HLEN + ip->ihl * 4;
	l4_len = ip->protocol == IP4_PROTO_TCP ? TCP_HDR_LEN : sizeof(struct udphdr);
	if (ip_len < ip->ihl * 4 + l4_len)
		return PKT_PASS;
	pkt->proto = ip->protocol;

	/* Up to the end of the TCP/UDP header; the pointers are re-derived after it. */
	if (l4_off > ETH_HLEN + 60 || pkt4_linear(skb, l4_off + l4_len))
		return PKT_PASS;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	ports = data + l4_off;
	if ((void *)(ip + 1) > data_end)
		return PKT_PASS;
	if (pkt->proto == IP4_PROTO_TCP) {
		if ((void *)ports + TCP_HDR_LEN > data_end)
			return PKT_PASS;
		pkt->tcp_flags = *((__u8 *)ports + TCP_FLAGS_OFF);
		pkt->csum_off = l4_off + TCP_CSUM_OFF;
	} else {
		if ((void *)ports + sizeof(struct udphdr) > data_end)
			return PKT_PASS;
		pkt->csum_off = l4_off + offsetof(struct udphdr, check);
	}
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->sport = ports->source;
	pkt->dport = ports->dest;
	pkt->l3_off = ETH_HLEN;
	pkt->l4_off = l4_off;
	return PKT_L4;
}

#endif

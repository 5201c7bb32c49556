/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing. Every read goes through bpf_skb_load_bytes, which checks
 * bounds against the whole skb (linear or not), so a truncated packet yields
 * DROP_MALFORMED instead of an out-of-bounds read. IP options are skipped by
 * honouring ihl; fragments are tied to their first fragment's ports through
 * sigil_frag4. */
#ifndef SIGIL_PARSE_H
#define SIGIL_PARSE_H

#include "maps.h"

#define IP_MF     0x2000
#define IP_OFFSET 0x1FFF

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* A parsed IPv4 packet: its conntrack tuple, the port policy judges, and for
 * ICMP errors the tuple of the packet the error is about. */
struct pkt4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;        /* conntrack ports (ICMP echo: the id on one side) */
	__be16 dport;
	__be16 policy_port;  /* TCP/UDP/SCTP: dport; ICMP: type << 8 | code */
	__u8 proto;
	__u8 tcp_flags;
	__u32 len;
	__u8 has_inner;      /* ICMP error with a parsable embedded header */
	__u8 l4_off;         /* offset of the L4 header in the frame */
	__u8 later_frag;     /* a non-first fragment: no L4 header */
	__u8 pad;
	struct ct4_key inner;
};

static __always_inline bool icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH ||
	       type == ICMP_REDIRECT;
}

/* icmp_echo_ports sets conntrack ports for ICMP so that an echo reply's
 * reversed tuple equals its request's tuple. */
static __always_inline void icmp_echo_ports(__u8 type, __be16 id, __be16 *sport, __be16 *dport)
{
	if (type == ICMP_ECHO) {
		*sport = id;
		*dport = 0;
	} else if (type == ICMP_ECHOREPLY) {
		*sport = 0;
		*dport = id;
	} else {
		*sport = 0;
		*dport = 0;
	}
}

/* parse_icmp_inner reads the IPv4 header and first L4 bytes embedded in an
 * ICMP error at off. Failure is not an error: the packet is then simply not
 * related to a known flow. */
static __always_inline void parse_icmp_inner(struct __sk_buff *skb, __u32 off, struct pkt4 *p)
{
	struct iphdr ip;
	__u32 l4;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return;
	if (ip.version != 4 || ip.ihl < 5)
		return;
	l4 = off + ip.ihl * 4;
	p->inner.saddr = ip.saddr;
	p->inner.daddr = ip.daddr;
	p->inner.proto = ip.protocol;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_SCTP) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return;
		p->inner.sport = ports[0];
		p->inner.dport = ports[1];
	} else if (ip.protocol == IPPROTO_ICMP) {
		struct icmphdr ic;
		if (bpf_skb_load_bytes(skb, l4, &ic, sizeof(ic)) < 0)
			return;
		icmp_echo_ports(ic.type, ic.un.echo.id, &p->inner.sport, &p->inner.dport);
	}
	p->has_inner = 1;
}

/* parse_l4 fills ports and flags from the L4 header at off. Returns 0 or a
 * drop reason. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt4 *p)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr th;
		if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)) < 0 || th.doff < 5)
			return DROP_MALFORMED;
		p->sport = th.source;
		p->dport = th.dest;
		p->policy_port = th.dest;
		p->tcp_flags = ((__u8 *)&th)[13];
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return DROP_MALFORMED;
		p->sport = ports[0];
		p->dport = ports[1];
		p->policy_port = ports[1];
		return 0;
	}
	case IPPROTO_ICMP: {
		struct icmphdr ic;
		if (bpf_skb_load_bytes(skb, off, &ic, sizeof(ic)) < 0)
			return DROP_MALFORMED;
		icmp_echo_ports(ic.type, ic.un.echo.id, &p->sport, &p->dport);
		p->policy_port = bpf_htons(((__u16)ic.type << 8) | ic.code);
		if (icmp_is_error(ic.type))
			parse_icmp_inner(skb, off + sizeof(ic), p);
		return 0;
	}
	default:
		/* Other protocols have no ports: policy judges them by protocol. */
		return 0;
	}
}

/* parse_ipv4_at parses the IPv4 packet whose header starts at off (after the
 * Ethernet header in tc, 0 in cgroup programs). Returns 0 or a drop reason. */
static __always_inline int parse_ipv4_at(struct __sk_buff *skb, struct pkt4 *p, __u32 off)
{
	struct iphdr ip;
	__u32 hlen;
	__u16 frag;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return DROP_MALFORMED;
	if (ip.version != 4 || ip.ihl < 5)
		return DROP_MALFORMED;
	hlen = ip.ihl * 4;
	if (bpf_ntohs(ip.tot_len) < hlen || skb->len < off + bpf_ntohs(ip.tot_len))
		return DROP_MALFORMED;

	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->len = skb->len;
	p->l4_off = off + hlen;

	frag = bpf_ntohs(ip.frag_off);
	if (frag & IP_OFFSET) {
		/* A later fragment: it carries no L4 header, so it inherits
		 * the first fragment's ports or is dropped. */
		struct frag4_key fk = { .saddr = ip.saddr, .daddr = ip.daddr,
					.id = ip.id, .proto = ip.protocol };
		struct frag_ports *fp = bpf_map_lookup_elem(&sigil_frag4, &fk);
		if (!fp)
			return DROP_FRAG_UNKNOWN;
		p->later_frag = 1;
		p->sport = fp->sport;
		p->dport = fp->dport;
		p->policy_port = fp->dport;
		return 0;
	}

	{
		int ret = parse_l4(skb, off + hlen, p);
		if (ret)
			return ret;
	}

	if (frag & IP_MF) {
		struct frag4_key fk = { .saddr = ip.saddr, .daddr = ip.daddr,
					.id = ip.id, .proto = ip.protocol };
		struct frag_ports fp = { .sport = p->sport, .dport = p->policy_port };
		bpf_map_update_elem(&sigil_frag4, &fk, &fp, BPF_ANY);
	}
	return 0;
}

/* parse_ipv4 parses the IPv4 packet after the Ethernet header. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt4 *p)
{
	return parse_ipv4_at(skb, p, ETH_HLEN);
}

#endif /* SIGIL_PARSE_H */

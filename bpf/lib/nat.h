/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address and port rewriting for service translation (IPv4 TCP and UDP),
 * with the IPv4 header checksum and the L4 checksum (whose pseudo-header
 * covers the addresses) updated incrementally. A UDP checksum of zero means
 * none and stays zero (BPF_F_MARK_MANGLED_0). Later fragments carry no L4
 * header: only their addresses change (the first fragment's L4 checksum
 * covers the whole datagram). */
#ifndef SIGIL_NAT_H
#define SIGIL_NAT_H

#include "parse.h"

#define IP_CSUM_OFF   (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SADDR_OFF  (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF  (ETH_HLEN + offsetof(struct iphdr, daddr))

#ifndef offsetof
#define offsetof(t, m) __builtin_offsetof(t, m)
#endif

enum nat_side {
	NAT_SRC = 0,
	NAT_DST = 1,
};

/* nat4_rewrite sets the source or destination address and port of p's
 * packet (and of p) to addr:port. Returns 0, or -1 when the skb could not
 * be written. */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, struct pkt4 *p, enum nat_side side,
					__be32 addr, __be16 port)
{
	__be32 old_addr = side == NAT_DST ? p->daddr : p->saddr;
	__be16 old_port = side == NAT_DST ? p->dport : p->sport;
	__u32 addr_off = side == NAT_DST ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u32 l4_csum = 0, port_off = 0, mangled = 0;

	if (!p->later_frag) {
		if (p->proto == IPPROTO_TCP) {
			l4_csum = p->l4_off + offsetof(struct tcphdr, check);
		} else if (p->proto == IPPROTO_UDP) {
			l4_csum = p->l4_off + offsetof(struct udphdr, check);
			mangled = BPF_F_MARK_MANGLED_0;
		} else {
			return -1;
		}
		port_off = p->l4_off + (side == NAT_DST ? offsetof(struct tcphdr, dest)
							: offsetof(struct tcphdr, source));
	}

	if (addr != old_addr) {
		if (l4_csum && bpf_l4_csum_replace(skb, l4_csum, old_addr, addr,
						   BPF_F_PSEUDO_HDR | mangled | sizeof(addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, sizeof(addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &addr, sizeof(addr), 0) < 0)
			return -1;
	}
	if (port_off && port != old_port) {
		if (bpf_l4_csum_replace(skb, l4_csum, old_port, port, mangled | sizeof(port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return -1;
	}
	if (side == NAT_DST) {
		p->daddr = addr;
		p->dport = port;
		p->policy_port = port;
	} else {
		p->saddr = addr;
		p->sport = port;
	}
	return 0;
}

#endif /* SIGIL_NAT_H */

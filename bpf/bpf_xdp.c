// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdp_prefilter: attached to a node's interfaces, it drops IPv4 packets whose
 * source is in the deny list before an skb exists. Everything else passes
 * untouched: other protocols, VXLAN, and any frame it cannot parse (it never
 * drops what it does not understand). Drops are counted per rule; at most one
 * flow event per rule per second per CPU reaches the ring buffer, so a flood
 * cannot drown it. */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/events.h"
#include "lib/prefilter.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_8021Q  0x8100
#define ETH_P_8021AD 0x88A8
#define PF_EVENT_INTERVAL_NS 1000000000ULL

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

static __always_inline void pf_event(struct xdp_md *ctx, const struct iphdr *ip, __u32 rule_id)
{
	struct flow_event *e = bpf_ringbuf_reserve(&sigil_events, sizeof(*e), 0);

	if (!e) {
		evstat_inc(EVSTAT_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp = bpf_ktime_get_ns();
	e->ifindex = ctx->ingress_ifindex;
	e->src_identity = IDENTITY_WORLD;
	e->saddr.ip4 = ip->saddr;
	e->daddr.ip4 = ip->daddr;
	e->family = SIGIL_AF_INET;
	e->proto = ip->protocol;
	e->direction = DIR_INGRESS;
	e->type = EVENT_DROP;
	e->verdict = VERDICT_DROPPED;
	e->reason = DROP_PREFILTER;
	e->cookie = rule_id;
	e->pkt_len = ctx->data_end - ctx->data;
	bpf_ringbuf_submit(e, 0);
}

/* pf_match returns the rule a source address is denied by, or NULL. */
static __always_inline struct pf_entry *pf_match(__be32 saddr)
{
	struct pf4_key k = { .prefixlen = 32, .addr = saddr };
	struct pf_entry *hit;
	__u32 zero = 0;
	void *list;

	list = bpf_map_lookup_elem(&sigil_pf4, &zero);
	if (!list)
		return NULL;
	hit = bpf_map_lookup_elem(list, &k);
	if (!hit || (hit->flags & PF_F_PASS))
		return NULL;
	return hit;
}

SEC("xdp")
int xdp_prefilter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct pf_entry *hit;
	struct pf_stats *st;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct vlan_hdr *vh = data + off;
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return XDP_PASS;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	if (proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = data + off;
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return XDP_PASS;

	hit = pf_match(ip->saddr);
	if (!hit)
		return XDP_PASS;

	st = bpf_map_lookup_elem(&sigil_pf_stats, &hit->rule_id);
	if (st) {
		__u64 now = bpf_ktime_get_ns();
		st->packets++;
		st->bytes += data_end - data;
		if (now - st->last_event >= PF_EVENT_INTERVAL_NS) {
			st->last_event = now;
			pf_event(ctx, ip, hit->rule_id);
		}
	}
	return XDP_DROP;
}

/* tc_prefilter is the same deny list as a tc ingress program, after the skb
 * exists: not attached by Sigil, kept so benchmarks can compare the hook
 * points with identical logic (make bench-prefilter). */
SEC("tc")
int tc_prefilter(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct pf_entry *hit;
	struct pf_stats *st;

	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return TC_ACT_UNSPEC;
	hit = pf_match(ip.saddr);
	if (!hit)
		return TC_ACT_UNSPEC;
	st = bpf_map_lookup_elem(&sigil_pf_stats, &hit->rule_id);
	if (st) {
		st->packets++;
		st->bytes += skb->len;
	}
	return TC_ACT_SHOT;
}

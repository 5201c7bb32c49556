// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Programs on the host side of each pod's veth pair:
 *   from_container: tc ingress of the host veth, i.e. traffic leaving the pod;
 *                   judged by the egress policy of the source endpoint.
 *   to_container:   tc egress of the host veth, i.e. traffic entering the pod;
 *                   judged by the ingress policy of the destination endpoint.
 * Both return TC_ACT_UNSPEC (TCX_NEXT) for allowed traffic so later programs
 * and filters still run, and TC_ACT_SHOT for drops. */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/metrics.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Types user space reads but no program references directly. */
SIGIL_EXPORT_TYPE(struct flow_event, flow_event);
SIGIL_EXPORT_TYPE(enum sigil_reason, sigil_reason);
SIGIL_EXPORT_TYPE(enum sigil_reserved_identity, reserved_identity);
SIGIL_EXPORT_TYPE(struct ct4_key, ct4_key);

/* What one program invocation knows about a packet, for events. */
struct verdict_ctx {
	__u32 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 cookie;
	__u8 dir;
};

static __always_inline void emit_event(struct __sk_buff *skb, const struct pkt4 *p,
				       const struct verdict_ctx *v, __u8 type, __u8 reason)
{
	struct flow_event *e = bpf_ringbuf_reserve(&sigil_events, sizeof(*e), 0);

	if (!e) {
		evstat_inc(EVSTAT_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp = bpf_ktime_get_ns();
	e->ep_id = v->ep_id;
	e->ifindex = skb->ifindex;
	e->src_identity = v->src_identity;
	e->dst_identity = v->dst_identity;
	e->saddr.ip4 = p->saddr;
	e->daddr.ip4 = p->daddr;
	e->sport = p->sport;
	e->dport = p->proto == IPPROTO_ICMP ? p->policy_port : p->dport;
	e->family = SIGIL_AF_INET;
	e->proto = p->proto;
	e->direction = v->dir;
	e->type = type;
	e->verdict = reason == REASON_FORWARDED ? VERDICT_FORWARDED : VERDICT_DROPPED;
	e->reason = reason;
	e->tcp_flags = p->tcp_flags;
	e->cookie = v->cookie;
	e->pkt_len = skb->len;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int drop(struct __sk_buff *skb, const struct pkt4 *p,
				const struct verdict_ctx *v, __u8 reason)
{
	metrics_count(reason, v->dir, skb->len);
	emit_event(skb, p, v, EVENT_DROP, reason);
	return SIGIL_DROP;
}

static __always_inline int forward(struct __sk_buff *skb, __u8 dir)
{
	metrics_count(REASON_FORWARDED, dir, skb->len);
	return SIGIL_PASS;
}

static __always_inline int handle_ipv4(struct __sk_buff *skb, __u8 dir)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep;
	struct verdict_ctx v = { .dir = dir };
	struct pkt4 p = {};
	__u64 now;
	__u8 reason;

	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(skb, &p, &v, reason);

	/* The endpoint whose program this is: the packet's source on the way
	 * out, its destination on the way in. It must live behind this very
	 * interface, which also stops a pod from spoofing another's address. */
	ep = endpoint_lookup4(dir == DIR_EGRESS ? p.saddr : p.daddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, &p, &v, dir == DIR_EGRESS ? DROP_INVALID_SOURCE
							   : DROP_UNKNOWN_ENDPOINT);
	v.ep_id = ep->ep_id;

	now = bpf_ktime_get_ns();
	if (ct4_lookup(&p, dir, now) != CT_NEW)
		return forward(skb, dir);

	if (dir == DIR_EGRESS) {
		v.src_identity = ep->identity;
		v.dst_identity = identity_of4(p.daddr);
	} else {
		v.src_identity = identity_of4(p.saddr);
		v.dst_identity = ep->identity;
	}

	reason = policy_check(cfg, ep, dir,
			      dir == DIR_EGRESS ? v.dst_identity : v.src_identity,
			      p.proto, p.policy_port, &v.cookie);
	if (reason)
		return drop(skb, &p, &v, reason);

	ct4_create(&p, dir, now, v.cookie, v.src_identity, v.dst_identity);
	if (cfg && (cfg->flags & CFG_TRACE_NEW_FLOWS)) {
		if (rate_allow(cfg->event_rate_limit))
			emit_event(skb, &p, &v, EVENT_POLICY_VERDICT, REASON_FORWARDED);
		else
			evstat_inc(EVSTAT_RATE_LIMITED);
	}
	return forward(skb, dir);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct verdict_ctx v = { .dir = dir };
	struct pkt4 p = {};

	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(skb, dir);
	case bpf_htons(ETH_P_ARP):
		/* Neighbour resolution between the pod and its gateway. */
		return SIGIL_PASS;
	default:
		/* IPv6 and other L3 protocols cannot be judged yet: fail
		 * closed rather than let them bypass policy. */
		p.len = skb->len;
		return drop(skb, &p, &v, DROP_UNSUPPORTED_L3);
	}
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

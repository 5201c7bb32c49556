// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Sigil's tc programs.
 *
 * On the host side of each pod's veth pair:
 *   from_container: tc ingress of the host veth, i.e. traffic leaving the pod.
 *                   Judges the source endpoint's egress policy; a packet for
 *                   another local pod is also judged by that pod's ingress
 *                   policy and redirected straight into it (bpf_redirect_peer);
 *                   in tunnel mode a packet for a remote pod is encapsulated
 *                   with the source's identity as VNI.
 *   to_container:   tc egress of the host veth, i.e. traffic the host stack
 *                   delivers into the pod (native routing, the node itself).
 *                   Judges the destination's ingress policy, with the source
 *                   identity from the ipcache.
 * On the node's VXLAN device (tunnel mode):
 *   from_overlay:   tc ingress: judges the destination's ingress policy with
 *                   the source identity carried in the VNI, and redirects into
 *                   the pod; traffic for the node itself goes up the stack.
 *   to_overlay:     tc egress: sets the tunnel key for what the host stack
 *                   sends into the tunnel (the node's own traffic to remote
 *                   pods), identity remote-node as the peer will see it.
 * Allowed traffic that is not redirected returns TC_ACT_UNSPEC (TCX_NEXT) so
 * later programs and filters still run; drops return TC_ACT_SHOT. */
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

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

/* What one judgement knows about a packet, for events. */
struct verdict_ctx {
	__u32 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 cookie;
	__u8 dir;
};

/* Drops wake the reader at once. Allowed-flow events, which come at the rate
 * of new connections, do not: the reader collects them at its next poll
 * (at most EVENT_POLL_MS later, see datapath.EventReader) or when the ring is
 * a quarter full, sparing a wakeup per connection. */
static __always_inline __u64 event_wakeup(__u8 type)
{
	if (type == EVENT_DROP)
		return 0;
	if (bpf_ringbuf_query(&sigil_events, BPF_RB_AVAIL_DATA) > SIGIL_EVENTS_BYTES / 4)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

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
	bpf_ringbuf_submit(e, event_wakeup(type));
}

static __always_inline int drop(struct __sk_buff *skb, const struct pkt4 *p,
				const struct verdict_ctx *v, __u8 reason)
{
	metrics_count(reason, v->dir, skb->len);
	emit_event(skb, p, v, EVENT_DROP, reason);
	return SIGIL_DROP;
}

/* judge applies one endpoint's policy in one direction to a packet:
 * conntrack first, then (for a new flow) the policy lookup against peer, the
 * peer's identity (resolved from the ipcache when peer is IDENTITY_ANY).
 * Returns REASON_FORWARDED or the drop reason; v is filled for events. */
static __always_inline __u8 judge(struct __sk_buff *skb, const struct runtime_config *cfg,
				  const struct pkt4 *p, const struct endpoint_info *ep,
				  __u8 dir, __u32 peer, __u64 now, struct verdict_ctx *v)
{
	__u8 reason;

	v->dir = dir;
	v->ep_id = ep->ep_id;
	v->cookie = 0;
	if (ct4_lookup(p, dir, now) != CT_NEW) {
		metrics_count(REASON_FORWARDED, dir, skb->len);
		return REASON_FORWARDED;
	}
	if (peer == IDENTITY_ANY)
		peer = identity_of4(dir == DIR_EGRESS ? p->daddr : p->saddr);
	if (dir == DIR_EGRESS) {
		v->src_identity = ep->identity;
		v->dst_identity = peer;
	} else {
		v->src_identity = peer;
		v->dst_identity = ep->identity;
	}
	reason = policy_check(cfg, ep, dir, peer, p->proto, p->policy_port, &v->cookie);
	if (reason)
		return reason;

	ct4_create(p, dir, now, v->cookie, v->src_identity, v->dst_identity);
	metrics_count(REASON_FORWARDED, dir, skb->len);
	if (cfg && (cfg->flags & CFG_TRACE_NEW_FLOWS)) {
		if (rate_allow(cfg->event_rate_limit))
			emit_event(skb, p, v, EVENT_POLICY_VERDICT, REASON_FORWARDED);
		else
			evstat_inc(EVSTAT_RATE_LIMITED);
	}
	return REASON_FORWARDED;
}

static __always_inline bool mac_known(const __u8 *mac)
{
	return mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5];
}

/* deliver_local hands a packet straight to a local pod: the pod's MAC as
 * destination, its host veth's MAC as source, and in through the veth's peer,
 * skipping the host stack. Without known MACs the host stack routes it. */
static __always_inline int deliver_local(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	if (!mac_known(ep->mac) || !mac_known(ep->node_mac))
		return SIGIL_PASS;
	if (bpf_skb_store_bytes(skb, 0, ep->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, ep->node_mac, 6, 0) < 0)
		return SIGIL_DROP;
	bpf_skb_change_type(skb, PACKET_HOST);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* encap sends a packet into the tunnel towards a remote node, carrying the
 * source identity in the VNI. */
static __always_inline int encap(struct __sk_buff *skb, const struct runtime_config *cfg,
				 __be32 node, __u32 src_identity)
{
	struct bpf_tunnel_key key = {
		.remote_ipv4 = bpf_ntohl(node),
		.tunnel_id = src_identity,
		.tunnel_ttl = 64,
	};

	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return SIGIL_DROP;
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

static __always_inline bool tunnel_mode(const struct runtime_config *cfg)
{
	return cfg && (cfg->flags & CFG_TUNNEL) && cfg->tunnel_ifindex;
}

static __always_inline int handle_from_container(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep, *dst_ep;
	struct verdict_ctx v = { .dir = DIR_EGRESS };
	struct pkt4 p = {};
	__u64 now;
	__u8 reason;

	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(skb, &p, &v, reason);
	/* The source must be the endpoint behind this very interface, which
	 * also stops a pod from spoofing another's address. */
	ep = endpoint_lookup4(p.saddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, &p, &v, DROP_INVALID_SOURCE);

	now = bpf_ktime_get_coarse_ns();
	reason = judge(skb, cfg, &p, ep, DIR_EGRESS, IDENTITY_ANY, now, &v);
	if (reason)
		return drop(skb, &p, &v, reason);

	dst_ep = endpoint_lookup4(p.daddr);
	if (dst_ep && dst_ep->ifindex != skb->ifindex && mac_known(dst_ep->mac)) {
		reason = judge(skb, cfg, &p, dst_ep, DIR_INGRESS, ep->identity, now, &v);
		if (reason)
			return drop(skb, &p, &v, reason);
		return deliver_local(skb, dst_ep);
	}
	if (tunnel_mode(cfg)) {
		__be32 node = tunnel_endpoint4(ipcache_lookup4(p.daddr), p.daddr);
		if (node)
			return encap(skb, cfg, node, ep->identity);
	}
	return SIGIL_PASS;
}

static __always_inline int handle_to_container(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep;
	struct verdict_ctx v = { .dir = DIR_INGRESS };
	struct pkt4 p = {};
	__u8 reason;

	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(skb, &p, &v, reason);
	ep = endpoint_lookup4(p.daddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, &p, &v, DROP_UNKNOWN_ENDPOINT);
	reason = judge(skb, cfg, &p, ep, DIR_INGRESS, IDENTITY_ANY, bpf_ktime_get_coarse_ns(), &v);
	if (reason)
		return drop(skb, &p, &v, reason);
	return SIGIL_PASS;
}

static __always_inline int handle_from_overlay(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep;
	struct verdict_ctx v = { .dir = DIR_INGRESS };
	struct bpf_tunnel_key key = {};
	struct pkt4 p = {};
	__u32 src_identity;
	__u8 reason;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return SIGIL_PASS;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return SIGIL_DROP;
	/* The sender's identity, not its address, is what policy judges. VNI 0
	 * names no identity: it is judged as world, never as the wildcard. */
	src_identity = key.tunnel_id ? key.tunnel_id : IDENTITY_WORLD;

	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(skb, &p, &v, reason);
	ep = endpoint_lookup4(p.daddr);
	if (!ep) {
		/* For the node itself: up the stack. */
		bpf_skb_change_type(skb, PACKET_HOST);
		return SIGIL_PASS;
	}
	reason = judge(skb, cfg, &p, ep, DIR_INGRESS, src_identity, bpf_ktime_get_coarse_ns(), &v);
	if (reason)
		return drop(skb, &p, &v, reason);
	return deliver_local(skb, ep);
}

static __always_inline int handle_to_overlay(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	struct bpf_tunnel_key key = {};
	struct iphdr ip;
	__be32 node;

	/* Already keyed by from_container: a pod's packet. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return SIGIL_PASS;
	if (skb->protocol != bpf_htons(ETH_P_IP) || !tunnel_mode(cfg) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return SIGIL_DROP;
	node = tunnel_endpoint4(ipcache_lookup4(ip.daddr), ip.daddr);
	if (!node)
		return SIGIL_DROP;
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_id = IDENTITY_REMOTE_NODE;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return SIGIL_DROP;
	return SIGIL_PASS;
}

static __always_inline int only_ipv4(struct __sk_buff *skb, __u8 dir)
{
	struct verdict_ctx v = { .dir = dir };
	struct pkt4 p = { .len = skb->len };

	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return SIGIL_PASS; /* neighbour resolution between pod and gateway */
	/* IPv6 and other L3 protocols cannot be judged yet: fail closed
	 * rather than let them bypass policy. */
	return drop(skb, &p, &v, DROP_UNSUPPORTED_L3);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return only_ipv4(skb, DIR_EGRESS);
	return handle_from_container(skb);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return only_ipv4(skb, DIR_INGRESS);
	return handle_to_container(skb);
}

SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	return handle_from_overlay(skb);
}

SEC("tc")
int to_overlay(struct __sk_buff *skb)
{
	return handle_to_overlay(skb);
}

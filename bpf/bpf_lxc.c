// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Sigil's tc programs.
 *
 * On the host side of each pod's veth pair:
 *   from_container: tc ingress of the host veth, i.e. traffic leaving the pod.
 *                   Judges the source endpoint's egress policy; a packet for
 *                   another local pod is also judged by that pod's ingress
 *                   policy and redirected straight into it (bpf_redirect_peer);
 *                   in tunnel mode a packet for a remote pod is encapsulated
 *                   with the source's identity as VNI; in native routing
 *                   (CFG_NATIVE_FAST) a packet of a CT_F_FAST flow with a
 *                   remote pod is sent out of the underlay device at once
 *                   (FIB lookup, bpf_redirect / bpf_redirect_neigh).
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
 *                   pods), identity remote-node as the peer will see it; a
 *                   pod's packet the stack translated (kube-proxy) has its
 *                   deferred egress judged and carries the pod's identity.
 * On the cgroup v2 root (deferred services only):
 *   local_ingress:  judges the deferred egress of pods' packets the stack
 *                   translated to the node's own addresses (delivered
 *                   locally, past every tc hook).
 * On the node's devices towards other nodes (native routing):
 *   from_netdev:    tc ingress (CFG_NATIVE_FAST): a packet from a remote pod
 *                   for a local pod is judged by the pod's ingress policy,
 *                   with the source identity from the ipcache, and
 *                   redirected straight into the pod, skipping the host
 *                   stack (as from_overlay does in tunnel mode); everything
 *                   else goes up the stack.
 *   to_netdev:      tc egress (deferred services only): judges the deferred
 *                   egress of pods' packets the stack translated to a
 *                   backend elsewhere; all other packets pass at once.
 * Services: with CFG_LB_TC, from_container translates packets for a service
 * frontend to a backend (lb4_dnat) and the client's ingress hooks restore
 * the frontend as the replies' source (rev_nat4); with CFG_SVC_DEFER, packets
 * for the service CIDRs are left to the host stack's DNAT and judged after
 * it (defer_to_stack, judge_deferred).
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
#include "lib/lb.h"
#include "lib/nat.h"

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
 * Returns REASON_FORWARDED or the drop reason; v is filled for events, st
 * with what conntrack knew. An allowed new flow is tracked with ct_flags and
 * rev_nat (the service frontend it was translated from, 0 for none). */
static __always_inline __u8 judge(struct __sk_buff *skb, const struct runtime_config *cfg,
				  const struct pkt4 *p, const struct endpoint_info *ep,
				  __u8 dir, __u32 peer, __u64 now, struct verdict_ctx *v,
				  struct ct_state *st, __u8 ct_flags, __u16 rev_nat)
{
	__u8 reason;

	v->dir = dir;
	v->ep_id = ep->ep_id;
	v->cookie = 0;
	if (ct4_lookup(p, dir, now, st) != CT_NEW) {
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

	ct4_create(p, dir, now, v->cookie, v->src_identity, v->dst_identity, ct_flags, rev_nat);
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

/* native_fast: native routing with from_netdev attached. Flows between a
 * local pod and a remote pod (remote_pod4) that start while it is on are
 * tracked with CT_F_FAST and skip the host stack in both directions; all
 * other flows cross it in both directions. Never half of a flow: the host
 * stack's own conntrack (netfilter) must see a flow whole or not at all,
 * or it calls the half it sees INVALID, which kube-proxy drops. */
static __always_inline bool native_fast(const struct runtime_config *cfg)
{
	return cfg && (cfg->flags & CFG_NATIVE_FAST) && !(cfg->flags & CFG_TUNNEL);
}

/* redirect_netdev sends a pod's packet for a remote pod out of the device
 * the node's routes choose, with the next hop's MAC, skipping the host
 * stack (native_fast). Like the tunnel path, the TTL is not decremented.
 * Where the FIB cannot say (no route, forwarding off), the stack decides. */
static __always_inline int redirect_netdev(struct __sk_buff *skb, const struct pkt4 *p)
{
	struct bpf_fib_lookup fib = {
		.family = SIGIL_AF_INET,
		.ipv4_src = p->saddr,
		.ipv4_dst = p->daddr,
		.ifindex = skb->ifindex,
	};
	long ret = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	if (ret == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib.dmac, 6, 0) < 0 ||
		    bpf_skb_store_bytes(skb, 6, fib.smac, 6, 0) < 0)
			return SIGIL_DROP;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	return SIGIL_PASS;
}

/* --- services --------------------------------------------------------- */

/* in_service_cidr4 reports whether addr is in one of the service CIDRs. */
static __always_inline bool in_service_cidr4(const struct runtime_config *cfg, __be32 addr)
{
#pragma unroll
	for (int i = 0; i < SIGIL_SVC_CIDRS; i++) {
		if (cfg->svc_mask4[i] && (addr & cfg->svc_mask4[i]) == cfg->svc_net4[i])
			return true;
	}
	return false;
}

/* defer_to_stack hands a pod's packet for a service CIDR to the host stack,
 * whose DNAT (kube-proxy) picks the backend, instead of judging its egress
 * here against the virtual IP: the packet is marked, and the hook it reaches
 * after the DNAT judges it (judge_deferred). The flow as the pod sent it is
 * tracked (CT_F_VIA_STACK), so that the pod's ingress accepts the replies the
 * stack's reverse NAT delivers from the virtual IP. */
static __always_inline int defer_to_stack(struct __sk_buff *skb, const struct runtime_config *cfg,
					  const struct pkt4 *p, const struct endpoint_info *ep, __u64 now)
{
	struct ct_state st;
	__u32 mark = SIGIL_MARK_DEFER;

	if (policy_enforced(cfg, ep, DIR_EGRESS))
		mark |= SIGIL_MARK_DEFER_ENFORCED;
	skb->mark |= mark;
	if (ct4_lookup(p, DIR_EGRESS, now, &st) == CT_NEW)
		ct4_create(p, DIR_EGRESS, now, 0, ep->identity, identity_of4(p->daddr), CT_F_VIA_STACK, 0);
	return SIGIL_PASS;
}

/* judge_deferred judges, after the host stack's DNAT, the egress of the pod
 * whose packet from_container deferred (SIGIL_MARK_DEFER), on the translated
 * packet: policy sees the backend, peer (IDENTITY_ANY: from the ipcache).
 * Sigil's mark bits are cleared. A source the stack rewrote (SNAT) is no
 * endpoint any more and cannot be judged: dropped if its egress was enforced
 * (fail closed), passed if not. *src is the source endpoint, when found.
 * Unmarked packets pass untouched. */
static __always_inline __u8 judge_deferred(struct __sk_buff *skb, const struct runtime_config *cfg,
					   const struct pkt4 *p, __u32 peer, __u64 now,
					   struct verdict_ctx *v, const struct endpoint_info **src)
{
	struct ct_state st;
	__u32 mark = skb->mark;

	*src = NULL;
	if (!(mark & SIGIL_MARK_DEFER))
		return REASON_FORWARDED;
	skb->mark = mark & ~SIGIL_MARK_DEFER_MASK;
	*src = endpoint_lookup4(p->saddr);
	if (!*src) {
		v->dir = DIR_EGRESS;
		v->ep_id = 0;
		v->src_identity = identity_of4(p->saddr);
		v->dst_identity = peer;
		return (mark & SIGIL_MARK_DEFER_ENFORCED) ? DROP_INVALID_SOURCE : REASON_FORWARDED;
	}
	return judge(skb, cfg, p, *src, DIR_EGRESS, peer, now, v, &st, CT_F_VIA_STACK, 0);
}

/* lb4_dnat translates a packet for a service frontend (CFG_LB_TC) that the
 * socket programs did not (a connect() from a socket they do not see): to
 * the backend its flow already has (the CT_F_SERVICE entry of the tuple as
 * sent), or to one lb4_select picks, as the socket programs would. *rev_nat
 * names the frontend, for the reverse NAT of the replies. Other packets are
 * left alone. Returns REASON_FORWARDED or a drop reason. */
static __always_inline __u8 lb4_dnat(struct __sk_buff *skb, struct pkt4 *p, __u64 now, __u16 *rev_nat)
{
	struct lb4_key key = { .address = p->daddr, .dport = p->dport, .proto = p->proto };
	struct ct4_key ck = { .saddr = p->saddr, .daddr = p->daddr, .sport = p->sport,
			      .dport = p->dport, .proto = p->proto, .direction = DIR_EGRESS };
	const struct lb4_service *svc;
	struct ct_entry *e;
	__be32 addr;
	__be16 port;
	__u16 rev;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return REASON_FORWARDED;
	svc = bpf_map_lookup_elem(&sigil_lb4_svc, &key);
	if (!svc)
		return REASON_FORWARDED;
	e = ct_find(&ck, now);
	if (e && (e->flags & CT_F_SERVICE)) {
		/* An established service flow keeps its backend, even one
		 * the service no longer lists (it drains). */
		ct_touch(e, p, false, now);
		addr = e->nat_addr;
		port = e->nat_port;
		rev = e->rev_nat_index;
	} else {
		const struct lb4_backend *be;
		__u32 backend_id = 0;

		be = lb4_select(svc, &key, LB_AFFINITY_CLIENT_IP4 | p->saddr, &backend_id);
		if (!be)
			return DROP_NO_SERVICE_BACKEND;
		addr = be->address;
		port = be->port;
		rev = svc->rev_nat_index;
		{
			struct ct_entry ne = {
				.packets = 1,
				.bytes = p->len,
				.tcp_flags = p->tcp_flags,
				.flags = CT_F_SERVICE,
				.rev_nat_index = rev,
				.nat_addr = addr,
				.nat_port = port,
			};
			ne.expires = now + ct_lifetime(p->proto, 0);
			bpf_map_update_elem(&sigil_ct4, &ck, &ne, BPF_ANY);
		}
	}
	if (nat4_rewrite(skb, p, NAT_DST, addr, port) < 0)
		return DROP_NAT_FAILED;
	*rev_nat = rev;
	return REASON_FORWARDED;
}

/* rev_nat4 gives a reply of a translated flow the frontend's address and
 * port as its source, before it reaches the client, and accounts it to the
 * flow's CT_F_SERVICE entry (so that entry lives as long as the connection,
 * and closes with it). A frontend deleted since leaves the reply as it is.
 * Returns REASON_FORWARDED or a drop reason. */
static __always_inline __u8 rev_nat4(struct __sk_buff *skb, struct pkt4 *p, const struct ct_state *st,
				     __u64 now)
{
	const struct lb4_reverse_nat *rn;
	__u16 idx = st->rev_nat_index;
	struct ct_entry *e;

	if (st->status != CT_REPLY || !idx)
		return REASON_FORWARDED;
	rn = bpf_map_lookup_elem(&sigil_lb4_rnat, &idx);
	if (!rn)
		return REASON_FORWARDED;
	if (nat4_rewrite(skb, p, NAT_SRC, rn->address, rn->port) < 0)
		return DROP_NAT_FAILED;
	{
		struct ct4_key ck = { .saddr = p->daddr, .daddr = p->saddr, .sport = p->dport,
				      .dport = p->sport, .proto = p->proto, .direction = DIR_EGRESS };
		e = ct_find(&ck, now);
		if (e && (e->flags & CT_F_SERVICE))
			ct_touch(e, p, true, now);
	}
	return REASON_FORWARDED;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

struct rst4 {
	struct iphdr ip;
	struct tcphdr tcp;
};

/* reject_tcp4 answers a TCP segment for a frontend without backends with a
 * RST from the frontend, handed straight back into the client pod, so its
 * connect() fails at once (ECONNREFUSED) instead of retrying SYNs until a
 * timeout. The packet is rewritten in place (trimmed to the IPv4 and TCP
 * headers). Segments that are RSTs, fragments or carry IP options, and
 * other protocols, are only dropped. Returns the tc verdict. */
static __always_inline int reject_tcp4(struct __sk_buff *skb, const struct pkt4 *p,
				       const struct endpoint_info *ep)
{
	struct rst4 r = {};
	struct iphdr ip;
	struct tcphdr th;
	__u8 mac[12];
	__u32 sum = 0, hlen;
	__u16 *w;
	int i;

	if (p->proto != IPPROTO_TCP || (p->tcp_flags & TCP_FLAG_RST) || p->later_frag)
		return SIGIL_DROP;
	if (bpf_skb_load_bytes(skb, 0, mac, sizeof(mac)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), &th, sizeof(th)) < 0)
		return SIGIL_DROP;
	hlen = sizeof(ip) + th.doff * 4;
	if (ip.ihl != 5 || (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFSET)) || bpf_ntohs(ip.tot_len) < hlen)
		return SIGIL_DROP;

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_TCP;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.saddr = ip.daddr;
	r.ip.daddr = ip.saddr;
	r.tcp.source = th.dest;
	r.tcp.dest = th.source;
	r.tcp.doff = 5;
	r.tcp.rst = 1;
	if (th.ack) {
		r.tcp.seq = th.ack_seq;
	} else {
		r.tcp.ack = 1;
		r.tcp.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + (bpf_ntohs(ip.tot_len) - hlen) + th.syn + th.fin);
	}
	w = (__u16 *)&r.ip;
#pragma unroll
	for (i = 0; i < (int)(sizeof(r.ip) / 2); i++)
		sum += w[i];
	r.ip.check = csum_fold32(sum);
	sum = (r.ip.saddr & 0xffff) + (r.ip.saddr >> 16) + (r.ip.daddr & 0xffff) + (r.ip.daddr >> 16) +
	      bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(r.tcp));
	w = (__u16 *)&r.tcp;
#pragma unroll
	for (i = 0; i < (int)(sizeof(r.tcp) / 2); i++)
		sum += w[i];
	r.tcp.check = csum_fold32(sum);

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &mac[6], 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, &mac[0], 6, 0) < 0)
		return SIGIL_DROP;
	bpf_skb_change_type(skb, PACKET_HOST);
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* --- programs ---------------------------------------------------------- */

static __always_inline int handle_from_container(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep, *dst_ep;
	struct verdict_ctx v = { .dir = DIR_EGRESS };
	struct ct_state st;
	struct pkt4 p = {};
	__u16 rev_nat = 0;
	__u8 fast = 0;
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
	if (cfg && (cfg->flags & (CFG_SVC_DEFER | CFG_LB_TC))) {
		if ((cfg->flags & CFG_SVC_DEFER) && in_service_cidr4(cfg, p.daddr))
			return defer_to_stack(skb, cfg, &p, ep, now);
		if (cfg->flags & CFG_LB_TC) {
			reason = lb4_dnat(skb, &p, now, &rev_nat);
			if (reason) {
				v.ep_id = ep->ep_id;
				v.src_identity = ep->identity;
				drop(skb, &p, &v, reason);
				if (reason == DROP_NO_SERVICE_BACKEND)
					return reject_tcp4(skb, &p, ep);
				return SIGIL_DROP;
			}
		}
	}

	/* A new flow with a remote pod skips the stack both ways: only from
	 * a pod from_netdev can deliver to (known MACs). */
	if (native_fast(cfg) && mac_known(ep->mac) && mac_known(ep->node_mac) && remote_pod4(p.daddr))
		fast = CT_F_FAST;

	/* Policy judges the packet as it leaves: after any translation, so
	 * on the backend. */
	reason = judge(skb, cfg, &p, ep, DIR_EGRESS, IDENTITY_ANY, now, &v, &st, fast, rev_nat);
	if (reason)
		return drop(skb, &p, &v, reason);

	/* A reply of a flow the host stack translated goes back through the
	 * stack, for its reverse NAT: never straight into the client. */
	dst_ep = endpoint_lookup4(p.daddr);
	if (dst_ep && dst_ep->ifindex != skb->ifindex && mac_known(dst_ep->mac) &&
	    !(st.flags & CT_F_VIA_STACK)) {
		struct ct_state dst_st;

		reason = judge(skb, cfg, &p, dst_ep, DIR_INGRESS, ep->identity, now, &v, &dst_st, 0, 0);
		if (!reason)
			reason = rev_nat4(skb, &p, &dst_st, now);
		if (reason)
			return drop(skb, &p, &v, reason);
		return deliver_local(skb, dst_ep);
	}
	if (tunnel_mode(cfg)) {
		__be32 node = tunnel_endpoint4(ipcache_lookup4(p.daddr), p.daddr);
		if (node)
			return encap(skb, cfg, node, ep->identity);
	}
	/* Its own new flow, or one tracked as fast (a remote pod's flow
	 * that from_netdev delivered, replied to here), or an ICMP error
	 * about a fast flow: the path the flow takes. */
	if (fast) {
		__u8 flags = 0;

		if (st.status == CT_RELATED)
			ct4_related_peek(&p, DIR_EGRESS, now, &flags);
		else if (st.status == CT_NEW)
			flags = CT_F_FAST;
		else
			flags = st.flags;
		if (flags & CT_F_FAST)
			return redirect_netdev(skb, &p);
	}
	return SIGIL_PASS;
}

static __always_inline int handle_to_container(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep, *src;
	struct verdict_ctx v = { .dir = DIR_INGRESS };
	struct ct_state st;
	struct pkt4 p = {};
	__u8 via_stack, reason;
	__u64 now;

	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(skb, &p, &v, reason);
	ep = endpoint_lookup4(p.daddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, &p, &v, DROP_UNKNOWN_ENDPOINT);
	now = bpf_ktime_get_coarse_ns();
	/* A local pod's packet the host stack translated: its sender's
	 * egress first, on the backend it now goes to. */
	via_stack = skb->mark & SIGIL_MARK_DEFER ? CT_F_VIA_STACK : 0;
	reason = judge_deferred(skb, cfg, &p, ep->identity, now, &v, &src);
	if (reason)
		return drop(skb, &p, &v, reason);
	reason = judge(skb, cfg, &p, ep, DIR_INGRESS, src ? src->identity : IDENTITY_ANY, now, &v, &st,
		       via_stack, 0);
	if (!reason)
		reason = rev_nat4(skb, &p, &st, now);
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
	struct ct_state st;
	struct pkt4 p = {};
	__u32 src_identity;
	__u64 now;
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
	now = bpf_ktime_get_coarse_ns();
	reason = judge(skb, cfg, &p, ep, DIR_INGRESS, src_identity, now, &v, &st, 0, 0);
	if (!reason)
		reason = rev_nat4(skb, &p, &st, now);
	if (reason)
		return drop(skb, &p, &v, reason);
	if (st.flags & CT_F_VIA_STACK) {
		/* A reply of a flow this node's stack translated: up the
		 * stack for its reverse NAT, then to_container. */
		bpf_skb_change_type(skb, PACKET_HOST);
		return SIGIL_PASS;
	}
	return deliver_local(skb, ep);
}

static __always_inline int handle_to_overlay(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	struct bpf_tunnel_key key = {};
	__u32 identity = IDENTITY_REMOTE_NODE;
	struct pkt4 p = {};
	__be32 node;

	/* Already keyed by from_container: a pod's packet. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return SIGIL_PASS;
	if (skb->protocol != bpf_htons(ETH_P_IP) || !tunnel_mode(cfg))
		return SIGIL_DROP;
	if (skb->mark & SIGIL_MARK_DEFER) {
		/* A local pod's packet the host stack translated: judge its
		 * egress on the backend, and carry the pod's identity. */
		struct verdict_ctx v = { .dir = DIR_EGRESS };
		const struct endpoint_info *src;
		__u8 reason = parse_ipv4(skb, &p);

		if (!reason)
			reason = judge_deferred(skb, cfg, &p, IDENTITY_ANY, bpf_ktime_get_coarse_ns(), &v, &src);
		if (reason)
			return drop(skb, &p, &v, reason);
		if (src)
			identity = src->identity;
	} else {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return SIGIL_DROP;
		p.daddr = ip.daddr;
	}
	node = tunnel_endpoint4(ipcache_lookup4(p.daddr), p.daddr);
	if (!node)
		return SIGIL_DROP;
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return SIGIL_DROP;
	return SIGIL_PASS;
}

/* handle_to_netdev, on the egress of the node's native-routing devices,
 * judges the packets a local pod sent to a service that the host stack
 * translated to a backend behind another node (judge_deferred). */
static __always_inline int handle_to_netdev(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	struct verdict_ctx v = { .dir = DIR_EGRESS };
	const struct endpoint_info *src;
	struct pkt4 p = {};
	__u8 reason;

	reason = parse_ipv4(skb, &p);
	if (!reason)
		reason = judge_deferred(skb, cfg, &p, IDENTITY_ANY, bpf_ktime_get_coarse_ns(), &v, &src);
	if (reason)
		return drop(skb, &p, &v, reason);
	return SIGIL_PASS;
}

/* handle_from_netdev, on the ingress of the node's native-routing devices
 * (native_fast), delivers a packet from a remote pod for a local pod
 * straight into the pod: the pod's ingress is judged as to_container would
 * judge it after the host stack (the same judge, conntrack entries and
 * events; the source identity from the ipcache), and an allowed packet is
 * redirected into the pod (deliver_local) without crossing the stack's
 * routing and netfilter. As in from_overlay, the TTL is not decremented.
 * Everything else goes up the stack untouched, to be routed and judged
 * there as before: packets not addressed to this node's MAC, not for a
 * local endpoint with known MACs, not from a remote pod, fragments, packets
 * parse_ipv4 refuses (to_container reports them), and packets of flows
 * tracked without CT_F_FAST (they crossed the stack so far, e.g. replies
 * of flows the stack translated, or flows older than the fast path: they
 * stay there, see native_fast). An ICMP error takes the path of the flow it
 * is about, whoever sent it (a node or router on the way too): fast only
 * for a CT_F_FAST flow. */
static __always_inline int handle_from_netdev(struct __sk_buff *skb)
{
	const struct runtime_config *cfg = config_get();
	const struct endpoint_info *ep;
	struct verdict_ctx v = { .dir = DIR_INGRESS };
	struct ct_state st;
	struct pkt4 p = {};
	struct iphdr ip;
	__u8 flags, reason;
	__u64 now;

	if (!native_fast(cfg) || skb->pkt_type != PACKET_HOST || (skb->mark & SIGIL_MARK_DEFER))
		return SIGIL_PASS;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return SIGIL_PASS;
	/* Fragments go up the stack whole: its reassembly and the
	 * first-fragment tracking in to_container stay as they were. */
	if (ip.version != 4 || (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFSET)))
		return SIGIL_PASS;
	ep = endpoint_lookup4(ip.daddr);
	if (!ep || !mac_known(ep->mac) || !mac_known(ep->node_mac))
		return SIGIL_PASS;
	if (ip.protocol != IPPROTO_ICMP && !remote_pod4(ip.saddr))
		return SIGIL_PASS;
	if (parse_ipv4(skb, &p))
		return SIGIL_PASS;

	now = bpf_ktime_get_coarse_ns();
	if (p.has_inner) {
		if (!ct4_related_peek(&p, DIR_INGRESS, now, &flags) || !(flags & CT_F_FAST))
			return SIGIL_PASS;
	} else {
		if (ip.protocol == IPPROTO_ICMP && !remote_pod4(ip.saddr))
			return SIGIL_PASS;
		if (ct4_peek(&p, DIR_INGRESS, now, &flags) && !(flags & CT_F_FAST))
			return SIGIL_PASS;
	}
	reason = judge(skb, cfg, &p, ep, DIR_INGRESS, IDENTITY_ANY, now, &v, &st, CT_F_FAST, 0);
	if (!reason)
		reason = rev_nat4(skb, &p, &st, now);
	if (reason)
		return drop(skb, &p, &v, reason);
	return deliver_local(skb, ep);
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

/* local_ingress, a cgroup_skb/ingress program on the cgroup v2 root,
 * judges the deferred egress of a pod's packet the host stack translated to
 * an address of the node itself (a ClusterIP whose backend is host-network):
 * such a packet is delivered locally and passes no tc hook after the DNAT.
 * Packets arrive here without their Ethernet header. Unmarked ones pass at
 * once. Returns 1 (deliver) or 0 (drop). */
SEC("cgroup_skb/ingress")
int local_ingress(struct __sk_buff *skb)
{
	const struct runtime_config *cfg;
	struct verdict_ctx v = { .dir = DIR_EGRESS };
	const struct endpoint_info *src;
	struct pkt4 p = {};
	__u8 reason;

	if (!(skb->mark & SIGIL_MARK_DEFER) || skb->protocol != bpf_htons(ETH_P_IP))
		return 1;
	cfg = config_get();
	reason = parse_ipv4_at(skb, &p, 0);
	if (!reason)
		reason = judge_deferred(skb, cfg, &p, IDENTITY_ANY, bpf_ktime_get_coarse_ns(), &v, &src);
	if (reason) {
		drop(skb, &p, &v, reason);
		return 0;
	}
	return 1;
}

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	/* Only what from_container deferred; everything else at once. */
	if (!(skb->mark & SIGIL_MARK_DEFER) || skb->protocol != bpf_htons(ETH_P_IP))
		return SIGIL_PASS;
	return handle_to_netdev(skb);
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	/* Only IPv4 for a local pod; everything else (ARP, IPv6, the node's
	 * own traffic) up the stack as before. */
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return SIGIL_PASS;
	return handle_from_netdev(skb);
}

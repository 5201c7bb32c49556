/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking. A new flow is judged by policy once, then tracked in
 * sigil_ct4 per direction; its replies and the ICMP errors about it pass
 * without a policy lookup. A policy change that now denies a tracked flow is
 * applied by the agent deleting that flow's entries (the next packet is then
 * judged as new), so the established path costs one hash lookup. */
#ifndef SIGIL_CONNTRACK_H
#define SIGIL_CONNTRACK_H

#include "parse.h"

enum ct_status {
	CT_NEW         = 0,
	CT_ESTABLISHED = 1, /* same direction as the packet that opened the flow */
	CT_REPLY       = 2, /* the opposite direction */
	CT_RELATED     = 3, /* an ICMP error about a tracked flow */
};

#define NSEC_PER_SEC 1000000000ULL

/* What a lookup found: the status, and for a tracked flow its entry's
 * CT_F_* flags and reverse-NAT index. */
struct ct_state {
	__u8 status;     /* enum ct_status */
	__u8 flags;
	__u16 rev_nat_index;
};

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP * NSEC_PER_SEC;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSING * NSEC_PER_SEC;
	if (flags & CT_F_SEEN_REPLY)
		return CT_LIFETIME_TCP * NSEC_PER_SEC;
	return CT_LIFETIME_TCP_SYN * NSEC_PER_SEC;
}

/* Deadlines use bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC at tick
 * resolution, plenty for lifetimes of seconds and cheaper per packet. */

/* ct_touch accounts a packet to an entry and refreshes its deadline. Writes
 * other than the counters happen only when something changed. */
static __always_inline void ct_touch(struct ct_entry *e, const struct pkt4 *p, bool reply, __u64 now)
{
	__u8 flags = e->flags;
	__u64 exp;

	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);

	if (reply)
		flags |= CT_F_SEEN_REPLY;
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= CT_F_CLOSING;
		if ((e->tcp_flags | p->tcp_flags) != e->tcp_flags)
			e->tcp_flags |= p->tcp_flags;
	}
	if (flags != e->flags)
		e->flags = flags;

	exp = now + ct_lifetime(p->proto, flags);
	if ((flags & CT_F_CLOSING) ? exp < e->expires
				   : exp > e->expires + CT_REFRESH_INTERVAL * NSEC_PER_SEC)
		e->expires = exp;
}

static __always_inline struct ct_entry *ct_find(struct ct4_key *k, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&sigil_ct4, k);
	if (e && e->expires < now)
		return NULL;
	return e;
}

/* ct4_lookup classifies a packet seen in direction dir, into st. */
static __always_inline enum ct_status ct4_lookup(const struct pkt4 *p, __u8 dir, __u64 now,
						 struct ct_state *st)
{
	struct ct4_key k = { .saddr = p->saddr, .daddr = p->daddr,
			     .sport = p->sport, .dport = p->dport,
			     .proto = p->proto, .direction = dir };
	struct ct_entry *e;

	e = ct_find(&k, now);
	if (e) {
		ct_touch(e, p, false, now);
		st->flags = e->flags;
		st->rev_nat_index = e->rev_nat_index;
		return st->status = CT_ESTABLISHED;
	}

	k.saddr = p->daddr;
	k.daddr = p->saddr;
	k.sport = p->dport;
	k.dport = p->sport;
	k.direction = !dir;
	e = ct_find(&k, now);
	if (e) {
		ct_touch(e, p, true, now);
		st->flags = e->flags;
		st->rev_nat_index = e->rev_nat_index;
		return st->status = CT_REPLY;
	}

	st->flags = 0;
	st->rev_nat_index = 0;
	if (p->has_inner) {
		struct ct4_key ik = p->inner;
		ik.direction = !dir;
		ik.pad = 0;
		if (ct_find(&ik, now))
			return st->status = CT_RELATED;
	}
	return st->status = CT_NEW;
}

/* ct4_peek reports whether p's flow is tracked in direction dir (as opened
 * or as a reply), with its entry's flags, without accounting the packet. */
static __always_inline bool ct4_peek(const struct pkt4 *p, __u8 dir, __u64 now, __u8 *flags)
{
	struct ct4_key k = { .saddr = p->saddr, .daddr = p->daddr,
			     .sport = p->sport, .dport = p->dport,
			     .proto = p->proto, .direction = dir };
	struct ct_entry *e = ct_find(&k, now);

	if (!e) {
		k.saddr = p->daddr;
		k.daddr = p->saddr;
		k.sport = p->dport;
		k.dport = p->sport;
		k.direction = !dir;
		e = ct_find(&k, now);
	}
	if (!e)
		return false;
	*flags = e->flags;
	return true;
}

/* ct4_related_peek reports whether the flow an ICMP error p (seen in
 * direction dir) is about is tracked, with its entry's flags, without
 * accounting the packet. */
static __always_inline bool ct4_related_peek(const struct pkt4 *p, __u8 dir, __u64 now, __u8 *flags)
{
	struct ct4_key k = p->inner;
	struct ct_entry *e;

	if (!p->has_inner)
		return false;
	k.direction = !dir;
	k.pad = 0;
	e = ct_find(&k, now);
	if (!e)
		return false;
	*flags = e->flags;
	return true;
}

/* ct4_create tracks a new flow; flags are CT_F_* beyond the TCP state, and
 * rev_nat_index names the service frontend of a translated flow (0: none). */
static __always_inline void ct4_create(const struct pkt4 *p, __u8 dir, __u64 now,
				       __u32 cookie, __u32 src_id, __u32 dst_id,
				       __u8 flags, __u16 rev_nat_index)
{
	struct ct4_key k = { .saddr = p->saddr, .daddr = p->daddr,
			     .sport = p->sport, .dport = p->dport,
			     .proto = p->proto, .direction = dir };
	struct ct_entry e = {
		.packets = 1,
		.bytes = p->len,
		.cookie = cookie,
		.src_identity = src_id,
		.dst_identity = dst_id,
		.tcp_flags = p->tcp_flags,
		.flags = flags,
		.rev_nat_index = rev_nat_index,
	};

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		e.flags |= CT_F_CLOSING;
	e.expires = now + ct_lifetime(p->proto, e.flags);
	bpf_map_update_elem(&sigil_ct4, &k, &e, BPF_ANY);
}

#endif /* SIGIL_CONNTRACK_H */

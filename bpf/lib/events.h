/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow events, shared by every program through the pinned ring buffer. Drops are always reported; allowed
 * flows are reported once, when their conntrack entry is created, and only
 * up to sigil_config.event_rate_limit per second per CPU. Events that do not
 * fit in the ring buffer are counted in sigil_evstats, never hidden. */
#ifndef SIGIL_EVENTS_H
#define SIGIL_EVENTS_H

#include "common.h"
#include "reasons.h"

enum sigil_event_type {
	EVENT_POLICY_VERDICT = 1, /* a new flow was judged and allowed */
	EVENT_DROP           = 2, /* a packet was dropped */
	EVENT_TRACE          = 3, /* reserved for datapath tracing */
};

enum sigil_verdict {
	VERDICT_FORWARDED = 1,
	VERDICT_DROPPED   = 2,
};

struct flow_event {
	__u64 timestamp;       /* bpf_ktime_get_ns() */
	__u32 ep_id;           /* the endpoint whose program judged the packet */
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	union sigil_addr saddr;
	union sigil_addr daddr;
	__be16 sport;
	__be16 dport;          /* for ICMP: type << 8 | code */
	__u8 family;
	__u8 proto;
	__u8 direction;        /* enum sigil_direction */
	__u8 type;             /* enum sigil_event_type */
	__u8 verdict;          /* enum sigil_verdict */
	__u8 reason;           /* enum sigil_reason */
	__u8 tcp_flags;
	__u8 pad;
	__u32 cookie;          /* the policy entry that decided, 0 for none */
	__u32 pkt_len;
};

/* sigil_evstats indexes */
enum sigil_evstat {
	EVSTAT_LOST         = 0, /* ring buffer full: event not delivered */
	EVSTAT_RATE_LIMITED = 1, /* allowed-flow event suppressed by the rate limit */
	EVSTAT_MAX          = 2,
};

struct event_rate {
	__u64 window_start;
	__u32 count;
	__u32 pad;
};

#ifndef SIGIL_EVENTS_BYTES
#define SIGIL_EVENTS_BYTES (1 << 22)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SIGIL_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EVSTAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_evstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_rate);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_evrate SEC(".maps");

static __always_inline void evstat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sigil_evstats, &idx);
	if (v)
		*v += 1;
}

/* rate_allow reports whether one more allowed-flow event fits in this CPU's
 * budget for the current one-second window. */
static __always_inline bool rate_allow(__u32 limit)
{
	__u32 zero = 0;
	struct event_rate *r;
	__u64 now;

	if (!limit)
		return true;
	r = bpf_map_lookup_elem(&sigil_evrate, &zero);
	if (!r)
		return false;
	now = bpf_ktime_get_coarse_ns();
	if (now - r->window_start >= 1000000000ULL) {
		r->window_start = now;
		r->count = 0;
	}
	if (r->count >= limit)
		return false;
	r->count++;
	return true;
}

#endif /* SIGIL_EVENTS_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The XDP prefilter's deny list. The list lives in an LPM trie that is the
 * only slot of an array-of-maps: user space fills a new trie and swaps it in
 * with one map update, so the datapath sees the old list or the new one,
 * never half of either. Counters are keyed by a rule ID that user space keeps
 * stable per prefix, so they survive swaps. IPv6 adds sigil_pf6 beside. */
#ifndef SIGIL_PREFILTER_H
#define SIGIL_PREFILTER_H

#include "common.h"

struct pf4_key {
	__u32 prefixlen;
	__be32 addr;
};

#define PF_F_PASS (1U << 0) /* an `except` carved out of a denied prefix */

struct pf_entry {
	__u32 rule_id;
	__u32 flags; /* PF_F_* */
};

struct pf_stats {
	__u64 packets;
	__u64 bytes;
	__u64 last_event; /* bpf_ktime_get_ns() of this CPU's last event for the rule */
};

#ifndef SIGIL_PREFILTER_MAX
#define SIGIL_PREFILTER_MAX 131072
#endif

SIGIL_EXPORT_TYPE(struct pf4_key, pf4_key);
SIGIL_EXPORT_TYPE(struct pf_entry, pf_entry);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__type(key, struct pf4_key);
		__type(value, struct pf_entry);
		__uint(max_entries, SIGIL_PREFILTER_MAX);
		__uint(map_flags, BPF_F_NO_PREALLOC);
	});
} sigil_pf4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); /* rule ID */
	__type(value, struct pf_stats);
	__uint(max_entries, SIGIL_PREFILTER_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_pf_stats SEC(".maps");

#endif /* SIGIL_PREFILTER_H */

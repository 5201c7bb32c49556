/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU packet and byte counters by verdict reason and direction. */
#ifndef SIGIL_METRICS_H
#define SIGIL_METRICS_H

#include "common.h"
#include "reasons.h"

/* --- metrics: per-CPU counters by reason and direction ---------------- */

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* Index = reason << 1 | direction. */
#define METRICS_MAX 256

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_metrics SEC(".maps");

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 idx = ((__u32)reason << 1) | (dir & 1);
	struct metrics_value *m = bpf_map_lookup_elem(&sigil_metrics, &idx);
	if (m) {
		m->packets += 1;
		m->bytes += len;
	}
}

#endif /* SIGIL_METRICS_H */

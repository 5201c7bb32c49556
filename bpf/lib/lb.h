/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load-balancing maps (IPv4). A service is a frontend (virtual IP,
 * port, protocol) with backend slots: slot 0 holds the count and the
 * service's reverse-NAT index, slots 1..count name backends. Backends live in
 * their own map so a backend shared by several services is written once, and
 * a service update replaces slots without touching backends that remain. */
#ifndef SIGIL_LB_H
#define SIGIL_LB_H

#include "common.h"

struct lb4_key {
	__be32 address;  /* the virtual IP */
	__be16 dport;    /* the service port */
	__u16 slot;      /* 0: the service itself; 1..count: a backend */
	__u8 proto;
	__u8 pad[3];
};

#define LB_F_AFFINITY (1U << 0) /* sessionAffinity: ClientIP */

struct lb4_service {
	__u32 backend_id;      /* slots 1..count */
	__u16 count;           /* slot 0: ready backends; 0 = reject */
	__u16 rev_nat_index;   /* slot 0: names the frontend for reverse NAT */
	__u32 affinity_timeout;/* slot 0: seconds */
	__u8 flags;            /* slot 0: LB_F_* */
	__u8 pad[3];
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* Sockets whose peer was translated, for recvmsg/getpeername: what the
 * application asked for. */
struct lb4_sock_key {
	__u64 cookie;    /* bpf_get_socket_cookie() */
	__be32 address;  /* the backend */
	__be16 port;
	__u16 pad;
};

struct lb_affinity_key {
	__u64 client;    /* the client's network namespace cookie */
	__u16 rev_nat_index;
	__u16 pad[3];
};

struct lb_affinity_value {
	__u64 last_used; /* coarse ns */
	__u32 backend_id;
	__u32 pad;
};

#ifndef SIGIL_LB_SERVICES_MAX
#define SIGIL_LB_SERVICES_MAX 65536
#endif
#ifndef SIGIL_LB_BACKENDS_MAX
#define SIGIL_LB_BACKENDS_MAX 65536
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, SIGIL_LB_SERVICES_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_lb4_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, SIGIL_LB_BACKENDS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_lb4_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, SIGIL_LB_SERVICES_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_lb4_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sock_key);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_lb4_sknat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_lb_aff SEC(".maps");

#define LB_NSEC_PER_SEC 1000000000ULL

/* Affinity clients: the socket programs key affinity by the client's network
 * namespace cookie; the tc path, which sees packets, by the client's IPv4
 * address with this bit set, so the two never collide. */
#define LB_AFFINITY_CLIENT_IP4 (1ULL << 63)

/* lb4_select picks a backend of svc (slot 0 of key's frontend, count > 0)
 * for client: the affinity entry's backend while it is fresh and still
 * exists, else a random slot (recorded for affinity when the service has
 * it). key->slot is overwritten. Shared by bpf_sock.c (connect/sendmsg) and
 * bpf_lxc.c (per-packet translation), so both balance alike. */
static __always_inline const struct lb4_backend *
lb4_select(const struct lb4_service *svc, struct lb4_key *key, __u64 client, __u32 *backend_id)
{
	const struct lb4_backend *be;
	const struct lb4_service *slot;
	struct lb_affinity_key ak = {};
	struct lb_affinity_value *av = NULL;
	__u64 now = bpf_ktime_get_coarse_ns();

	if (svc->flags & LB_F_AFFINITY) {
		ak.client = client;
		ak.rev_nat_index = svc->rev_nat_index;
		av = bpf_map_lookup_elem(&sigil_lb_aff, &ak);
		if (av && now - av->last_used <= (__u64)svc->affinity_timeout * LB_NSEC_PER_SEC) {
			be = bpf_map_lookup_elem(&sigil_lb4_be, &av->backend_id);
			if (be) {
				/* Only while the backend still serves this service. */
				*backend_id = av->backend_id;
				av->last_used = now;
				return be;
			}
		}
	}
	if (!svc->count)
		return NULL;
	key->slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&sigil_lb4_svc, key);
	if (!slot)
		return NULL;
	*backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&sigil_lb4_be, backend_id);
	if (be && (svc->flags & LB_F_AFFINITY)) {
		struct lb_affinity_value nv = { .last_used = now, .backend_id = *backend_id };
		bpf_map_update_elem(&sigil_lb_aff, &ak, &nv, BPF_ANY);
	}
	return be;
}

#endif /* SIGIL_LB_H */

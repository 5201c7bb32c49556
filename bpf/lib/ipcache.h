/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Identity resolution. Every peer address resolves through the ipcache's
 * longest-prefix match; an address it does not know is "world". */
#ifndef SIGIL_IPCACHE_H
#define SIGIL_IPCACHE_H

#include "maps.h"

static __always_inline const struct ipcache_entry *ipcache_lookup4(__be32 addr)
{
	struct ipcache_key k = {
		.prefixlen = IPCACHE_STATIC_PREFIX + 32,
		.family = SIGIL_AF_INET,
		.addr.ip4 = addr,
	};
	return bpf_map_lookup_elem(&sigil_ipcache, &k);
}

/* tunnel_endpoint4 returns the underlay address of the node behind addr, or
 * 0 when addr is not behind the tunnel: the ipcache's entry if it names one,
 * else the tunnel map (remote pod CIDRs, node addresses). */
static __always_inline __be32 tunnel_endpoint4(const struct ipcache_entry *ipc, __be32 addr)
{
	struct ipcache_key k = {
		.prefixlen = IPCACHE_STATIC_PREFIX + 32,
		.family = SIGIL_AF_INET,
		.addr.ip4 = addr,
	};
	const struct tunnel_entry *t;

	if (ipc && ipc->tunnel_family == SIGIL_AF_INET)
		return ipc->tunnel_endpoint.ip4;
	t = bpf_map_lookup_elem(&sigil_tunnel, &k);
	return t && t->family == SIGIL_AF_INET ? t->endpoint.ip4 : 0;
}

static __always_inline __u32 identity_of4(__be32 addr)
{
	const struct ipcache_entry *e = ipcache_lookup4(addr);
	return e ? e->identity : IDENTITY_WORLD;
}

/* remote_pod4 reports whether addr is a pod on another node as the ipcache
 * knows it: a cluster identity (not reserved, not a node-local CIDR
 * identity) that is no local endpoint. */
static __always_inline bool remote_pod4(__be32 addr)
{
	const struct ipcache_entry *e = ipcache_lookup4(addr);

	return e && e->identity >= SIGIL_IDENTITY_CLUSTER_MIN &&
	       !(e->identity & SIGIL_IDENTITY_LOCAL_FLAG) && !(e->flags & IPC_F_LOCAL_ENDPOINT);
}

static __always_inline const struct endpoint_info *endpoint_lookup4(__be32 addr)
{
	struct endpoint_key k = { .addr.ip4 = addr, .family = SIGIL_AF_INET };
	return bpf_map_lookup_elem(&sigil_endpoints, &k);
}

#endif /* SIGIL_IPCACHE_H */

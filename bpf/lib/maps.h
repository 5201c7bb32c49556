/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts and definitions. Every map is pinned by name under the
 * agent's bpffs directory so the datapath survives an agent restart.
 * Addresses are 16-byte unions with a family field so IPv6 adds without a
 * layout break; IPv4-only maps (conntrack, fragments) carry a "4" suffix and
 * get IPv6 siblings. */
#ifndef SIGIL_MAPS_H
#define SIGIL_MAPS_H

#include "common.h"
#include "reasons.h"

/* --- endpoints: pod IP -> local endpoint ------------------------------ */

struct endpoint_key {
	union sigil_addr addr;
	__u8 family;
	__u8 pad[3];
};

#define EP_F_ENFORCE_INGRESS (1U << 0) /* a policy selects the endpoint for ingress */
#define EP_F_ENFORCE_EGRESS  (1U << 1) /* a policy selects the endpoint for egress */

struct endpoint_info {
	__u32 ep_id;
	__u32 ifindex;   /* host-side veth */
	__u32 identity;
	__u32 flags;     /* EP_F_* */
	__u8 mac[6];     /* the pod's eth0 */
	__u8 node_mac[6];/* the host-side veth */
	__u32 pad;
};

#ifndef SIGIL_ENDPOINTS_MAX
#define SIGIL_ENDPOINTS_MAX 4096
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, SIGIL_ENDPOINTS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_endpoints SEC(".maps");

/* --- ipcache: IP prefix -> identity ----------------------------------- */

/* The first 32 bits of data (family + pad) are always part of the prefix:
 * prefixlen = 32 + IP prefix length. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	union sigil_addr addr;
};
#define IPCACHE_STATIC_PREFIX 32

#define IPC_F_LOCAL_ENDPOINT (1U << 0)

struct ipcache_entry {
	__u32 identity;
	__u8 tunnel_family;  /* 0 when the peer is not behind a tunnel */
	__u8 flags;          /* IPC_F_* */
	__u16 pad;
	union sigil_addr tunnel_endpoint; /* node underlay address, for the overlay */
};

#ifndef SIGIL_IPCACHE_MAX
#define SIGIL_IPCACHE_MAX 65536
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, SIGIL_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_ipcache SEC(".maps");

/* --- tunnel: remote pod CIDR or node address -> node underlay address -- */

/* Filled from the SigilNode objects: each remote node's pod CIDRs and its own
 * addresses map to its underlay address. Kept apart from the ipcache so that
 * identities (pods, CIDR rules) and tunnel routing never share a prefix. The
 * key has the ipcache key's layout. */
struct tunnel_entry {
	__u8 family;
	__u8 pad[3];
	union sigil_addr endpoint;
};

#ifndef SIGIL_TUNNEL_MAX
#define SIGIL_TUNNEL_MAX 16384
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct tunnel_entry);
	__uint(max_entries, SIGIL_TUNNEL_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_tunnel SEC(".maps");

/* --- policy: endpoint ID -> per-endpoint LPM trie --------------------- */

/* Key bits in prefix order: identity (32), direction (8) are always matched;
 * then protocol (8) unless the rule is for any protocol; then 0..16 bits of
 * the destination port (big endian, so a port range becomes a few prefixes).
 * For ICMP the "port" is type << 8 | code. Lookups are done twice, once for
 * the peer's identity and once for IDENTITY_ANY, so their cost does not grow
 * with the number of rules. */
struct policy_key {
	__u32 prefixlen;
	__u32 identity;
	__u8 direction;
	__u8 protocol;
	__be16 dport;
};
#define POLICY_STATIC_PREFIX 40 /* identity + direction */
#define POLICY_FULL_PREFIX   64

#define POLICY_F_DENY (1U << 0)

struct policy_entry {
	__u8 flags;      /* POLICY_F_* */
	__u8 pad;
	__be16 proxy_port; /* reserved for L7 redirection; 0 today */
	__u32 cookie;    /* names the policy rule for flow events; assigned by the agent */
};

#ifndef SIGIL_POLICY_ENTRIES
#define SIGIL_POLICY_ENTRIES 16384
#endif
#ifndef SIGIL_POLICY_ENDPOINTS
#define SIGIL_POLICY_ENDPOINTS 4096
#endif

/* clang emits only a forward declaration for types seen just inside the
 * inner map definition; anchoring them here gives loaders their layout. */
SIGIL_EXPORT_TYPE(struct policy_key, policy_key);
SIGIL_EXPORT_TYPE(struct policy_entry, policy_entry);

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32); /* endpoint ID */
	__uint(max_entries, SIGIL_POLICY_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__type(key, struct policy_key);
		__type(value, struct policy_entry);
		__uint(max_entries, SIGIL_POLICY_ENTRIES);
		__uint(map_flags, BPF_F_NO_PREALLOC);
	});
} sigil_policy SEC(".maps");

/* --- conntrack (IPv4) ------------------------------------------------- */

/* One entry per flow and direction, keyed by the tuple of the packet that
 * opened it. A reply matches the reversed tuple of the opposite direction. */
struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 direction;
	__u16 pad;
};

#define CT_F_SEEN_REPLY (1U << 0)
#define CT_F_CLOSING    (1U << 1)
#define CT_F_VIA_STACK  (1U << 2) /* the host stack translated the flow (kube-proxy): its replies go back
				   * through the stack, never redirected past its reverse NAT */
#define CT_F_SERVICE    (1U << 3) /* a service flow's tuple as the client sent it: nat_addr/nat_port
				   * name its backend, so later packets stick to it */
#define CT_F_FAST       (1U << 4) /* native routing (CFG_NATIVE_FAST): a flow with a remote pod whose
				   * packets skip the host stack both ways (from_netdev into the pod,
				   * from_container out of the device); a flow without it stays on the
				   * stack both ways, so the stack's own conntrack sees whole flows */

struct ct_entry {
	__u64 expires;   /* CLOCK_MONOTONIC deadline (bpf_ktime_get_coarse_ns) */
	__u64 packets;
	__u64 bytes;
	__u32 cookie;    /* the policy entry that allowed the flow */
	__u32 src_identity;
	__u32 dst_identity;
	__u8 tcp_flags;  /* union of TCP flags seen, both ways */
	__u8 flags;      /* CT_F_* */
	__u16 rev_nat_index; /* a translated service flow: its frontend in sigil_lb4_rnat, for replies */
	__be32 nat_addr; /* CT_F_SERVICE: the backend */
	__be16 nat_port;
	__u16 pad;
};

/* Lifetimes in seconds; mirrored in datapath/conntrack.go. */
#define CT_LIFETIME_TCP_SYN      60
#define CT_LIFETIME_TCP          21600
#define CT_LIFETIME_TCP_CLOSING  10
#define CT_LIFETIME_NONTCP       60
/* Refresh the deadline at most this often per flow (seconds), to avoid a
 * write per packet on the established path. */
#define CT_REFRESH_INTERVAL      1

#ifndef SIGIL_CT_MAX
#define SIGIL_CT_MAX 131072
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_entry);
	__uint(max_entries, SIGIL_CT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_ct4 SEC(".maps");

/* --- fragments (IPv4): first fragment's ports for the later ones ------ */

struct frag4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag4_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_frag4 SEC(".maps");

/* --- runtime configuration -------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct runtime_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sigil_config SEC(".maps");

static __always_inline const struct runtime_config *config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sigil_config, &zero);
}

#endif /* SIGIL_MAPS_H */

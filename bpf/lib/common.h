/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Common includes, constants and reserved identities shared by every Sigil
 * BPF program. Values that user space must agree on are mirrored in
 * the datapath package; its tests compare them against this object's BTF. */
#ifndef SIGIL_COMMON_H
#define SIGIL_COMMON_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* <linux/icmp.h> pulls in libc socket headers that do not build for BPF, so
 * the few ICMP definitions needed are here. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};
#define ICMP_ECHOREPLY      0
#define ICMP_DEST_UNREACH   3
#define ICMP_SOURCE_QUENCH  4
#define ICMP_REDIRECT       5
#define ICMP_ECHO           8
#define ICMP_TIME_EXCEEDED  11
#define ICMP_PARAMETERPROB  12

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Anchor a type so bpf2go can generate a Go mirror of it even when no map or
 * program uses it directly. */
#define SIGIL_EXPORT_TYPE(T, name) const T *__sigil_unused_##name __attribute__((unused))

/* tc verdicts. TC_ACT_UNSPEC is TCX_NEXT: later programs and legacy filters
 * still run, so Sigil cooperates with other tc users on the same device. */
#define SIGIL_PASS TC_ACT_UNSPEC
#define SIGIL_DROP TC_ACT_SHOT

/* Address families, as in the kernel (AF_INET, AF_INET6). */
#define SIGIL_AF_INET  2
#define SIGIL_AF_INET6 10

/* Reserved security identities. Cluster identities start at
 * SIGIL_IDENTITY_CLUSTER_MIN; identities of CIDR peers are node-local and
 * carry SIGIL_IDENTITY_LOCAL_FLAG. */
enum sigil_reserved_identity {
	IDENTITY_ANY         = 0, /* wildcard in policy keys; "unknown" elsewhere */
	IDENTITY_HOST        = 1,
	IDENTITY_WORLD       = 2,
	IDENTITY_UNMANAGED   = 3,
	IDENTITY_HEALTH      = 4,
	IDENTITY_INIT        = 5,
	IDENTITY_REMOTE_NODE = 6,
	IDENTITY_KUBE_APISERVER = 7,
};
#define SIGIL_IDENTITY_CLUSTER_MIN 256
#define SIGIL_IDENTITY_LOCAL_FLAG  (1U << 24)

/* Traffic direction, from the endpoint's point of view. */
enum sigil_direction {
	DIR_INGRESS = 0, /* into the endpoint: to-container */
	DIR_EGRESS  = 1, /* out of the endpoint: from-container */
};

/* Global policy enforcement mode (sigil_config.enforcement_mode). */
enum sigil_enforcement {
	ENFORCE_DEFAULT = 0, /* enforce a direction only if a policy selects the endpoint there */
	ENFORCE_ALWAYS  = 1, /* every endpoint is default-deny in both directions */
	ENFORCE_NEVER   = 2, /* policy is not enforced at all */
};

/* sigil_config.flags */
#define CFG_ALLOW_HOST_INGRESS (1U << 0) /* the node (identity host) may always reach its pods */
#define CFG_TRACE_NEW_FLOWS    (1U << 1) /* emit a policy-verdict event for each allowed new flow */
#define CFG_TUNNEL             (1U << 2) /* routing mode tunnel: remote pods are reached through the VXLAN device */
#define CFG_SVC_DEFER          (1U << 3) /* the host stack (kube-proxy) translates services: egress to the
					    * service CIDRs is judged after its DNAT, see SIGIL_MARK_DEFER */
#define CFG_LB_TC              (1U << 4) /* Sigil load-balances: from_container translates what the
					    * socket programs did not (lib/lb.h, sigil_lb4_svc) */
#define CFG_NATIVE_FAST        (1U << 5) /* native routing, from_netdev attached: flows between local and
					    * remote pods skip the host stack both ways (CT_F_FAST) */

/* skb->mark bits Sigil owns. from_container sets SIGIL_MARK_DEFER on a pod's
 * packet to a service CIDR (CFG_SVC_DEFER) instead of judging its egress;
 * the hooks after the host stack's DNAT (to_container, to_overlay, to_netdev)
 * judge the source endpoint's egress on the translated packet and clear the
 * bits. SIGIL_MARK_DEFER_ENFORCED says the source's egress was enforced when
 * the packet left it, so a packet whose source the stack rewrote (SNAT) is
 * dropped rather than passed unjudged. Chosen clear of kube-proxy's 0x4000
 * (masquerade) and 0x8000 (drop), and of Cilium's 0x0f00 magic. */
#define SIGIL_MARK_DEFER          0x00200000U
#define SIGIL_MARK_DEFER_ENFORCED 0x00400000U
#define SIGIL_MARK_DEFER_MASK     (SIGIL_MARK_DEFER | SIGIL_MARK_DEFER_ENFORCED)

/* Service CIDRs (CFG_SVC_DEFER): up to this many IPv4 prefixes. */
#define SIGIL_SVC_CIDRS 4

/* An address of either family; IPv4 uses the first four bytes. */
union sigil_addr {
	__be32 ip4;
	__u32 ip6[4];
};

/* Runtime configuration, the one entry of the sigil_config map. */
struct runtime_config {
	__u32 enforcement_mode;
	__u32 flags;
	__u32 event_rate_limit; /* allowed-flow events per second per CPU; 0 = unlimited */
	__u32 tunnel_ifindex;   /* the node's VXLAN device, in tunnel mode */
	__be32 svc_net4[SIGIL_SVC_CIDRS];  /* service CIDRs (CFG_SVC_DEFER): network */
	__be32 svc_mask4[SIGIL_SVC_CIDRS]; /* and mask; an all-zero mask is an unused slot */
};

#endif /* SIGIL_COMMON_H */

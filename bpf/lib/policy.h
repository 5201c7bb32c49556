/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy verdicts. Semantics (docs/datapath.md has the full statement):
 *  - mode never: allow; mode always: enforce both directions of every
 *    endpoint; mode default: enforce a direction only when the endpoint's
 *    EP_F_ENFORCE_* flag says a policy selects it there.
 *  - unenforced direction: allow. Enforced: deny unless an entry allows.
 *  - two longest-prefix lookups, the peer's identity and IDENTITY_ANY; a deny
 *    from either wins over any allow. Within one identity the compiler never
 *    installs an allow that a broader deny covers, so longest-prefix is exact.
 *  - an enforced endpoint without a policy map is denied (fail closed). */
#ifndef SIGIL_POLICY_H
#define SIGIL_POLICY_H

#include "maps.h"

static __always_inline bool policy_enforced(const struct runtime_config *cfg,
					    const struct endpoint_info *ep, __u8 dir)
{
	__u32 mode = cfg ? cfg->enforcement_mode : ENFORCE_DEFAULT;

	if (mode == ENFORCE_NEVER)
		return false;
	if (mode == ENFORCE_ALWAYS)
		return true;
	return ep->flags & (dir == DIR_INGRESS ? EP_F_ENFORCE_INGRESS : EP_F_ENFORCE_EGRESS);
}

/* policy_check returns REASON_FORWARDED or a drop reason, and the cookie of
 * the entry that decided (0 when none did). */
static __always_inline __u8 policy_check(const struct runtime_config *cfg,
					 const struct endpoint_info *ep, __u8 dir,
					 __u32 peer, __u8 proto, __be16 port, __u32 *cookie)
{
	struct policy_key k = {
		.prefixlen = POLICY_FULL_PREFIX,
		.identity = peer,
		.direction = dir,
		.protocol = proto,
		.dport = port,
	};
	struct policy_entry *exact, *any;
	void *inner;

	*cookie = 0;
	if (!policy_enforced(cfg, ep, dir))
		return REASON_FORWARDED;
	if (dir == DIR_INGRESS && peer == IDENTITY_HOST && cfg &&
	    (cfg->flags & CFG_ALLOW_HOST_INGRESS))
		return REASON_FORWARDED;

	inner = bpf_map_lookup_elem(&sigil_policy, &ep->ep_id);
	if (!inner)
		return DROP_NO_POLICY_MAP;

	exact = bpf_map_lookup_elem(inner, &k);
	k.identity = IDENTITY_ANY;
	any = bpf_map_lookup_elem(inner, &k);

	if (exact && (exact->flags & POLICY_F_DENY)) {
		*cookie = exact->cookie;
		return DROP_POLICY_DENY;
	}
	if (any && (any->flags & POLICY_F_DENY)) {
		*cookie = any->cookie;
		return DROP_POLICY_DENY;
	}
	if (exact) {
		*cookie = exact->cookie;
		return REASON_FORWARDED;
	}
	if (any) {
		*cookie = any->cookie;
		return REASON_FORWARDED;
	}
	return DROP_POLICY_DEFAULT;
}

#endif /* SIGIL_POLICY_H */

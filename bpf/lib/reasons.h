/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdict reasons. REASON_FORWARDED is 0; every other value names why a
 * packet was dropped. Mirrored in datapath/reasons.go, checked by a test
 * against this enum in the object's BTF. Append only: numbers are ABI
 * (metrics keys, flow events, pinned maps). */
#ifndef SIGIL_REASONS_H
#define SIGIL_REASONS_H

enum sigil_reason {
	REASON_FORWARDED          = 0,
	DROP_POLICY_DENY          = 1,  /* an explicit deny rule matched */
	DROP_POLICY_DEFAULT       = 2,  /* enforced, and no allow rule matched */
	DROP_NO_POLICY_MAP        = 3,  /* enforced, but no policy is installed for the endpoint (fail closed) */
	DROP_MALFORMED            = 4,  /* truncated or inconsistent headers */
	DROP_UNSUPPORTED_L3       = 5,  /* an L3 protocol Sigil cannot judge yet, in an enforced direction */
	DROP_FRAG_UNKNOWN         = 6,  /* a non-first fragment whose first fragment was not seen */
	DROP_INVALID_SOURCE       = 7,  /* source address not owned by the endpoint on this interface */
	DROP_UNKNOWN_ENDPOINT     = 8,  /* destination is not an endpoint on this interface */
	DROP_PREFILTER            = 9,  /* the XDP prefilter's deny list matched */
	DROP_NO_SERVICE_BACKEND   = 10, /* a service frontend without ready backends */
	DROP_NAT_FAILED           = 11, /* a service translation could not rewrite the packet */
	REASON_MAX                = 12,
};

#endif /* SIGIL_REASONS_H */

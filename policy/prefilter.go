package policy

import (
	"fmt"
	"math/bits"
	"net/netip"
	"sort"

	"github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
)

// Which rules feed the XDP prefilter (docs/policy.md, "Prefilter"):
//
// a SigilClusterwideNetworkPolicy whose endpointSelector is empty (it selects
// every endpoint), and in it an ingressDeny rule with no toPorts and no icmps
// (it denies all traffic): each of that rule's CIDR peers (cidr with its
// except) is denied at the node's interfaces, before the stack, for the pods
// and for the node itself. Peers of other kinds in the same rule, and every
// other rule, are enforced by the per-endpoint tc programs only. IPv6 CIDRs
// wait for the IPv6 deny list.

// PrefilterQualifies reports whether an ingressDeny rule of a clusterwide
// policy with this endpoint selector feeds the prefilter.
func PrefilterQualifies(sel *v1alpha1.PolicySpec, rule v1alpha1.IngressRule) bool {
	return len(sel.EndpointSelector.MatchLabels) == 0 && len(sel.EndpointSelector.MatchExpressions) == 0 &&
		len(rule.ToPorts) == 0 && len(rule.ICMPs) == 0
}

type span struct{ lo, hi uint32 }

// PrefilterRules returns the prefilter's deny list for the given clusterwide
// policies plus a static list of prefixes: the exact set of IPv4 addresses
// that some qualifying rule denies (each rule's CIDRs minus that rule's
// excepts), as the fewest prefixes. Excepts of one rule never open what
// another rule denies.
func PrefilterRules(policies []*v1alpha1.SigilClusterwideNetworkPolicy, static []netip.Prefix) ([]datapath.PrefilterRule, error) {
	var denied []span
	for _, p := range static {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("prefilter: static entry %v is not an IPv4 prefix", p)
		}
		denied = append(denied, spanOf(p))
	}
	for _, pol := range policies {
		for _, rule := range pol.Spec.IngressDeny {
			if !PrefilterQualifies(&pol.Spec, rule) {
				continue
			}
			for _, peer := range rule.From {
				if peer.CIDR == "" || peer.Endpoints != nil || peer.NamespaceSelector != nil || peer.Entity != "" {
					continue
				}
				base, err := netip.ParsePrefix(peer.CIDR)
				if err != nil {
					return nil, fmt.Errorf("policy %s: cidr %q: %w", pol.Name, peer.CIDR, err)
				}
				if !base.Addr().Is4() {
					continue
				}
				parts := []span{spanOf(base.Masked())}
				for _, ex := range peer.Except {
					e, err := netip.ParsePrefix(ex)
					if err != nil {
						return nil, fmt.Errorf("policy %s: except %q: %w", pol.Name, ex, err)
					}
					if e.Addr().Is4() {
						parts = subtractSpan(parts, spanOf(e.Masked()))
					}
				}
				denied = append(denied, parts...)
			}
		}
	}
	var out []datapath.PrefilterRule
	for _, s := range mergeSpans(denied) {
		for _, p := range spanPrefixes(s) {
			out = append(out, datapath.PrefilterRule{Prefix: p})
		}
	}
	return out, nil
}

func spanOf(p netip.Prefix) span {
	a := p.Addr().As4()
	lo := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	size := uint64(1) << (32 - p.Bits())
	return span{lo, uint32(uint64(lo) + size - 1)}
}

// subtractSpan removes x from every span.
func subtractSpan(spans []span, x span) []span {
	var out []span
	for _, s := range spans {
		if x.hi < s.lo || x.lo > s.hi {
			out = append(out, s)
			continue
		}
		if x.lo > s.lo {
			out = append(out, span{s.lo, x.lo - 1})
		}
		if x.hi < s.hi {
			out = append(out, span{x.hi + 1, s.hi})
		}
	}
	return out
}

// mergeSpans sorts spans and joins overlapping or adjacent ones.
func mergeSpans(spans []span) []span {
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	var out []span
	for _, s := range spans {
		if n := len(out); n > 0 && uint64(s.lo) <= uint64(out[n-1].hi)+1 {
			if s.hi > out[n-1].hi {
				out[n-1].hi = s.hi
			}
			continue
		}
		out = append(out, s)
	}
	return out
}

// spanPrefixes splits a span into the fewest prefixes covering it exactly.
func spanPrefixes(s span) []netip.Prefix {
	var out []netip.Prefix
	lo, hi := uint64(s.lo), uint64(s.hi)
	for lo <= hi {
		size := uint64(1) << bits.TrailingZeros64(lo|1<<32)
		for size > hi-lo+1 {
			size >>= 1
		}
		addr := netip.AddrFrom4([4]byte{byte(lo >> 24), byte(lo >> 16), byte(lo >> 8), byte(lo)})
		out = append(out, netip.PrefixFrom(addr, 32-bits.TrailingZeros64(size)))
		lo += size
	}
	return out
}

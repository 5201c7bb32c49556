package policy

import (
	"github.com/sigil-net/sigil/datapath"
)

// compiledRule is a Rule bound to its cookie and cached selectors.
type compiledRule struct {
	Rule
	cookie      uint32
	all         bool // a PeerAll peer: entries for IdentityAny
	sels        []*cachedSelector
	namedEgress bool
}

// selects reports whether the rule's peers include identity id.
func (r *compiledRule) selects(id datapath.Identity) bool {
	if id == datapath.IdentityAny {
		return r.all
	}
	for _, cs := range r.sels {
		if cs.has(id) {
			return true
		}
	}
	return false
}

type slice = map[datapath.PolicyKey]datapath.PolicyEntry

// buildSlice computes the entries of one peer identity on one endpoint from
// the rules whose peers include it: merged (deny beats allow, then the
// lowest cookie), with every allow that a broader-or-equal deny of the same
// identity covers dropped, so the LPM lookup is exact.
func (e *Engine) buildSlice(ep *endpointState, id datapath.Identity, rules []*compiledRule) slice {
	m := slice{}
	for _, r := range rules {
		entry := datapath.PolicyEntry{Deny: r.Deny, Cookie: r.cookie}
		e.ruleKeys(ep, id, r, func(k datapath.PolicyKey) { merge(m, k, entry) })
	}
	dropShadowedAllows(m)
	return m
}

func merge(m slice, k datapath.PolicyKey, v datapath.PolicyEntry) {
	old, ok := m[k]
	switch {
	case !ok, v.Deny && !old.Deny:
		m[k] = v
	case v.Deny == old.Deny && v.Cookie < old.Cookie:
		m[k] = v
	}
}

// dropShadowedAllows removes allows covered by a deny of the same slice.
func dropShadowedAllows(m slice) {
	var denies []datapath.PolicyKey
	for k, v := range m {
		if v.Deny {
			denies = append(denies, k)
		}
	}
	if len(denies) == 0 {
		return
	}
	for k, v := range m {
		if v.Deny {
			continue
		}
		for _, d := range denies {
			if keyCovers(d, k) {
				delete(m, k)
				break
			}
		}
	}
}

// keyCovers reports whether every flow key b matches also matches a (same
// identity and direction assumed).
func keyCovers(a, b datapath.PolicyKey) bool {
	if a.Direction != b.Direction || a.Identity != b.Identity {
		return false
	}
	if a.Protocol == datapath.ProtoAny {
		return true
	}
	if a.Protocol != b.Protocol || a.PortPrefixLen > b.PortPrefixLen {
		return false
	}
	return b.Port&portMask(a.PortPrefixLen) == a.Port
}

func portMask(plen uint8) uint16 {
	if plen == 0 {
		return 0
	}
	return ^uint16(0) << (16 - plen)
}

// ruleKeys calls emit with every key rule r needs for peer identity id.
func (e *Engine) ruleKeys(ep *endpointState, id datapath.Identity, r *compiledRule, emit func(datapath.PolicyKey)) {
	base := datapath.PolicyKey{Identity: id, Direction: r.Direction}
	if len(r.Ports) == 0 {
		emit(base)
		return
	}
	for _, p := range r.Ports {
		switch {
		case p.Name != "":
			for _, np := range e.namedPorts(ep, id, r.Direction) {
				if np.Name == p.Name && (p.Proto == datapath.ProtoAny || p.Proto == np.Proto) {
					k := base
					k.Protocol, k.Port, k.PortPrefixLen = np.Proto, np.Port, 16
					emit(k)
				}
			}
		case p.Proto == datapath.ProtoAny:
			emit(base)
		default:
			for _, pp := range datapath.PortRangePrefixes(p.Lo, p.Hi) {
				k := base
				k.Protocol, k.Port, k.PortPrefixLen = p.Proto, pp.Port, pp.PrefixLen
				emit(k)
			}
		}
	}
}

// namedPorts resolves names against the destination pod: the endpoint
// itself for ingress, the pods of the peer identity for egress.
func (e *Engine) namedPorts(ep *endpointState, id datapath.Identity, dir datapath.Direction) []NamedPort {
	if dir == datapath.Ingress {
		return ep.ep.NamedPorts
	}
	var out []NamedPort
	for peer := range e.byIdentity[id] {
		out = append(out, peer.ep.NamedPorts...)
	}
	return out
}

// rulesFor lists the rules of ep's policies whose peers include id.
func rulesFor(ep *endpointState, id datapath.Identity) []*compiledRule {
	var out []*compiledRule
	for ps := range ep.policies {
		for i := range ps.rules {
			if ps.rules[i].selects(id) {
				out = append(out, &ps.rules[i])
			}
		}
	}
	return out
}

// compileFull recomputes every slice and the flags of an endpoint.
func (e *Engine) compileFull(ep *endpointState) {
	perID := map[datapath.Identity][]*compiledRule{}
	ep.flags = 0
	for ps := range ep.policies {
		if ps.pol.Enforce[datapath.Ingress] {
			ep.flags |= datapath.EndpointEnforceIngress
		}
		if ps.pol.Enforce[datapath.Egress] {
			ep.flags |= datapath.EndpointEnforceEgress
		}
		for i := range ps.rules {
			r := &ps.rules[i]
			if r.all {
				perID[datapath.IdentityAny] = appendRule(perID[datapath.IdentityAny], r)
			}
			for _, cs := range r.sels {
				for id := range cs.members {
					perID[id] = appendRule(perID[id], r)
				}
			}
		}
	}
	ep.slices = make(map[datapath.Identity]slice, len(perID))
	ep.count = 0
	for id, rules := range perID {
		if s := e.buildSlice(ep, id, rules); len(s) > 0 {
			ep.slices[id] = s
			ep.count += len(s)
		}
	}
	ep.over = ep.count > e.capacity
}

func appendRule(rs []*compiledRule, r *compiledRule) []*compiledRule {
	if n := len(rs); n > 0 && rs[n-1] == r {
		return rs
	}
	return append(rs, r)
}

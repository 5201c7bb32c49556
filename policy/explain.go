package policy

import (
	"fmt"
	"sort"
	"strings"

	"github.com/sigil-net/sigil/datapath"
)

// FlowPeer is one side of a flow: an endpoint ID (0 if the side is not a
// known endpoint) and its identity.
type FlowPeer struct {
	Endpoint uint32
	Identity datapath.Identity
}

// Verdict is the decision of one endpoint in one direction.
type Verdict struct {
	Endpoint  uint32
	Direction datapath.Direction
	Enforced  bool
	Reason    datapath.Reason
	// Decided names the rule of the entry that decided (nil: none did).
	Decided *CookieInfo
	// Allowing and Denying list every rule of the endpoint's policies that
	// matches the flow.
	Allowing, Denying []CookieInfo
}

// Explanation says why a flow is allowed or denied.
type Explanation struct {
	Verdicts []Verdict // egress at the source, then ingress at the destination
	Allowed  bool
}

func (x Explanation) String() string {
	var b strings.Builder
	for _, v := range x.Verdicts {
		fmt.Fprintf(&b, "endpoint %d %s: %s", v.Endpoint, v.Direction, v.Reason)
		switch {
		case !v.Enforced:
			b.WriteString(" (no policy selects it in this direction)")
		case v.Decided != nil:
			fmt.Fprintf(&b, " by %s", v.Decided)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Explain evaluates a new flow from src to dst with the compiled entries
// and the datapath's lookup semantics, and names the deciding rules.
// Sides that are not local endpoints are not evaluated.
func (e *Engine) Explain(src, dst FlowPeer, proto uint8, port uint16) Explanation {
	e.mu.Lock()
	defer e.mu.Unlock()
	x := Explanation{Allowed: true}
	if st, ok := e.endpoints[src.Endpoint]; ok && src.Endpoint != 0 && st.local() {
		x.Verdicts = append(x.Verdicts, e.verdict(st, datapath.Egress, dst.Identity, proto, port))
	}
	if st, ok := e.endpoints[dst.Endpoint]; ok && dst.Endpoint != 0 && st.local() {
		x.Verdicts = append(x.Verdicts, e.verdict(st, datapath.Ingress, src.Identity, proto, port))
	}
	for _, v := range x.Verdicts {
		x.Allowed = x.Allowed && v.Reason == datapath.ReasonForwarded
	}
	return x
}

func (e *Engine) verdict(st *endpointState, dir datapath.Direction, peer datapath.Identity, proto uint8, port uint16) Verdict {
	flags := st.effectiveFlags()
	reason, cookie := datapath.EvaluatePolicy(datapath.RuntimeConfig{Enforcement: e.mode}, flags,
		st.effective(), dir, peer, proto, port)
	v := Verdict{Endpoint: st.ep.ID, Direction: dir, Reason: reason,
		Enforced: e.mode == datapath.EnforceAlways || e.mode == datapath.EnforceDefault && flags.Enforces(dir)}
	if info, ok := e.cookies.byID[cookie]; ok && cookie != 0 {
		v.Decided = &info
	}
	resolve := func(name string, proto uint8) []uint16 {
		var out []uint16
		for _, np := range e.namedPorts(st, peer, dir) {
			if np.Name == name && np.Proto == proto {
				out = append(out, np.Port)
			}
		}
		return out
	}
	for ps := range st.policies {
		for i := range ps.rules {
			r := &ps.rules[i]
			if r.Direction != dir || !(r.all || r.selects(peer)) || !r.matchesPorts(proto, port, resolve) {
				continue
			}
			info := e.cookies.byID[r.cookie]
			if r.Deny {
				v.Denying = append(v.Denying, info)
			} else {
				v.Allowing = append(v.Allowing, info)
			}
		}
	}
	sortInfos(v.Allowing)
	sortInfos(v.Denying)
	return v
}

func (r *compiledRule) matchesPorts(proto uint8, port uint16, resolve func(string, uint8) []uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, p := range r.Ports {
		if p.matchesPort(proto, port, resolve) {
			return true
		}
	}
	return false
}

func sortInfos(s []CookieInfo) {
	sort.Slice(s, func(i, j int) bool { return s[i].String() < s[j].String() })
}

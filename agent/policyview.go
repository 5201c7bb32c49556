package agent

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/policy"
)

// ErrPolicyEngineNotRunning is what policy routes answer while the agent
// has no policy engine.
var ErrPolicyEngineNotRunning = errors.New("policy engine not running (agent started without Kubernetes)")

// PolicyView is what the local API and the flow pipeline need from the
// policy engine. The agent's policy controller provides it (EngineView
// adapts a *policy.Engine) and hands it to Server.SetPolicyView once the
// engine runs.
type PolicyView interface {
	// Identities lists every identity the engine knows, with its labels.
	Identities() ([]apitypes.Identity, error)
	// Policies lists the policies in force on this node.
	Policies() ([]apitypes.Policy, error)
	// Selectors lists the peer selectors in use and what they select.
	Selectors() ([]apitypes.Selector, error)
	// Rule names the rule behind a policy map entry's cookie.
	Rule(cookie uint32) (apitypes.PolicyRule, bool)
	// EnforcedBy lists the policies that make local endpoint epID
	// default-deny in direction dir.
	EnforcedBy(epID uint32, dir datapath.Direction) []string
	// Explain evaluates a new flow from one peer to another (Local peers
	// are evaluated) and names the rules that decide it.
	Explain(from, to apitypes.ExplainPeer, proto uint8, port uint16) ([]apitypes.ExplainVerdict, error)
}

// PodResolver is implemented by a PolicyView that knows pods outside this
// node, so flows and explain can name them.
type PodResolver interface {
	// PodByName returns the address, identity and (for a local pod) endpoint
	// ID of a pod.
	PodByName(namespace, name string) (apitypes.ExplainPeer, bool)
	// PodByIP names the pod at ip.
	PodByIP(ip string) (namespace, name string, ok bool)
}

// EngineSources are what EngineView needs beyond the engine itself, which
// does not list its policies or identity labels.
type EngineSources struct {
	// Policies returns the policies given to the engine.
	Policies func() []*policy.Policy
	// IdentityLabels returns the labels of every identity given to the
	// engine (cluster identities; reserved ones are added by EngineView).
	IdentityLabels func() map[datapath.Identity]identity.Labels
	// EndpointIdentity returns the identity of a local endpoint.
	EndpointIdentity func(epID uint32) (datapath.Identity, bool)
}

// EngineView is the PolicyView of a *policy.Engine.
type EngineView struct {
	Engine *policy.Engine
	Src    EngineSources
}

var _ PolicyView = (*EngineView)(nil)

// RuleOf converts a policy cookie's rule to its API form.
func RuleOf(cookie uint32, info policy.CookieInfo) apitypes.PolicyRule {
	return apitypes.PolicyRule{Cookie: cookie, Kind: info.Policy.Kind, Namespace: info.Policy.Namespace,
		Name: info.Policy.Name, RuleList: info.RuleList(), Index: info.Index, Deny: info.Deny}
}

// IdentityKind names the kind of an identity.
func IdentityKind(id datapath.Identity) string {
	switch identity.KindOf(id) {
	case identity.KindReserved:
		return "reserved"
	case identity.KindCluster:
		return "cluster"
	case identity.KindLocal:
		return "local"
	}
	return "any"
}

// LabelStrings renders labels as sorted "source:key=value" strings (just
// "source:key" for empty values).
func LabelStrings(l map[string]string) []string {
	out := make([]string, 0, len(l))
	for k, v := range l {
		if v == "" {
			out = append(out, k)
		} else {
			out = append(out, k+"="+v)
		}
	}
	sort.Strings(out)
	return out
}

// Identities implements PolicyView.
func (v *EngineView) Identities() ([]apitypes.Identity, error) {
	var out []apitypes.Identity
	for _, id := range identity.Reserved() {
		out = append(out, apitypes.Identity{ID: uint32(id), Kind: "reserved", Labels: LabelStrings(identity.ReservedLabels(id))})
	}
	if v.Src.IdentityLabels != nil {
		for id, l := range v.Src.IdentityLabels() {
			out = append(out, apitypes.Identity{ID: uint32(id), Kind: IdentityKind(id), Labels: LabelStrings(l)})
		}
	}
	for pfx, id := range v.Engine.IPCache() {
		out = append(out, apitypes.Identity{ID: uint32(id), Kind: "local", Labels: LabelStrings(identity.CIDRLabels(pfx))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Policies implements PolicyView.
func (v *EngineView) Policies() ([]apitypes.Policy, error) {
	if v.Src.Policies == nil {
		return nil, errors.New("the policy controller does not list its policies")
	}
	var out []apitypes.Policy
	for _, p := range v.Src.Policies() {
		ap := apitypes.Policy{Kind: p.Ref.Kind, Namespace: p.Ref.Namespace, Name: p.Ref.Name, Selector: p.Subject.String()}
		for d, on := range p.Enforce {
			if on {
				ap.Enforces = append(ap.Enforces, datapath.Direction(d).String())
			}
		}
		for _, r := range p.Rules {
			ap.Rules = append(ap.Rules, describeRule(r))
		}
		if c, ok := v.Engine.PolicyCounts(p.Ref); ok {
			ap.SelectedEndpoints, ap.OverCapacity = c.SelectedEndpoints, c.EndpointsOverCapacity
		}
		out = append(out, ap)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.Kind+"/"+a.Namespace+"/"+a.Name < b.Kind+"/"+b.Namespace+"/"+b.Name
	})
	return out, nil
}

func describeRule(r policy.Rule) string {
	list := r.Direction.String()
	if r.Deny {
		list += "Deny"
	}
	var peers []string
	for _, p := range r.Peers {
		switch p.Kind {
		case policy.PeerAll:
			peers = append(peers, "all")
		case policy.PeerLabels:
			peers = append(peers, "{"+p.Selector.String()+"}")
		case policy.PeerCIDR:
			s := p.CIDR.String()
			for _, e := range p.Except {
				s += " except " + e.String()
			}
			peers = append(peers, s)
		case policy.PeerEntity:
			peers = append(peers, "entity:"+p.Entity)
		}
	}
	ports := []string{"any"}
	if len(r.Ports) > 0 {
		ports = ports[:0]
		for _, p := range r.Ports {
			ports = append(ports, p.String())
		}
	}
	return fmt.Sprintf("%s[%d]: peers %s; ports %s", list, r.Index, strings.Join(peers, " | "), strings.Join(ports, ","))
}

// Selectors implements PolicyView. The engine's selector cache is read
// without the engine's lock; the engine's owner must not mutate it
// concurrently for an exact answer (a concurrent change can at worst give
// a stale list).
func (v *EngineView) Selectors() ([]apitypes.Selector, error) {
	sc := v.Engine.Selectors()
	var out []apitypes.Selector
	for _, k := range sc.Selectors() {
		s := apitypes.Selector{Selector: k, Identities: []uint32{}}
		for _, id := range sc.Selections(k) {
			s.Identities = append(s.Identities, uint32(id))
		}
		out = append(out, s)
	}
	return out, nil
}

// Rule implements PolicyView.
func (v *EngineView) Rule(cookie uint32) (apitypes.PolicyRule, bool) {
	info, ok := v.Engine.Cookie(cookie)
	if !ok {
		return apitypes.PolicyRule{}, false
	}
	return RuleOf(cookie, info), true
}

// EnforcedBy implements PolicyView.
func (v *EngineView) EnforcedBy(epID uint32, dir datapath.Direction) []string {
	if v.Src.Policies == nil || v.Src.IdentityLabels == nil || v.Src.EndpointIdentity == nil {
		return nil
	}
	id, ok := v.Src.EndpointIdentity(epID)
	if !ok {
		return nil
	}
	lbls, ok := v.Src.IdentityLabels()[id]
	if !ok {
		return nil
	}
	var out []string
	for _, p := range v.Src.Policies() {
		if int(dir) < len(p.Enforce) && p.Enforce[dir] && p.Subject.Matches(lbls) {
			out = append(out, p.Ref.String())
		}
	}
	sort.Strings(out)
	return out
}

// Explain implements PolicyView.
func (v *EngineView) Explain(from, to apitypes.ExplainPeer, proto uint8, port uint16) ([]apitypes.ExplainVerdict, error) {
	src := policy.FlowPeer{Identity: datapath.Identity(from.Identity)}
	dst := policy.FlowPeer{Identity: datapath.Identity(to.Identity)}
	if from.Local {
		src.Endpoint = from.EndpointID
	}
	if to.Local {
		dst.Endpoint = to.EndpointID
	}
	x := v.Engine.Explain(src, dst, proto, port)
	var out []apitypes.ExplainVerdict
	for _, vd := range x.Verdicts {
		ev := apitypes.ExplainVerdict{EndpointID: vd.Endpoint, Direction: vd.Direction.String(), Enforced: vd.Enforced,
			Verdict: verdictOf(vd.Reason), Reason: vd.Reason.String()}
		if vd.Decided != nil {
			r := RuleOf(0, *vd.Decided)
			ev.Decided = &r
		}
		for _, c := range vd.Allowing {
			ev.Allowing = append(ev.Allowing, RuleOf(0, c))
		}
		for _, c := range vd.Denying {
			ev.Denying = append(ev.Denying, RuleOf(0, c))
		}
		if vd.Reason == datapath.DropPolicyDefault {
			ev.EnforcedBy = v.EnforcedBy(vd.Endpoint, vd.Direction)
		}
		out = append(out, ev)
	}
	return out, nil
}

func verdictOf(r datapath.Reason) string {
	if r.IsDrop() {
		return datapath.VerdictDropped.String()
	}
	return datapath.VerdictForwarded.String()
}

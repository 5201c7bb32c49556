package agent

import (
	"net/netip"
	"sort"
	"strings"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/policy"
)

// rememberPolicy records the policies given to the engine (p nil: removed),
// which the engine does not list. Called with e.mu held.
func (e *Enforcer) rememberPolicy(ref policy.PolicyRef, p *policy.Policy) {
	if e.policies == nil {
		e.policies = map[policy.PolicyRef]*policy.Policy{}
	}
	if p == nil {
		delete(e.policies, ref)
	} else {
		e.policies[ref] = p
	}
}

// PolicyView returns the enforcer's engine as the API's PolicyView, which
// also names pods of other nodes (PodResolver). Hand it to
// Server.SetPolicyView once the enforcer runs.
func (e *Enforcer) PolicyView() PolicyView {
	v := &enforcerView{e: e}
	v.EngineView = EngineView{Engine: e.engine, Src: EngineSources{
		Policies:         v.policies,
		IdentityLabels:   v.identityLabels,
		EndpointIdentity: v.endpointIdentity,
	}}
	return v
}

type enforcerView struct {
	EngineView
	e *Enforcer
}

var _ PodResolver = (*enforcerView)(nil)

func (v *enforcerView) policies() []*policy.Policy {
	v.e.mu.Lock()
	defer v.e.mu.Unlock()
	out := make([]*policy.Policy, 0, len(v.e.policies))
	for _, p := range v.e.policies {
		out = append(out, p)
	}
	return out
}

func (v *enforcerView) identityLabels() map[datapath.Identity]identity.Labels {
	v.e.mu.Lock()
	defer v.e.mu.Unlock()
	out := make(map[datapath.Identity]identity.Labels, len(v.e.identities))
	for id, l := range v.e.identities {
		out[id] = l
	}
	return out
}

func (v *enforcerView) endpointIdentity(epID uint32) (datapath.Identity, bool) {
	ep, ok := v.e.Endpoint(epID)
	return ep.Identity, ok && ep.Computed
}

// PodByName implements PodResolver: local endpoints first, then pods of
// other nodes (keyed namespace/name).
func (v *enforcerView) PodByName(namespace, name string) (apitypes.ExplainPeer, bool) {
	v.e.mu.Lock()
	defer v.e.mu.Unlock()
	for _, ep := range v.e.eps {
		if ep.PodNamespace == namespace && ep.PodName == name {
			p := apitypes.ExplainPeer{EndpointID: ep.ID, Identity: uint32(ep.Identity), Local: true}
			if len(ep.IPs) > 0 {
				p.IP = ep.IPs[0]
			}
			return p, true
		}
	}
	if r, ok := v.e.remote[namespace+"/"+name]; ok {
		p := apitypes.ExplainPeer{Identity: uint32(r.Identity)}
		if len(r.IPs) > 0 {
			p.IP = r.IPs[0]
		}
		return p, true
	}
	return apitypes.ExplainPeer{}, false
}

// PodByIP implements PodResolver.
func (v *enforcerView) PodByIP(ip string) (string, string, bool) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return "", "", false
	}
	v.e.mu.Lock()
	defer v.e.mu.Unlock()
	if ep, ok := v.e.byIP[addr]; ok {
		return ep.PodNamespace, ep.PodName, true
	}
	keys := make([]string, 0, 1)
	for k, r := range v.e.remote {
		for _, a := range r.IPs {
			if a == addr {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		return "", "", false
	}
	sort.Strings(keys)
	ns, name, _ := strings.Cut(keys[0], "/")
	return ns, name, true
}

package policy

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// FromSigilPolicy translates a SigilNetworkPolicy.
func FromSigilPolicy(p *v1alpha1.SigilNetworkPolicy) (*Policy, error) {
	ref := PolicyRef{Kind: KindSigilNetworkPolicy, Namespace: p.Namespace, Name: p.Name}
	return fromSigilSpec(ref, &p.Spec)
}

// FromSigilClusterwidePolicy translates a SigilClusterwideNetworkPolicy.
func FromSigilClusterwidePolicy(p *v1alpha1.SigilClusterwideNetworkPolicy) (*Policy, error) {
	ref := PolicyRef{Kind: KindSigilClusterwidePolicy, Name: p.Name}
	return fromSigilSpec(ref, &p.Spec)
}

// fromSigilSpec translates a Sigil policy spec. A direction is enforced
// when the policy has allow or deny rules for it (a deny-only policy still
// turns on default deny, as in Cilium). A rule without peers matches
// nothing. Entity "all" is the wildcard peer; CIDR peers do not match pods.
// Protocol ANY with a port means TCP, UDP and SCTP.
func fromSigilSpec(ref PolicyRef, spec *v1alpha1.PolicySpec) (*Policy, error) {
	if errs := spec.Validate(); len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	subject, err := FromLabelSelector(&spec.EndpointSelector, LabelKey)
	if err != nil {
		return nil, fmt.Errorf("spec.endpointSelector: %w", err)
	}
	if ref.Namespace != "" {
		subject = subject.And(InNamespace(ref.Namespace))
	}
	p := &Policy{Ref: ref, Subject: subject}
	p.Enforce[datapath.Ingress] = len(spec.Ingress)+len(spec.IngressDeny) > 0
	p.Enforce[datapath.Egress] = len(spec.Egress)+len(spec.EgressDeny) > 0
	lists := []struct {
		field string
		dir   datapath.Direction
		deny  bool
		n     int
		get   func(int) ([]v1alpha1.Peer, []v1alpha1.PortRule, []v1alpha1.ICMPRule)
	}{
		{"ingress", datapath.Ingress, false, len(spec.Ingress), func(i int) ([]v1alpha1.Peer, []v1alpha1.PortRule, []v1alpha1.ICMPRule) {
			return spec.Ingress[i].From, spec.Ingress[i].ToPorts, spec.Ingress[i].ICMPs
		}},
		{"ingressDeny", datapath.Ingress, true, len(spec.IngressDeny), func(i int) ([]v1alpha1.Peer, []v1alpha1.PortRule, []v1alpha1.ICMPRule) {
			return spec.IngressDeny[i].From, spec.IngressDeny[i].ToPorts, spec.IngressDeny[i].ICMPs
		}},
		{"egress", datapath.Egress, false, len(spec.Egress), func(i int) ([]v1alpha1.Peer, []v1alpha1.PortRule, []v1alpha1.ICMPRule) {
			return spec.Egress[i].To, spec.Egress[i].ToPorts, spec.Egress[i].ICMPs
		}},
		{"egressDeny", datapath.Egress, true, len(spec.EgressDeny), func(i int) ([]v1alpha1.Peer, []v1alpha1.PortRule, []v1alpha1.ICMPRule) {
			return spec.EgressDeny[i].To, spec.EgressDeny[i].ToPorts, spec.EgressDeny[i].ICMPs
		}},
	}
	for _, l := range lists {
		for i := 0; i < l.n; i++ {
			peers, ports, icmps := l.get(i)
			rules, err := sigilRule(ref.Namespace, Rule{Direction: l.dir, Deny: l.deny, Index: i}, peers, ports, icmps)
			if err != nil {
				return nil, fmt.Errorf("spec.%s[%d]: %w", l.field, i, err)
			}
			p.Rules = append(p.Rules, rules...)
		}
	}
	return p, nil
}

func sigilRule(ns string, r Rule, peers []v1alpha1.Peer, ports []v1alpha1.PortRule, icmps []v1alpha1.ICMPRule) ([]Rule, error) {
	if len(peers) == 0 {
		return nil, nil
	}
	for i := range peers {
		peer, err := sigilPeer(ns, &peers[i])
		if err != nil {
			return nil, fmt.Errorf("peer %d: %w", i, err)
		}
		r.Peers = append(r.Peers, peer)
	}
	for i, pr := range ports {
		specs, err := sigilPort(pr)
		if err != nil {
			return nil, fmt.Errorf("toPorts[%d]: %w", i, err)
		}
		r.Ports = append(r.Ports, specs...)
	}
	for _, ic := range icmps {
		lo, hi := uint16(ic.Type)<<8, uint16(ic.Type)<<8|0xff
		if ic.Code != nil {
			lo, hi = lo|uint16(*ic.Code), lo|uint16(*ic.Code)
		}
		r.Ports = append(r.Ports, PortSpec{Proto: datapath.ProtoICMP, Lo: lo, Hi: hi})
	}
	return splitNamedEgress(r), nil
}

func sigilPeer(ns string, p *v1alpha1.Peer) (Peer, error) {
	switch {
	case p.CIDR != "":
		return cidrPeer(p.CIDR, p.Except, false)
	case p.Entity == v1alpha1.EntityAll:
		return Peer{Kind: PeerAll}, nil
	case p.Entity != "":
		return Peer{Kind: PeerEntity, Entity: string(p.Entity)}, nil
	}
	return endpointsPeer(ns, p.Endpoints, p.NamespaceSelector)
}

// endpointsPeer: in a namespaced policy, pods of the policy's namespace
// unless a namespace selector is given or the selector names the
// namespace label itself.
func endpointsPeer(ns string, eps, nsSel *metav1.LabelSelector) (Peer, error) {
	sel, err := FromLabelSelector(eps, LabelKey)
	if err != nil {
		return Peer{}, fmt.Errorf("endpoints: %w", err)
	}
	if nsSel != nil {
		nss, err := FromLabelSelector(nsSel, NamespaceLabelKey)
		if err != nil {
			return Peer{}, fmt.Errorf("namespaceSelector: %w", err)
		}
		sel = sel.And(nss)
	} else if ns != "" && !sel.HasKey(identity.K8sKey(identity.LabelNamespace)) {
		sel = sel.And(InNamespace(ns))
	}
	return Peer{Kind: PeerLabels, Selector: sel}, nil
}

func sigilPort(pr v1alpha1.PortRule) ([]PortSpec, error) {
	var protos []uint8
	switch pr.Protocol {
	case v1alpha1.ProtocolTCP:
		protos = []uint8{datapath.ProtoTCP}
	case v1alpha1.ProtocolUDP:
		protos = []uint8{datapath.ProtoUDP}
	case v1alpha1.ProtocolSCTP:
		protos = []uint8{datapath.ProtoSCTP}
	case "", v1alpha1.ProtocolANY:
		protos = []uint8{datapath.ProtoTCP, datapath.ProtoUDP, datapath.ProtoSCTP}
		if pr.Port == nil {
			return []PortSpec{{Proto: datapath.ProtoAny}}, nil
		}
	default:
		return nil, fmt.Errorf("unknown protocol %q", pr.Protocol)
	}
	var out []PortSpec
	for _, proto := range protos {
		s, err := portSpec(proto, pr.Port, pr.EndPort)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

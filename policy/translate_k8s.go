package policy

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sigil-net/sigil/datapath"
)

// FromNetworkPolicy translates a networking.k8s.io/v1 NetworkPolicy.
//
// policyTypes absent means Ingress, plus Egress when egress rules exist.
// An empty or absent from/to list matches every peer; an empty ports list
// every port. A peer with only podSelector is limited to the policy's
// namespace; namespaceSelector and podSelector in one peer must both match.
// ipBlock matches by address, pods included (MatchPods).
func FromNetworkPolicy(np *networkingv1.NetworkPolicy) (*Policy, error) {
	subject, err := FromLabelSelector(&np.Spec.PodSelector, LabelKey)
	if err != nil {
		return nil, fmt.Errorf("spec.podSelector: %w", err)
	}
	p := &Policy{
		Ref:     PolicyRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name},
		Subject: subject.And(InNamespace(np.Namespace)),
	}
	ingress, egress := policyTypes(np)
	p.Enforce[datapath.Ingress], p.Enforce[datapath.Egress] = ingress, egress
	if ingress {
		for i, r := range np.Spec.Ingress {
			rule, err := k8sRule(np.Namespace, datapath.Ingress, i, r.From, r.Ports)
			if err != nil {
				return nil, fmt.Errorf("spec.ingress[%d]: %w", i, err)
			}
			p.Rules = append(p.Rules, rule...)
		}
	}
	if egress {
		for i, r := range np.Spec.Egress {
			rule, err := k8sRule(np.Namespace, datapath.Egress, i, r.To, r.Ports)
			if err != nil {
				return nil, fmt.Errorf("spec.egress[%d]: %w", i, err)
			}
			p.Rules = append(p.Rules, rule...)
		}
	}
	return p, nil
}

func policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func k8sRule(ns string, dir datapath.Direction, idx int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) ([]Rule, error) {
	r := Rule{Direction: dir, Index: idx}
	for i, pr := range peers {
		peer, err := k8sPeer(ns, pr)
		if err != nil {
			return nil, fmt.Errorf("peer %d: %w", i, err)
		}
		r.Peers = append(r.Peers, peer)
	}
	if len(peers) == 0 {
		r.Peers = []Peer{{Kind: PeerAll}}
	}
	for i, pp := range ports {
		spec, err := k8sPort(pp)
		if err != nil {
			return nil, fmt.Errorf("ports[%d]: %w", i, err)
		}
		r.Ports = append(r.Ports, spec)
	}
	return splitNamedEgress(r), nil
}

func k8sPeer(ns string, pr networkingv1.NetworkPolicyPeer) (Peer, error) {
	if pr.IPBlock != nil {
		if pr.PodSelector != nil || pr.NamespaceSelector != nil {
			return Peer{}, fmt.Errorf("ipBlock cannot be combined with selectors")
		}
		return cidrPeer(pr.IPBlock.CIDR, pr.IPBlock.Except, true)
	}
	if pr.PodSelector == nil && pr.NamespaceSelector == nil {
		return Peer{}, fmt.Errorf("a peer needs podSelector, namespaceSelector or ipBlock")
	}
	pods, err := FromLabelSelector(pr.PodSelector, LabelKey)
	if err != nil {
		return Peer{}, fmt.Errorf("podSelector: %w", err)
	}
	if pr.NamespaceSelector == nil {
		return Peer{Kind: PeerLabels, Selector: pods.And(InNamespace(ns))}, nil
	}
	nss, err := FromLabelSelector(pr.NamespaceSelector, NamespaceLabelKey)
	if err != nil {
		return Peer{}, fmt.Errorf("namespaceSelector: %w", err)
	}
	return Peer{Kind: PeerLabels, Selector: pods.And(nss)}, nil
}

func cidrPeer(cidr string, except []string, matchPods bool) (Peer, error) {
	pfx, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Peer{}, fmt.Errorf("cidr %q: %w", cidr, err)
	}
	p := Peer{Kind: PeerCIDR, CIDR: pfx.Masked(), MatchPods: matchPods}
	for _, e := range except {
		ep, err := netip.ParsePrefix(e)
		if err != nil {
			return Peer{}, fmt.Errorf("except %q: %w", e, err)
		}
		if !prefixContains(p.CIDR, ep.Masked()) {
			return Peer{}, fmt.Errorf("except %s is not inside %s", e, cidr)
		}
		p.Except = append(p.Except, ep.Masked())
	}
	return p, nil
}

func k8sPort(pp networkingv1.NetworkPolicyPort) (PortSpec, error) {
	proto := datapath.ProtoTCP
	if pp.Protocol != nil {
		var err error
		if proto, err = protoNumber(*pp.Protocol); err != nil {
			return PortSpec{}, err
		}
	}
	return portSpec(proto, pp.Port, pp.EndPort)
}

// portSpec builds a spec from a protocol, an optional port and endPort.
func portSpec(proto uint8, port *intstr.IntOrString, endPort *int32) (PortSpec, error) {
	switch {
	case port == nil:
		if endPort != nil {
			return PortSpec{}, fmt.Errorf("endPort needs a port")
		}
		return allPorts(proto), nil
	case port.Type == intstr.String:
		if endPort != nil {
			return PortSpec{}, fmt.Errorf("endPort needs a numeric port")
		}
		if port.StrVal == "" {
			return PortSpec{}, fmt.Errorf("empty port name")
		}
		return PortSpec{Proto: proto, Name: port.StrVal}, nil
	}
	lo, hi := port.IntVal, port.IntVal
	if endPort != nil {
		hi = *endPort
	}
	if lo < 1 || hi > 65535 || hi < lo {
		return PortSpec{}, fmt.Errorf("bad port range %d-%d", lo, hi)
	}
	return PortSpec{Proto: proto, Lo: uint16(lo), Hi: uint16(hi)}, nil
}

func protoNumber(p corev1.Protocol) (uint8, error) {
	switch p {
	case corev1.ProtocolTCP:
		return datapath.ProtoTCP, nil
	case corev1.ProtocolUDP:
		return datapath.ProtoUDP, nil
	case corev1.ProtocolSCTP:
		return datapath.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", p)
}

// splitNamedEgress: an egress rule to every peer with named ports can only
// mean pods (only pods have named ports), so the named ports move to a
// copy of the rule whose peer is every pod. The copy keeps the index.
func splitNamedEgress(r Rule) []Rule {
	if r.Direction != datapath.Egress || !hasAllPeer(r.Peers) {
		return []Rule{r}
	}
	var named, numeric []PortSpec
	for _, p := range r.Ports {
		if p.Name != "" {
			named = append(named, p)
		} else {
			numeric = append(numeric, p)
		}
	}
	if len(named) == 0 {
		return []Rule{r}
	}
	pods := r
	pods.Peers, pods.Ports = []Peer{{Kind: PeerLabels}}, named
	if len(numeric) == 0 {
		return []Rule{pods}
	}
	r.Ports = numeric
	return []Rule{r, pods}
}

func hasAllPeer(peers []Peer) bool {
	for _, p := range peers {
		if p.Kind == PeerAll {
			return true
		}
	}
	return false
}

// prefixContains reports whether inner lies inside (or equals) outer.
func prefixContains(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

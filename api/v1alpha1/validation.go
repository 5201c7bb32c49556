package v1alpha1

import (
	"fmt"
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validate checks a policy spec for what the CRD schema cannot express (or
// for clients that bypass it): label selector syntax, prefix containment,
// port ranges and named ports. Every error names the offending field.
func (s *PolicySpec) Validate() field.ErrorList {
	var errs field.ErrorList
	root := field.NewPath("spec")
	errs = append(errs, validateSelector(&s.EndpointSelector, root.Child("endpointSelector"))...)
	for i := range s.Ingress {
		errs = append(errs, validateRule(s.Ingress[i].From, s.Ingress[i].ToPorts, s.Ingress[i].ICMPs, root.Child("ingress").Index(i), "from")...)
	}
	for i := range s.IngressDeny {
		errs = append(errs, validateRule(s.IngressDeny[i].From, s.IngressDeny[i].ToPorts, s.IngressDeny[i].ICMPs, root.Child("ingressDeny").Index(i), "from")...)
	}
	for i := range s.Egress {
		errs = append(errs, validateRule(s.Egress[i].To, s.Egress[i].ToPorts, s.Egress[i].ICMPs, root.Child("egress").Index(i), "to")...)
	}
	for i := range s.EgressDeny {
		errs = append(errs, validateRule(s.EgressDeny[i].To, s.EgressDeny[i].ToPorts, s.EgressDeny[i].ICMPs, root.Child("egressDeny").Index(i), "to")...)
	}
	return errs
}

func validateSelector(sel *metav1.LabelSelector, p *field.Path) field.ErrorList {
	return metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, p)
}

func validateRule(peers []Peer, ports []PortRule, icmps []ICMPRule, p *field.Path, peerField string) field.ErrorList {
	var errs field.ErrorList
	if len(peers) == 0 && (len(ports) > 0 || len(icmps) > 0) {
		errs = append(errs, field.Required(p.Child(peerField), "a rule with toPorts or icmps needs peers (use entity: all for every peer)"))
	}
	for i := range peers {
		errs = append(errs, validatePeer(&peers[i], p.Child(peerField).Index(i))...)
	}
	for i := range ports {
		errs = append(errs, validatePort(&ports[i], p.Child("toPorts").Index(i))...)
	}
	for i, ic := range icmps {
		ip := p.Child("icmps").Index(i)
		if ic.Type < 0 || ic.Type > 255 {
			errs = append(errs, field.Invalid(ip.Child("type"), ic.Type, "must be between 0 and 255"))
		}
		if ic.Code != nil && (*ic.Code < 0 || *ic.Code > 255) {
			errs = append(errs, field.Invalid(ip.Child("code"), *ic.Code, "must be between 0 and 255"))
		}
	}
	return errs
}

func validatePeer(peer *Peer, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	set := 0
	if peer.Endpoints != nil {
		set++
		errs = append(errs, validateSelector(peer.Endpoints, p.Child("endpoints"))...)
	}
	if peer.CIDR != "" {
		set++
		errs = append(errs, validateCIDR(peer.CIDR, peer.Except, p)...)
	}
	if peer.Entity != "" {
		set++
		if !knownEntity(peer.Entity) {
			errs = append(errs, field.NotSupported(p.Child("entity"), peer.Entity, entityNames()))
		}
	}
	if set != 1 {
		errs = append(errs, field.Invalid(p, set, "a peer must set exactly one of endpoints, cidr or entity"))
	}
	if peer.NamespaceSelector != nil {
		if peer.Endpoints == nil {
			errs = append(errs, field.Forbidden(p.Child("namespaceSelector"), "only allowed together with endpoints"))
		}
		errs = append(errs, validateSelector(peer.NamespaceSelector, p.Child("namespaceSelector"))...)
	}
	if len(peer.Except) > 0 && peer.CIDR == "" {
		errs = append(errs, field.Forbidden(p.Child("except"), "only allowed together with cidr"))
	}
	return errs
}

func validateCIDR(cidr string, except []string, p *field.Path) field.ErrorList {
	outer, err := netip.ParsePrefix(cidr)
	if err != nil {
		return field.ErrorList{field.Invalid(p.Child("cidr"), cidr, "must be a prefix such as 10.0.0.0/8 or 2001:db8::/32")}
	}
	var errs field.ErrorList
	for i, e := range except {
		in, err := netip.ParsePrefix(e)
		switch {
		case err != nil:
			errs = append(errs, field.Invalid(p.Child("except").Index(i), e, "must be a prefix such as 10.1.0.0/16"))
		case !PrefixContains(outer.Masked(), in.Masked()):
			errs = append(errs, field.Invalid(p.Child("except").Index(i), e, fmt.Sprintf("must lie inside cidr %s", cidr)))
		}
	}
	return errs
}

// PrefixContains reports whether prefix inner lies inside (or equals) outer.
func PrefixContains(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

func validatePort(pr *PortRule, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch pr.Protocol {
	case "", ProtocolTCP, ProtocolUDP, ProtocolSCTP, ProtocolANY:
	default:
		errs = append(errs, field.NotSupported(p.Child("protocol"), pr.Protocol, []string{"TCP", "UDP", "SCTP", "ANY"}))
	}
	errs = append(errs, ValidatePortRange(pr.Port, pr.EndPort, p)...)
	return errs
}

// ValidatePortRange checks a port (number or name) and an optional endPort,
// as both policy kinds use them.
func ValidatePortRange(port *intstr.IntOrString, endPort *int32, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if port != nil && port.Type == intstr.String {
		for _, msg := range validation.IsValidPortName(port.StrVal) {
			errs = append(errs, field.Invalid(p.Child("port"), port.StrVal, msg))
		}
	}
	if port != nil && port.Type == intstr.Int && (port.IntVal < 1 || port.IntVal > 65535) {
		errs = append(errs, field.Invalid(p.Child("port"), port.IntVal, "must be between 1 and 65535"))
	}
	if endPort == nil {
		return errs
	}
	switch {
	case port == nil || port.Type != intstr.Int:
		errs = append(errs, field.Invalid(p.Child("endPort"), *endPort, "endPort needs a numeric port"))
	case *endPort < port.IntVal || *endPort > 65535:
		errs = append(errs, field.Invalid(p.Child("endPort"), *endPort, fmt.Sprintf("must be between port (%d) and 65535", port.IntVal)))
	}
	return errs
}

// AllEntities lists every entity a peer can name.
var AllEntities = []Entity{EntityWorld, EntityCluster, EntityHost, EntityRemoteNode,
	EntityKubeAPIServer, EntityHealth, EntityInit, EntityUnmanaged, EntityAll}

func knownEntity(e Entity) bool {
	for _, k := range AllEntities {
		if k == e {
			return true
		}
	}
	return false
}

func entityNames() []string {
	out := make([]string, len(AllEntities))
	for i, e := range AllEntities {
		out[i] = string(e)
	}
	return out
}

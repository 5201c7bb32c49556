// Package policy turns Kubernetes NetworkPolicies and Sigil's policy CRDs
// into per-endpoint BPF policy map entries.
//
// Both policy kinds translate into one normalized model (Policy, Rule,
// Peer, PortSpec). An Engine holds the policies, the identities and the
// endpoints; its selector cache maps every peer selector to the identities
// it matches and is updated incrementally, so an identity appearing or
// vanishing recompiles only the entries of that identity on the endpoints
// it affects. See docs/policy.md for the semantics.
package policy

import (
	"fmt"
	"net/netip"

	"github.com/sigil-net/sigil/datapath"
)

// Policy kinds named in PolicyRef.Kind.
const (
	KindNetworkPolicy          = "NetworkPolicy"
	KindSigilNetworkPolicy     = "SigilNetworkPolicy"
	KindSigilClusterwidePolicy = "SigilClusterwideNetworkPolicy"
)

// PolicyRef names a policy object.
type PolicyRef struct {
	Kind      string
	Namespace string // "" for clusterwide policies
	Name      string
}

func (r PolicyRef) String() string {
	if r.Namespace == "" {
		return r.Kind + "/" + r.Name
	}
	return r.Kind + "/" + r.Namespace + "/" + r.Name
}

// Policy is a policy in the normalized model.
type Policy struct {
	Ref PolicyRef
	// Subject selects the endpoints the policy applies to, by the security
	// labels of their identity.
	Subject Selector
	// Enforce[d] makes selected endpoints default-deny in direction d.
	Enforce [2]bool
	Rules   []Rule
}

// Rule is one allow or deny rule: traffic in Direction with one of Peers on
// one of Ports. Index is the rule's position in its source list (ingress,
// egress, ingressDeny or egressDeny) and names it in cookies.
type Rule struct {
	Direction datapath.Direction
	Deny      bool
	Index     int
	Peers     []Peer
	// Ports: empty means every protocol and port.
	Ports []PortSpec
}

// PeerKind says how a peer is matched.
type PeerKind uint8

// Peer kinds.
const (
	// PeerAll matches every peer (the IdentityAny wildcard).
	PeerAll PeerKind = iota
	// PeerLabels matches pods whose security labels satisfy Selector.
	PeerLabels
	// PeerCIDR matches addresses in CIDR minus Except (and, with MatchPods,
	// the pods whose IPs are there).
	PeerCIDR
	// PeerEntity matches an entity (world, cluster, host, ...).
	PeerEntity
)

// Peer is one peer of a rule.
type Peer struct {
	Kind      PeerKind
	Selector  Selector
	CIDR      netip.Prefix
	Except    []netip.Prefix
	MatchPods bool
	Entity    string
}

// PortSpec is a protocol with a port range, a named port or an ICMP range.
//
//   - Proto ProtoAny, no Name: every protocol (Lo and Hi ignored).
//   - a protocol with Lo..Hi: that range (0..65535 is every port).
//   - Name set: the container port of that name on the destination pod,
//     limited to Proto unless Proto is ProtoAny.
//   - ProtoICMP: Lo..Hi over type<<8|code.
type PortSpec struct {
	Proto  uint8
	Lo, Hi uint16
	Name   string
}

func (p PortSpec) String() string {
	switch {
	case p.Name != "":
		return fmt.Sprintf("%s/%s", protoName(p.Proto), p.Name)
	case p.Proto == datapath.ProtoAny:
		return "any"
	case p.Proto == datapath.ProtoICMP && p.Hi-p.Lo == 0xff:
		return fmt.Sprintf("icmp type %d", p.Lo>>8)
	case p.Proto == datapath.ProtoICMP:
		return fmt.Sprintf("icmp type %d code %d", p.Lo>>8, p.Lo&0xff)
	case p.Lo == 0 && p.Hi == 0xffff:
		return protoName(p.Proto) + "/*"
	case p.Lo == p.Hi:
		return fmt.Sprintf("%s/%d", protoName(p.Proto), p.Lo)
	}
	return fmt.Sprintf("%s/%d-%d", protoName(p.Proto), p.Lo, p.Hi)
}

func protoName(p uint8) string {
	switch p {
	case datapath.ProtoAny:
		return "ANY"
	case datapath.ProtoTCP:
		return "TCP"
	case datapath.ProtoUDP:
		return "UDP"
	case datapath.ProtoSCTP:
		return "SCTP"
	case datapath.ProtoICMP:
		return "ICMP"
	}
	return fmt.Sprintf("proto%d", p)
}

// allPorts is the spec of every port of a protocol.
func allPorts(proto uint8) PortSpec { return PortSpec{Proto: proto, Lo: 0, Hi: 0xffff} }

// matchesPort reports whether the spec covers (proto, port), with named
// ports resolved through resolve (nil: named ports match nothing).
func (p PortSpec) matchesPort(proto uint8, port uint16, resolve func(name string, proto uint8) []uint16) bool {
	if p.Name != "" {
		if p.Proto != datapath.ProtoAny && p.Proto != proto || resolve == nil {
			return false
		}
		return contains16(resolve(p.Name, proto), port)
	}
	if p.Proto == datapath.ProtoAny {
		return true
	}
	return p.Proto == proto && port >= p.Lo && port <= p.Hi
}

func contains16(s []uint16, v uint16) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// NamedPort is a named container port of a pod.
type NamedPort struct {
	Name  string
	Proto uint8
	Port  uint16
}

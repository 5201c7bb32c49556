package datapath

import (
	"fmt"
	"math/bits"
)

// EndpointFlags are per-endpoint datapath flags (endpoint_info.flags).
type EndpointFlags uint32

const (
	// EndpointEnforceIngress: a policy selects the endpoint for ingress, so
	// ingress is default-deny (in enforcement mode default).
	EndpointEnforceIngress EndpointFlags = 1 << 0
	// EndpointEnforceEgress: the same for egress.
	EndpointEnforceEgress EndpointFlags = 1 << 1
)

// Enforces reports whether the flags enforce policy in direction d.
func (f EndpointFlags) Enforces(d Direction) bool {
	if d == Ingress {
		return f&EndpointEnforceIngress != 0
	}
	return f&EndpointEnforceEgress != 0
}

// Protocol numbers used in policy keys. ProtoAny matches every protocol.
const (
	ProtoAny  uint8 = 0
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// PolicyKey is the key of one entry in an endpoint's policy map: a peer
// identity (IdentityAny for every peer), a direction, and optionally a
// protocol and a destination port prefix. For ICMP, Port is type<<8 | code.
type PolicyKey struct {
	Identity      Identity
	Direction     Direction
	Protocol      uint8  // ProtoAny: any protocol, and then Port must be 0
	Port          uint16 // destination port, masked to PortPrefixLen bits
	PortPrefixLen uint8  // leading bits of Port that must match: 0 (any port) to 16
}

const (
	policyStaticPrefix = 40 // identity + direction
	policyFullPrefix   = 64
)

// Validate reports a key that the datapath could not match as meant.
func (k PolicyKey) Validate() error {
	if k.Direction > Egress {
		return fmt.Errorf("policy key: bad direction %d", k.Direction)
	}
	if k.PortPrefixLen > 16 {
		return fmt.Errorf("policy key: port prefix length %d > 16", k.PortPrefixLen)
	}
	if k.Protocol == ProtoAny && (k.Port != 0 || k.PortPrefixLen != 0) {
		return fmt.Errorf("policy key: a port needs a protocol")
	}
	if k.Port&^portMask(k.PortPrefixLen) != 0 {
		return fmt.Errorf("policy key: port %d has bits outside its /%d prefix", k.Port, k.PortPrefixLen)
	}
	return nil
}

// prefixLen is the LPM prefix length of the key in bits.
func (k PolicyKey) prefixLen() uint32 {
	if k.Protocol == ProtoAny {
		return policyStaticPrefix
	}
	return policyStaticPrefix + 8 + uint32(k.PortPrefixLen)
}

func (k PolicyKey) String() string {
	peer := fmt.Sprintf("identity %d", k.Identity)
	if k.Identity == IdentityAny {
		peer = "any identity"
	}
	switch {
	case k.Protocol == ProtoAny:
		return fmt.Sprintf("%s %s any protocol", k.Direction, peer)
	case k.Protocol == ProtoICMP && k.PortPrefixLen >= 8:
		if k.PortPrefixLen == 16 {
			return fmt.Sprintf("%s %s ICMP type %d code %d", k.Direction, peer, k.Port>>8, k.Port&0xff)
		}
		return fmt.Sprintf("%s %s ICMP type %d", k.Direction, peer, k.Port>>8)
	case k.PortPrefixLen == 0:
		return fmt.Sprintf("%s %s %s any port", k.Direction, peer, ProtoName(k.Protocol))
	case k.PortPrefixLen == 16:
		return fmt.Sprintf("%s %s %s port %d", k.Direction, peer, ProtoName(k.Protocol), k.Port)
	}
	hi := k.Port | ^portMask(k.PortPrefixLen)
	return fmt.Sprintf("%s %s %s ports %d-%d", k.Direction, peer, ProtoName(k.Protocol), k.Port, hi)
}

// ProtoName names an IP protocol number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto %d", p)
}

func portMask(prefix uint8) uint16 {
	if prefix == 0 {
		return 0
	}
	return ^uint16(0) << (16 - prefix)
}

// PolicyEntry is the value of a policy map entry.
type PolicyEntry struct {
	Deny      bool
	ProxyPort uint16 // reserved for L7 redirection; 0 today
	Cookie    uint32 // names the rule in flow events; assigned by the agent
}

// PortPrefix is a port and a prefix length, one piece of a port range.
type PortPrefix struct {
	Port      uint16
	PrefixLen uint8
}

// PortRangePrefixes splits the inclusive range [lo, hi] into the fewest
// prefixes that cover it exactly. It returns nil when lo > hi.
func PortRangePrefixes(lo, hi uint16) []PortPrefix {
	var out []PortPrefix
	l, h := uint32(lo), uint32(hi)
	for l <= h {
		// The largest aligned block starting at l that fits in [l, h].
		size := uint32(1) << bits.TrailingZeros32(l|1<<16)
		for size > h-l+1 {
			size >>= 1
		}
		out = append(out, PortPrefix{Port: uint16(l), PrefixLen: uint8(16 - bits.TrailingZeros32(size))})
		l += size
	}
	return out
}

// PolicyMapEntries is an endpoint's policy map contents.
type PolicyMapEntries map[PolicyKey]PolicyEntry

// lpm finds the longest-prefix entry matching (identity, dir, proto, port),
// as the kernel's LPM trie does for a full-length key.
func (m PolicyMapEntries) lpm(id Identity, dir Direction, proto uint8, port uint16) (PolicyEntry, bool) {
	for plen := 16; plen >= 0; plen-- {
		k := PolicyKey{Identity: id, Direction: dir, Protocol: proto,
			Port: port & portMask(uint8(plen)), PortPrefixLen: uint8(plen)}
		if e, ok := m[k]; ok {
			return e, true
		}
	}
	e, ok := m[PolicyKey{Identity: id, Direction: dir}]
	return e, ok
}

// Lookup evaluates the policy map for a new flow whose direction is already
// enforced, exactly as policy_check in bpf/lib/policy.h does: a deny from
// the peer's identity or from IdentityAny wins; else an allow from either;
// else the default deny.
func (m PolicyMapEntries) Lookup(dir Direction, peer Identity, proto uint8, port uint16) (Reason, uint32) {
	exact, okExact := m.lpm(peer, dir, proto, port)
	any, okAny := m.lpm(IdentityAny, dir, proto, port)
	switch {
	case okExact && exact.Deny:
		return DropPolicyDeny, exact.Cookie
	case okAny && any.Deny:
		return DropPolicyDeny, any.Cookie
	case okExact:
		return ReasonForwarded, exact.Cookie
	case okAny:
		return ReasonForwarded, any.Cookie
	}
	return DropPolicyDefault, 0
}

// EvaluatePolicy is the whole policy decision of the datapath for a new flow:
// enforcement mode, endpoint flags, the host exception and the map lookup.
// entries is nil when the endpoint has no policy map installed.
func EvaluatePolicy(cfg RuntimeConfig, flags EndpointFlags, entries PolicyMapEntries,
	dir Direction, peer Identity, proto uint8, port uint16) (Reason, uint32) {
	switch cfg.Enforcement {
	case EnforceNever:
		return ReasonForwarded, 0
	case EnforceDefault:
		if !flags.Enforces(dir) {
			return ReasonForwarded, 0
		}
	}
	if dir == Ingress && peer == IdentityHost && cfg.Flags&ConfigAllowHostIngress != 0 {
		return ReasonForwarded, 0
	}
	if entries == nil {
		return DropNoPolicyMap, 0
	}
	return entries.Lookup(dir, peer, proto, port)
}

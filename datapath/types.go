package datapath

import (
	"fmt"
	"net"
	"net/netip"
)

// Direction is a traffic direction from an endpoint's point of view.
type Direction uint8

const (
	// Ingress is traffic into the endpoint (the to-container program).
	Ingress Direction = 0
	// Egress is traffic out of the endpoint (the from-container program).
	Egress Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Identity is a numeric security identity.
type Identity uint32

// Reserved identities; bpf/lib/common.h holds the same numbers.
const (
	IdentityAny           Identity = 0 // wildcard in policy keys
	IdentityHost          Identity = 1
	IdentityWorld         Identity = 2
	IdentityUnmanaged     Identity = 3
	IdentityHealth        Identity = 4
	IdentityInit          Identity = 5
	IdentityRemoteNode    Identity = 6
	IdentityKubeAPIServer Identity = 7

	// IdentityClusterMin is the first identity the operator allocates for
	// label sets.
	IdentityClusterMin Identity = 256
	// IdentityLocalFlag marks node-local identities (CIDR peers).
	IdentityLocalFlag Identity = 1 << 24
)

// EnforcementMode is the global policy enforcement mode.
type EnforcementMode uint32

const (
	// EnforceDefault enforces a direction of an endpoint only when a policy
	// selects the endpoint in that direction.
	EnforceDefault EnforcementMode = 0
	// EnforceAlways makes every endpoint default-deny in both directions.
	EnforceAlways EnforcementMode = 1
	// EnforceNever disables policy enforcement.
	EnforceNever EnforcementMode = 2
)

// ParseEnforcementMode parses "default", "always" or "never".
func ParseEnforcementMode(s string) (EnforcementMode, error) {
	switch s {
	case "", "default":
		return EnforceDefault, nil
	case "always":
		return EnforceAlways, nil
	case "never":
		return EnforceNever, nil
	}
	return 0, fmt.Errorf("unknown policy enforcement mode %q (want default, always or never)", s)
}

func (m EnforcementMode) String() string {
	switch m {
	case EnforceDefault:
		return "default"
	case EnforceAlways:
		return "always"
	case EnforceNever:
		return "never"
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// Runtime configuration flags (runtime_config.flags).
const (
	// ConfigAllowHostIngress lets the node itself (identity host) reach its
	// pods whatever their ingress policy says, as kubelet probes need.
	ConfigAllowHostIngress uint32 = 1 << 0
	// ConfigTraceNewFlows emits a policy-verdict event for every allowed new
	// flow (subject to the rate limit).
	ConfigTraceNewFlows uint32 = 1 << 1
	// ConfigTunnel selects routing mode tunnel: pods on other nodes are
	// reached through the VXLAN device, with the source identity as VNI.
	ConfigTunnel uint32 = 1 << 2
	// ConfigServiceDefer says the host stack (kube-proxy) translates
	// services: from_container does not judge a pod's packets to
	// RuntimeConfig.ServiceCIDRs but marks them (MarkDeferred) and leaves
	// them to the stack's DNAT; the hook they reach after it (to_container,
	// to_overlay or to_netdev) judges the pod's egress on the backend.
	ConfigServiceDefer uint32 = 1 << 3
	// ConfigLBTC says Sigil load-balances services: from_container
	// translates packets for a service frontend that the socket programs
	// did not (DNAT to a backend, tracked; replies reverse-NATed).
	ConfigLBTC uint32 = 1 << 4
	// ConfigNativeFast turns on native routing's fast path once from_netdev
	// is attached to the devices pod traffic from other nodes arrives on
	// (AttachNativeIngress): a flow between a local pod and a remote pod
	// (in the ipcache) that starts while it is on skips the host stack in
	// both directions (CTFast): from_netdev judges and redirects it into
	// the pod, from_container sends it out of the device the node's routes
	// choose. Flows tracked without CTFast keep crossing the stack both
	// ways. Ignored with ConfigTunnel.
	ConfigNativeFast uint32 = 1 << 5
)

// skb->mark bits Sigil sets on packets it defers to the host stack's DNAT
// (ConfigServiceDefer), as in bpf/lib/common.h: MarkDeferred on every such
// packet, MarkDeferredEnforced too when the pod's egress is enforced. They
// are clear of kube-proxy's 0x4000 and 0x8000 and of Cilium's 0x0f00, and
// are cleared once the packet is judged.
const (
	MarkDeferred         uint32 = 0x00200000
	MarkDeferredEnforced uint32 = 0x00400000
	MarkDeferredMask            = MarkDeferred | MarkDeferredEnforced
)

// MaxServiceCIDRs is how many service CIDRs RuntimeConfig can carry.
const MaxServiceCIDRs = serviceCIDRsMax

// RuntimeConfig is the datapath's runtime configuration.
type RuntimeConfig struct {
	Enforcement    EnforcementMode
	Flags          uint32
	EventRateLimit uint32 // allowed-flow events per second per CPU; 0 = unlimited
	// TunnelIfIndex is the node's VXLAN device (with ConfigTunnel).
	TunnelIfIndex uint32
	// ServiceCIDRs are the IPv4 service (ClusterIP) ranges whose traffic
	// is deferred with ConfigServiceDefer; at most MaxServiceCIDRs.
	ServiceCIDRs []netip.Prefix
}

// Address families as in the kernel.
const (
	familyIPv4 = 2
	familyIPv6 = 10
)

// addrBytes encodes an address into the C union sigil_addr (16 bytes,
// network byte order, IPv4 in the first four bytes).
func addrBytes(a netip.Addr) (b [16]byte, family uint8) {
	if a.Is4() || a.Is4In6() {
		v4 := a.Unmap().As4()
		copy(b[:], v4[:])
		return b, familyIPv4
	}
	return a.As16(), familyIPv6
}

func addrFrom(b [16]byte, family uint8) netip.Addr {
	if family == familyIPv6 {
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte{b[0], b[1], b[2], b[3]})
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

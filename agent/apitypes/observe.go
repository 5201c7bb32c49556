package apitypes

import (
	"net/netip"
	"strconv"
	"time"
)

// Observability routes (API version 1), beside the endpoint routes:
//
//	GET /v1/status                 -> Status
//	GET /v1/flows?<FlowQuery>      -> a stream of FlowRecord, one JSON object per line
//	GET /v1/identities             -> IdentityList
//	GET /v1/identities/{id}        -> Identity
//	GET /v1/policies               -> PolicyList
//	GET /v1/selectors              -> SelectorList
//	GET /v1/policy/explain?from=ns/pod&to=ns/pod&port=80&protocol=tcp -> Explanation
//
// Routes backed by the policy engine answer CodeUnavailable while the agent
// runs without it.

// CodeUnavailable says a subsystem the route needs is not running.
const CodeUnavailable = "unavailable"

// Flow is one datapath event, decoded and enriched by the agent.
type Flow struct {
	Time time.Time `json:"time"`
	// Type is policy-verdict, drop or trace.
	Type string `json:"type"`
	// Verdict is FORWARDED or DROPPED.
	Verdict string `json:"verdict"`
	// DropReason is the reason of a drop ("" for forwarded flows).
	DropReason     string `json:"dropReason,omitempty"`
	DropReasonCode uint8  `json:"dropReasonCode,omitempty"`
	// Direction is the traffic direction, ingress or egress, from the
	// point of view of the endpoint whose program reported the event.
	Direction string `json:"trafficDirection"`
	// Protocol is TCP, UDP, ICMP, SCTP or "proto N".
	Protocol    string       `json:"protocol"`
	Source      FlowEndpoint `json:"source"`
	Destination FlowEndpoint `json:"destination"`
	// ICMP holds the type and code of an ICMP flow.
	ICMP     *ICMP  `json:"icmp,omitempty"`
	TCPFlags string `json:"tcpFlags,omitempty"`
	Length   uint32 `json:"length"`
	// EndpointID and IfIndex name the endpoint whose program reported the
	// event and its host-side interface.
	EndpointID uint32 `json:"endpointID"`
	IfIndex    uint32 `json:"ifIndex"`
	// Cookie is the policy map entry that decided (0: none did).
	Cookie uint32 `json:"cookie,omitempty"`
	// Policy is the rule behind Cookie, when the policy engine knows it.
	Policy *PolicyRule `json:"policy,omitempty"`
	// EnforcedBy lists, for a default deny, the policies that select the
	// endpoint in the flow's direction and so make it default-deny.
	EnforcedBy []string `json:"enforcedBy,omitempty"`
}

// FlowEndpoint is one side of a flow.
type FlowEndpoint struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port,omitempty"`
	Identity uint32     `json:"identity"`
	// IdentityName names reserved identities (world, host, ...).
	IdentityName string `json:"identityName,omitempty"`
	EndpointID   uint32 `json:"endpointID,omitempty"`
	Namespace    string `json:"namespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	// Labels are the identity's security labels, "source:key=value", sorted.
	Labels []string `json:"labels,omitempty"`
}

// ICMP is the type and code of an ICMP flow.
type ICMP struct {
	Type uint8 `json:"type"`
	Code uint8 `json:"code"`
}

// PolicyRule names the rule of a policy that decided a flow.
type PolicyRule struct {
	Cookie    uint32 `json:"cookie,omitempty"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// RuleList is ingress, egress, ingressDeny or egressDeny.
	RuleList string `json:"ruleList"`
	Index    int    `json:"index"`
	Deny     bool   `json:"deny"`
}

// PolicyName is Kind/Namespace/Name (Kind/Name when clusterwide).
func (r PolicyRule) PolicyName() string {
	if r.Namespace == "" {
		return r.Kind + "/" + r.Name
	}
	return r.Kind + "/" + r.Namespace + "/" + r.Name
}

// String is the policy name and the rule, e.g.
// "NetworkPolicy/default/db ingress[0]".
func (r PolicyRule) String() string {
	return r.PolicyName() + " " + r.RuleList + "[" + strconv.Itoa(r.Index) + "]"
}

// Lost-event sources.
const (
	// LostRingBufferFull: the datapath could not write an event because the
	// BPF ring buffer was full (the agent's reader fell behind).
	LostRingBufferFull = "datapath-ring-buffer-full"
	// LostRateLimited: allowed-flow events over the datapath's configured
	// rate. Drops are never rate-limited.
	LostRateLimited = "datapath-rate-limited"
	// LostDecode: events the agent could not decode.
	LostDecode = "agent-decode-error"
	// LostSlowClient: events this client did not keep up with; the agent
	// dropped them from its stream rather than stall the pipeline.
	LostSlowClient = "client-too-slow"
)

// LostEvents reports events that did not reach the client.
type LostEvents struct {
	Time   time.Time `json:"time"`
	Source string    `json:"source"`
	Count  uint64    `json:"count"`
}

// FlowRecord is one line of the /v1/flows stream: a flow, or a report of
// lost events.
type FlowRecord struct {
	Flow *Flow       `json:"flow,omitempty"`
	Lost *LostEvents `json:"lost,omitempty"`
	// Raw is the undecoded datapath event, set when the query asks raw=1
	// (sigil monitor).
	Raw *RawEvent `json:"raw,omitempty"`
}

// RawEvent is a datapath event as the BPF program wrote it, fields as
// numbers.
type RawEvent struct {
	Time        time.Time  `json:"time"`
	Type        uint8      `json:"type"`
	Verdict     uint8      `json:"verdict"`
	Reason      uint8      `json:"reason"`
	Direction   uint8      `json:"direction"`
	EndpointID  uint32     `json:"endpointID"`
	IfIndex     uint32     `json:"ifIndex"`
	SrcIdentity uint32     `json:"srcIdentity"`
	DstIdentity uint32     `json:"dstIdentity"`
	Src         netip.Addr `json:"src"`
	Dst         netip.Addr `json:"dst"`
	SrcPort     uint16     `json:"srcPort"`
	DstPort     uint16     `json:"dstPort"`
	Proto       uint8      `json:"proto"`
	TCPFlags    uint8      `json:"tcpFlags"`
	Cookie      uint32     `json:"cookie"`
	Length      uint32     `json:"length"`
}

// FlowStats describes the agent's flow pipeline.
type FlowStats struct {
	Enabled bool `json:"enabled"`
	// Capacity is the number of flows the in-memory ring keeps; Buffered
	// how many it holds now.
	Capacity    int    `json:"capacity"`
	Buffered    int    `json:"buffered"`
	Seen        uint64 `json:"seen"`
	Subscribers int    `json:"subscribers"`
	// Lost counts events by LostEvents source since the agent started
	// (datapath counters since the maps were created).
	Lost map[string]uint64 `json:"lost"`
}

// MapStatus is the fill level of one BPF map.
type MapStatus struct {
	Name     string  `json:"name"`
	Entries  int     `json:"entries"`
	Max      int     `json:"max"`
	Pressure float64 `json:"pressure"`
}

// DatapathStatus describes the loaded datapath.
type DatapathStatus struct {
	// Mode is tcx, tc, or none (the in-memory stand-in).
	Mode        string      `json:"mode"`
	PinDir      string      `json:"pinDir,omitempty"`
	Enforcement string      `json:"enforcement,omitempty"`
	Maps        []MapStatus `json:"maps,omitempty"`
	// Prefilter maps each interface the XDP prefilter is attached to to
	// its mode (native or generic).
	Prefilter map[string]string `json:"prefilter,omitempty"`
	Error     string            `json:"error,omitempty"`
}

// ControllerStatus is the state of one agent controller (a Kubernetes
// watch, a sync loop).
type ControllerStatus struct {
	Name      string    `json:"name"`
	LastSync  time.Time `json:"lastSync,omitempty"`
	LastError string    `json:"lastError,omitempty"`
	Failures  int       `json:"failures,omitempty"`
}

// KubernetesStatus is the agent's connection to the API server.
type KubernetesStatus struct {
	Enabled bool   `json:"enabled"`
	Server  string `json:"server,omitempty"`
	// Connected is true when the last request to the API server succeeded.
	Connected bool   `json:"connected"`
	Message   string `json:"message,omitempty"`
}

// Status is the answer of GET /v1/status.
type Status struct {
	Health      Health             `json:"health"`
	Uptime      string             `json:"uptime"`
	Datapath    DatapathStatus     `json:"datapath"`
	Endpoints   int                `json:"endpoints"`
	Identities  int                `json:"identities"`
	Policies    int                `json:"policies"`
	PolicyError string             `json:"policyError,omitempty"`
	Kubernetes  KubernetesStatus   `json:"kubernetes"`
	Controllers []ControllerStatus `json:"controllers,omitempty"`
	Flows       FlowStats          `json:"flows"`
}

// Identity is a security identity and its labels.
type Identity struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
	// Kind is reserved, cluster or local (CIDR).
	Kind string `json:"kind"`
	// Endpoints lists the IDs of this node's endpoints with the identity.
	Endpoints []uint32 `json:"endpoints,omitempty"`
}

// IdentityList is the answer of GET /v1/identities.
type IdentityList struct {
	Identities []Identity `json:"identities"`
}

// Policy is a policy in force on this node.
type Policy struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Selector is the subject selector (which endpoints it applies to).
	Selector string `json:"selector"`
	// Enforces lists the directions it makes default-deny.
	Enforces          []string `json:"enforces,omitempty"`
	Rules             []string `json:"rules,omitempty"`
	SelectedEndpoints int      `json:"selectedEndpoints"`
	OverCapacity      int      `json:"endpointsOverCapacity,omitempty"`
}

// PolicyList is the answer of GET /v1/policies.
type PolicyList struct {
	Policies []Policy `json:"policies"`
}

// Selector is a peer selector in use and the identities it selects.
type Selector struct {
	Selector   string   `json:"selector"`
	Identities []uint32 `json:"identities"`
}

// SelectorList is the answer of GET /v1/selectors.
type SelectorList struct {
	Selectors []Selector `json:"selectors"`
}

// ExplainPeer is one side of an explained flow.
type ExplainPeer struct {
	// Name is what was asked: ns/pod or an IP.
	Name       string     `json:"name"`
	IP         netip.Addr `json:"ip,omitempty"`
	EndpointID uint32     `json:"endpointID,omitempty"`
	Identity   uint32     `json:"identity"`
	// Local says the peer is an endpoint of this node (its policy is
	// evaluated here).
	Local bool `json:"local"`
}

// ExplainVerdict is the decision of one endpoint in one direction.
type ExplainVerdict struct {
	EndpointID uint32 `json:"endpointID"`
	Direction  string `json:"direction"`
	Enforced   bool   `json:"enforced"`
	Verdict    string `json:"verdict"` // FORWARDED or DROPPED
	Reason     string `json:"reason"`
	// Decided is the rule of the entry that decided.
	Decided *PolicyRule `json:"decided,omitempty"`
	// Allowing and Denying are every rule that matches the flow.
	Allowing []PolicyRule `json:"allowing,omitempty"`
	Denying  []PolicyRule `json:"denying,omitempty"`
	// EnforcedBy lists the policies that make the direction default-deny.
	EnforcedBy []string `json:"enforcedBy,omitempty"`
	// Datapath is the verdict computed from the maps installed in the
	// kernel (the endpoint's flags, its policy map, the runtime
	// configuration) with the datapath's own lookup semantics; "" when the
	// agent has no BPF datapath.
	Datapath string `json:"datapath,omitempty"`
	// DatapathReason is the reason behind Datapath.
	DatapathReason string `json:"datapathReason,omitempty"`
}

// Explanation is the answer of GET /v1/policy/explain.
type Explanation struct {
	From     ExplainPeer      `json:"from"`
	To       ExplainPeer      `json:"to"`
	Protocol string           `json:"protocol"`
	Port     uint16           `json:"port"`
	Verdict  string           `json:"verdict"` // FORWARDED or DROPPED
	Verdicts []ExplainVerdict `json:"verdicts"`
	// Agree is false when the installed maps decide differently from the
	// policy engine (the datapath lags behind or is out of sync).
	Agree bool `json:"agree"`
}

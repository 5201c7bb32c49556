package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Entity names a class of peers that label selectors cannot express.
// +kubebuilder:validation:Enum=world;cluster;host;remote-node;kube-apiserver;health;init;unmanaged;all
type Entity string

// Entities a peer can name.
const (
	// EntityWorld is everything outside the cluster: the reserved world
	// identity and every CIDR identity.
	EntityWorld Entity = "world"
	// EntityCluster is every pod and node of the cluster (all cluster
	// identities and the reserved in-cluster ones).
	EntityCluster Entity = "cluster"
	// EntityHost is the local node.
	EntityHost Entity = "host"
	// EntityRemoteNode is every other node of the cluster.
	EntityRemoteNode Entity = "remote-node"
	// EntityKubeAPIServer is the Kubernetes API server.
	EntityKubeAPIServer Entity = "kube-apiserver"
	// EntityHealth is the agents' health-check endpoints.
	EntityHealth Entity = "health"
	// EntityInit is endpoints whose identity is not resolved yet.
	EntityInit Entity = "init"
	// EntityUnmanaged is pods not managed by Sigil.
	EntityUnmanaged Entity = "unmanaged"
	// EntityAll is every peer.
	EntityAll Entity = "all"
)

// Protocol is an L4 protocol of a port rule.
// +kubebuilder:validation:Enum=TCP;UDP;SCTP;ANY
type Protocol string

// Protocols of port rules.
const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
	// ProtocolANY is TCP, UDP and SCTP when a port is given, and every
	// protocol when none is.
	ProtocolANY Protocol = "ANY"
)

// Peer is one peer of a rule: exactly one of endpoints, cidr or entity.
//
// +kubebuilder:validation:XValidation:rule="[has(self.endpoints), has(self.cidr), has(self.entity)].filter(x, x).size() == 1",message="a peer must set exactly one of endpoints, cidr or entity"
// +kubebuilder:validation:XValidation:rule="!has(self.namespaceSelector) || has(self.endpoints)",message="namespaceSelector is only allowed together with endpoints"
// +kubebuilder:validation:XValidation:rule="!has(self.except) || has(self.cidr)",message="except is only allowed together with cidr"
// +kubebuilder:validation:XValidation:rule="!has(self.except) || !has(self.cidr) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e) || cidr(self.cidr).containsCIDR(e))",message="every except prefix must lie inside cidr"
type Peer struct {
	// Endpoints selects pods by their security labels: the pod's labels,
	// "io.kubernetes.pod.namespace" (the namespace name) and
	// "io.kubernetes.pod.namespace.labels.<key>" (the namespace's labels).
	// In a namespaced policy the selection is limited to the policy's
	// namespace unless namespaceSelector is set or the selector names the
	// namespace label itself.
	// +optional
	Endpoints *metav1.LabelSelector `json:"endpoints,omitempty"`

	// NamespaceSelector widens endpoints to the pods of the namespaces whose
	// labels it matches ({} is every namespace).
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// CIDR selects addresses outside the cluster by prefix. CIDR peers never
	// match pod addresses (use endpoints for pods).
	// +optional
	// +kubebuilder:validation:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="cidr must be a prefix such as 10.0.0.0/8 or 2001:db8::/32"
	CIDR string `json:"cidr,omitempty"`

	// Except carves prefixes out of cidr; each must lie inside it.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="except entries must be prefixes such as 10.1.0.0/16"
	Except []string `json:"except,omitempty"`

	// Entity names a class of peers.
	// +optional
	Entity Entity `json:"entity,omitempty"`
}

// PortRule is a destination port, a port range or a named port, and a protocol.
//
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || (has(self.port) && type(self.port) == int)",message="endPort needs a numeric port"
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || !has(self.port) || type(self.port) != int || self.endPort >= self.port",message="endPort must not be below port"
// +kubebuilder:validation:XValidation:rule="!has(self.port) || type(self.port) != int || (self.port >= 1 && self.port <= 65535)",message="port must be between 1 and 65535"
type PortRule struct {
	// Port is a port number or the name of a container port of the
	// destination pod. Absent: every port of the protocol.
	// +optional
	// +kubebuilder:validation:XIntOrString
	Port *intstr.IntOrString `json:"port,omitempty"`

	// EndPort makes the rule cover the range port..endPort.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort *int32 `json:"endPort,omitempty"`

	// Protocol defaults to ANY.
	// +optional
	// +kubebuilder:default=ANY
	Protocol Protocol `json:"protocol,omitempty"`
}

// ICMPRule matches IPv4 ICMP messages by type and optionally code.
type ICMPRule struct {
	// Type is the ICMP type, e.g. 8 for echo request.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	Type int32 `json:"type"`

	// Code narrows the rule to one code of the type. Absent: any code.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	Code *int32 `json:"code,omitempty"`
}

// IngressRule matches traffic into the selected endpoints.
// A rule without peers matches nothing: "ingress: [{}]" only turns on
// default deny. Without toPorts and icmps it matches every protocol.
//
// +kubebuilder:validation:XValidation:rule="size(self.from) > 0 || (size(self.toPorts) == 0 && size(self.icmps) == 0)",message="a rule with toPorts or icmps needs from peers (use entity: all for every peer)"
type IngressRule struct {
	// From are the peers the rule matches.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:default={}
	From []Peer `json:"from"`
	// ToPorts limits the rule to these destination ports.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:default={}
	ToPorts []PortRule `json:"toPorts"`
	// ICMPs limits the rule to these ICMP messages (in addition to toPorts).
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:default={}
	ICMPs []ICMPRule `json:"icmps"`
}

// EgressRule matches traffic out of the selected endpoints; the same
// conventions as IngressRule apply.
//
// +kubebuilder:validation:XValidation:rule="size(self.to) > 0 || (size(self.toPorts) == 0 && size(self.icmps) == 0)",message="a rule with toPorts or icmps needs to peers (use entity: all for every peer)"
type EgressRule struct {
	// To are the peers the rule matches.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:default={}
	To []Peer `json:"to"`
	// ToPorts limits the rule to these destination ports.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:default={}
	ToPorts []PortRule `json:"toPorts"`
	// ICMPs limits the rule to these ICMP messages (in addition to toPorts).
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:default={}
	ICMPs []ICMPRule `json:"icmps"`
}

// PolicySpec is the body of both policy kinds.
type PolicySpec struct {
	// Description is free text for humans.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Description string `json:"description,omitempty"`

	// EndpointSelector selects the endpoints the policy applies to, by
	// security labels ({} is every endpoint; in a namespaced policy, every
	// endpoint of its namespace).
	EndpointSelector metav1.LabelSelector `json:"endpointSelector"`

	// Ingress rules allow traffic into the endpoints.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Ingress []IngressRule `json:"ingress,omitempty"`
	// IngressDeny rules deny traffic into the endpoints; a deny always wins
	// over an allow.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	IngressDeny []IngressRule `json:"ingressDeny,omitempty"`
	// Egress rules allow traffic out of the endpoints.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Egress []EgressRule `json:"egress,omitempty"`
	// EgressDeny rules deny traffic out of the endpoints.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	EgressDeny []EgressRule `json:"egressDeny,omitempty"`
}

// Condition types and reasons of a policy status.
const (
	// ConditionValid is True when the policy was accepted and compiled.
	ConditionValid = "Valid"
	// ConditionCapacityExceeded is True when some endpoints it selects need
	// more entries than their policy map holds; they are failed closed.
	ConditionCapacityExceeded = "CapacityExceeded"
)

// PolicyStatus is what the agents report about a policy.
type PolicyStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Valid (with a message that says what is wrong when it is
	// False) and CapacityExceeded.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// SelectedEndpoints counts the endpoints the policy selects.
	// +optional
	SelectedEndpoints int32 `json:"selectedEndpoints,omitempty"`
	// EndpointsOverCapacity counts selected endpoints failed closed because
	// their entries exceed the policy map size.
	// +optional
	EndpointsOverCapacity int32 `json:"endpointsOverCapacity,omitempty"`
}

// SigilNetworkPolicy is a namespaced Sigil network policy.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=snp,categories=sigil
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.selectedEndpoints`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SigilNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   PolicySpec   `json:"spec"`
	Status PolicyStatus `json:"status,omitempty"`
}

// SigilNetworkPolicyList is a list of SigilNetworkPolicy.
//
// +kubebuilder:object:root=true
type SigilNetworkPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SigilNetworkPolicy `json:"items"`
}

// SigilClusterwideNetworkPolicy is a Sigil network policy that selects
// endpoints of every namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=scnp,categories=sigil
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.selectedEndpoints`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SigilClusterwideNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   PolicySpec   `json:"spec"`
	Status PolicyStatus `json:"status,omitempty"`
}

// SigilClusterwideNetworkPolicyList is a list of SigilClusterwideNetworkPolicy.
//
// +kubebuilder:object:root=true
type SigilClusterwideNetworkPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SigilClusterwideNetworkPolicy `json:"items"`
}

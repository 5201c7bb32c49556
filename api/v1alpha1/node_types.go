package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// SigilNode condition types and reasons.
const (
	// NodeConditionPodCIDRsAllocated is True when the node holds its pod
	// CIDRs; False with reason NodeReasonPoolExhausted when the cluster
	// pool has no free block left.
	NodeConditionPodCIDRsAllocated = "PodCIDRsAllocated"
	// NodeReasonAllocated: the node's pod CIDRs are assigned.
	NodeReasonAllocated = "Allocated"
	// NodeReasonPoolExhausted: no free block of the pool's mask size is left.
	NodeReasonPoolExhausted = "PoolExhausted"
	// NodeReasonNoPodCIDR: in Kubernetes IPAM mode, the Node has no
	// spec.podCIDRs yet.
	NodeReasonNoPodCIDR = "NodeHasNoPodCIDR"
)

// SigilNodeSpec is what every agent needs to know about a node to reach
// its pods.
type SigilNodeSpec struct {
	// PodCIDRs are the node's pod address blocks, at most one per family.
	// +optional
	// +kubebuilder:validation:MaxItems=2
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self) && cidr(self) == cidr(self).masked()",message="each podCIDR must be a network prefix such as 10.0.3.0/24"
	// +listType=atomic
	PodCIDRs []string `json:"podCIDRs,omitempty"`

	// InternalIP is the node's InternalIP address (node.status.addresses).
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="internalIP must be an IP address"
	InternalIP string `json:"internalIP,omitempty"`

	// TunnelEndpoint is the underlay address other nodes send overlay
	// traffic for this node's pods to; InternalIP unless set otherwise.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="tunnelEndpoint must be an IP address"
	TunnelEndpoint string `json:"tunnelEndpoint,omitempty"`
}

// SigilNodeStatus reports the operator's work on a node.
type SigilNodeStatus struct {
	// Conditions: PodCIDRsAllocated.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// SigilNode is Sigil's view of a Kubernetes Node: its pod CIDRs from the
// cluster pool and its addresses. Its name is the Node's name; the
// operator owns it and deletes it with the Node.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=snode,categories=sigil
// +kubebuilder:printcolumn:name="PodCIDRs",type=string,JSONPath=`.spec.podCIDRs`
// +kubebuilder:printcolumn:name="InternalIP",type=string,JSONPath=`.spec.internalIP`
// +kubebuilder:printcolumn:name="Tunnel",type=string,JSONPath=`.spec.tunnelEndpoint`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SigilNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SigilNodeSpec   `json:"spec,omitempty"`
	Status SigilNodeStatus `json:"status,omitempty"`
}

// SigilNodeList is a list of SigilNode.
//
// +kubebuilder:object:root=true
type SigilNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SigilNode `json:"items"`
}

func init() {
	SchemeBuilder.Register(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &SigilNode{}, &SigilNodeList{})
		return nil
	})
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// NamedPort is a container port with a name, as policies may refer to
// ports by name.
type NamedPort struct {
	// Name is the port's name (an IANA_SVC_NAME).
	// +kubebuilder:validation:MaxLength=15
	Name string `json:"name"`
	// Port is the container port number.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// Protocol is TCP, UDP or SCTP.
	// +kubebuilder:validation:Enum=TCP;UDP;SCTP
	// +kubebuilder:default=TCP
	Protocol string `json:"protocol"`
}

// SigilEndpointStatus is the cluster-wide record of one pod: its addresses,
// security identity and node.
type SigilEndpointStatus struct {
	// Identity is the pod's numeric security identity.
	// +kubebuilder:validation:Minimum=256
	// +kubebuilder:validation:Maximum=16777215
	Identity int64 `json:"identity"`
	// LabelsHash is identity.Labels.Hash of the pod's security labels; the
	// object also carries it as the label sigil.io/labels-hash.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	LabelsHash string `json:"labelsHash,omitempty"`
	// NodeName is the node the pod runs on.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName"`
	// IPs are the pod's addresses (pod.status.podIPs), at most one per family.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=2
	// +kubebuilder:validation:items:MaxLength=45
	// +kubebuilder:validation:items:XValidation:rule="isIP(self)",message="each entry must be an IP address"
	// +listType=atomic
	IPs []string `json:"ips"`
	// NamedPorts are the named ports of the pod's containers.
	// +optional
	// +listType=atomic
	NamedPorts []NamedPort `json:"namedPorts,omitempty"`
}

// SigilEndpoint publishes one pod's address -> identity -> node mapping so
// that every agent can fill its ipcache for pods on other nodes. Its name
// and namespace are the pod's; it is owned by the pod. There is no status
// subresource: the operator writes the whole object in one request.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,shortName=sep,categories=sigil
// +kubebuilder:printcolumn:name="Identity",type=integer,JSONPath=`.status.identity`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="IPs",type=string,JSONPath=`.status.ips`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SigilEndpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status SigilEndpointStatus `json:"status"`
}

// SigilEndpointList is a list of SigilEndpoint.
//
// +kubebuilder:object:root=true
type SigilEndpointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SigilEndpoint `json:"items"`
}

func init() {
	SchemeBuilder.Register(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &SigilEndpoint{}, &SigilEndpointList{})
		return nil
	})
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SigilIdentitySpec is a numeric security identity and the labels it stands for.
type SigilIdentitySpec struct {
	// ID is the numeric identity, in the cluster range (256 up to 2^24-1).
	// +kubebuilder:validation:Minimum=256
	// +kubebuilder:validation:Maximum=16777215
	ID int64 `json:"id"`

	// SecurityLabels are the labels the identity was allocated for, in their
	// canonical "source:key=value" form keyed by "source:key".
	// +kubebuilder:validation:MinProperties=1
	SecurityLabels map[string]string `json:"securityLabels"`
}

// SigilIdentity is a cluster-wide security identity. Its name is the
// decimal form of spec.id.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=sid,categories=sigil
// +kubebuilder:printcolumn:name="ID",type=integer,JSONPath=`.spec.id`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == string(self.spec.id)",message="metadata.name must be the decimal form of spec.id"
type SigilIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="an identity is immutable"
	Spec SigilIdentitySpec `json:"spec"`
}

// SigilIdentityList is a list of SigilIdentity.
//
// +kubebuilder:object:root=true
type SigilIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SigilIdentity `json:"items"`
}

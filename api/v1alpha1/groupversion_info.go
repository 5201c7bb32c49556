package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of Sigil's resources.
var GroupVersion = schema.GroupVersion{Group: "sigil.io", Version: "v1alpha1"}

var (
	// SchemeBuilder registers Sigil's types with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds Sigil's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&SigilNetworkPolicy{}, &SigilNetworkPolicyList{},
		&SigilClusterwideNetworkPolicy{}, &SigilClusterwideNetworkPolicyList{},
		&SigilIdentity{}, &SigilIdentityList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

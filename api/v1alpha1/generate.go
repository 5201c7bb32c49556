// Package v1alpha1 holds Sigil's custom resources: network policies
// (namespaced and clusterwide) and security identities, API group sigil.io.
//
// +kubebuilder:object:generate=true
// +groupName=sigil.io
package v1alpha1

//go:generate go tool controller-gen object paths=./...
//go:generate go tool controller-gen crd paths=./... output:crd:artifacts:config=../../charts/sigil/crds

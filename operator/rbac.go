package operator

// Least-privilege RBAC of sigil-operator, generated into rbac/role.yaml by
// `go generate ./operator/` (controller-gen). Reads are for the informers;
// writes only to Sigil's own objects, policy statuses and events.
//
// Pods, namespaces, nodes and NetworkPolicies are only read.
// +kubebuilder:rbac:groups="",resources=pods;namespaces;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch
//
// Identities: created by the allocator, unused marks set and cleared by
// update, garbage collected by delete.
// +kubebuilder:rbac:groups=sigil.io,resources=sigilidentities,verbs=get;list;watch;create;update;delete
// Endpoints and nodes are owned by the operator.
// +kubebuilder:rbac:groups=sigil.io,resources=sigilendpoints,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=sigil.io,resources=sigilnodes,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=sigil.io,resources=sigilnodes/status,verbs=get;update
// Policies are read; their status is server-side applied.
// +kubebuilder:rbac:groups=sigil.io,resources=sigilnetworkpolicies;sigilclusterwidenetworkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=sigil.io,resources=sigilnetworkpolicies/status;sigilclusterwidenetworkpolicies/status,verbs=get;patch
//
// Events about policies and nodes (events.k8s.io) and leader election
// events (core).
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
//
// Leader election lease, in the operator's namespace only.
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=sigil-system,resources=leases,verbs=get;create;update

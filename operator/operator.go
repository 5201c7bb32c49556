// Package operator is Sigil's cluster-wide control plane, run as
// sigil-operator with leader election. One reconciler per kind:
//
//   - EndpointReconciler (Pods): allocates the SigilIdentity of every pod's
//     security labels and publishes a SigilEndpoint (pod IPs -> identity ->
//     node, named ports) for every pod that has IPs and is not hostNetwork;
//   - IdentityGC: deletes SigilIdentities no pod or endpoint has used for
//     a grace period;
//   - NodeReconciler (Nodes): keeps a SigilNode per Node with its pod CIDRs
//     from the cluster pool, internal IP and tunnel endpoint;
//   - PolicyStatusReconciler (SigilNetworkPolicy,
//     SigilClusterwideNetworkPolicy, NetworkPolicy): validates policies and
//     reports the Valid condition and the number of selected endpoints.
//
// See docs/controlplane.md.
package operator

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/operator/cidrpool"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

//go:generate go tool controller-gen rbac:roleName=sigil-operator paths=./... output:rbac:dir=rbac

// FieldOwner is the operator's field manager name for server-side apply.
const FieldOwner = "sigil-operator"

// IPAM modes.
const (
	// IPAMClusterPool allocates node pod CIDRs from Options.ClusterPoolCIDRs.
	IPAMClusterPool = "cluster-pool"
	// IPAMKubernetes copies node.spec.podCIDRs (kube-controller-manager
	// --allocate-node-cidrs).
	IPAMKubernetes = "kubernetes"
)

// Options configure the reconcilers.
type Options struct {
	// IPAM is IPAMClusterPool (default) or IPAMKubernetes.
	IPAM string
	// ClusterPoolCIDRs are the pools node pod CIDRs come from, at most one
	// per address family.
	ClusterPoolCIDRs []netip.Prefix
	// MaskSizeIPv4 and MaskSizeIPv6 are the per-node block sizes.
	MaskSizeIPv4, MaskSizeIPv6 int
	// IdentityGCGrace is how long an identity must stay unused before it
	// is deleted (default 5m).
	IdentityGCGrace time.Duration
	// IdentityGCInterval is how often identities are swept (default
	// IdentityGCGrace/5, at least 1s).
	IdentityGCInterval time.Duration
	// IdentityRange is where identities are allocated (default
	// identityalloc.DefaultRange). Agents must use the same range.
	IdentityRange identityalloc.Range
	// Filter derives security labels (default identity.NewFilter()).
	// Agents must use the same filter.
	Filter *identity.Filter
	// EndpointWorkers is the number of parallel pod reconciles (default 4).
	EndpointWorkers int
}

// DefaultClusterPool is the default IPv4 cluster pool, as in Cilium's
// cluster-pool IPAM; labs pass 198.18.128.0/17 or similar.
var DefaultClusterPool = netip.MustParsePrefix("10.0.0.0/8")

func (o *Options) defaults() error {
	if o.IPAM == "" {
		o.IPAM = IPAMClusterPool
	}
	if o.IPAM != IPAMClusterPool && o.IPAM != IPAMKubernetes {
		return fmt.Errorf("operator: unknown IPAM mode %q (want %s or %s)", o.IPAM, IPAMClusterPool, IPAMKubernetes)
	}
	if o.IPAM == IPAMClusterPool && len(o.ClusterPoolCIDRs) == 0 {
		o.ClusterPoolCIDRs = []netip.Prefix{DefaultClusterPool}
	}
	if o.MaskSizeIPv4 == 0 {
		o.MaskSizeIPv4 = 24
	}
	if o.MaskSizeIPv6 == 0 {
		o.MaskSizeIPv6 = 64
	}
	if o.IdentityGCGrace <= 0 {
		o.IdentityGCGrace = 5 * time.Minute
	}
	if o.IdentityGCInterval <= 0 {
		o.IdentityGCInterval = max(o.IdentityGCGrace/5, time.Second)
	}
	if o.IdentityRange == (identityalloc.Range{}) {
		o.IdentityRange = identityalloc.DefaultRange
	}
	if o.Filter == nil {
		f := identity.NewFilter()
		o.Filter = &f
	}
	if o.EndpointWorkers <= 0 {
		o.EndpointWorkers = 4
	}
	return nil
}

// Pools builds the cluster pools of o, one per family.
func (o *Options) Pools() ([]*cidrpool.Pool, error) {
	var pools []*cidrpool.Pool
	var v4, v6 bool
	for _, cidr := range o.ClusterPoolCIDRs {
		mask := o.MaskSizeIPv4
		if cidr.Addr().Is6() {
			if v6 {
				return nil, errors.New("operator: more than one IPv6 cluster pool")
			}
			v6, mask = true, o.MaskSizeIPv6
		} else {
			if v4 {
				return nil, errors.New("operator: more than one IPv4 cluster pool")
			}
			v4 = true
		}
		p, err := cidrpool.New(cidr, mask)
		if err != nil {
			return nil, err
		}
		pools = append(pools, p)
	}
	return pools, nil
}

// NewScheme returns a scheme with client-go's types and Sigil's.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(sigilv1.AddToScheme(s))
	return s
}

// Setup registers every reconciler with mgr. Each runs only on the leader
// when mgr has leader election on.
func Setup(mgr ctrl.Manager, o Options) error {
	if err := o.defaults(); err != nil {
		return err
	}
	pools, err := o.Pools()
	if err != nil {
		return err
	}
	rec := mgr.GetEventRecorder(FieldOwner)
	c := mgr.GetClient()
	if err := (&EndpointReconciler{Client: c, Recorder: rec, Filter: *o.Filter, Range: o.IdentityRange,
		Workers: o.EndpointWorkers}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("endpoint reconciler: %w", err)
	}
	if err := (&NodeReconciler{Client: c, Recorder: rec, Mode: o.IPAM, Pools: pools}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("node reconciler: %w", err)
	}
	if err := mgr.Add(&IdentityGC{Client: c, Filter: *o.Filter, Grace: o.IdentityGCGrace,
		Interval: o.IdentityGCInterval}); err != nil {
		return fmt.Errorf("identity GC: %w", err)
	}
	if err := (&PolicyStatusReconciler{Client: c, Recorder: rec}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("policy status reconciler: %w", err)
	}
	return nil
}

// ignoreNotFound is client.IgnoreNotFound.
func ignoreNotFound(err error) error { return client.IgnoreNotFound(err) }

package operator

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/operator/cidrpool"
)

// AnnotationTunnelEndpoint on a Node overrides its SigilNode's
// spec.tunnelEndpoint (default: the node's InternalIP).
const AnnotationTunnelEndpoint = "sigil.io/tunnel-endpoint"

// exhaustedRetry is how often a node waiting for a pod CIDR retries.
const exhaustedRetry = 30 * time.Second

// NodeReconciler keeps one SigilNode per Node: pod CIDRs (from the cluster
// pools, or copied from node.spec.podCIDRs in Kubernetes IPAM mode),
// internal IP and tunnel endpoint. The pools' state is rebuilt from the
// SigilNodes on the first reconcile; only the leader allocates, and one
// reconcile runs at a time, so allocations never overlap.
type NodeReconciler struct {
	Client   client.Client
	Recorder recorder.EventRecorder
	Mode     string
	Pools    []*cidrpool.Pool

	mu      sync.Mutex
	loaded  bool
	byNode  map[string][]netip.Prefix // blocks held per node, as written
	waiting map[string]bool           // nodes left without a block
	wake    chan event.GenericEvent   // re-queues waiting nodes when blocks free up
}

// SetupWithManager watches Nodes and the SigilNodes they own.
func (r *NodeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.waiting = map[string]bool{}
	r.wake = make(chan event.GenericEvent, 1024)
	return ctrl.NewControllerManagedBy(mgr).
		Named("node-ipam").
		For(&corev1.Node{}).
		Owns(&sigilv1.SigilNode{}).
		WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{})).
		Complete(r)
}

// load rebuilds the pools from the existing SigilNodes.
func (r *NodeReconciler) load(ctx context.Context) error {
	if r.loaded {
		return nil
	}
	var list sigilv1.SigilNodeList
	if err := r.Client.List(ctx, &list); err != nil {
		return err
	}
	r.byNode = map[string][]netip.Prefix{}
	for i := range list.Items {
		sn := &list.Items[i]
		r.byNode[sn.Name] = r.occupy(ctx, sn.Name, sn.Spec.PodCIDRs)
	}
	r.loaded = true
	return nil
}

// occupy marks a node's existing blocks used in their pools and returns
// those that belong to a pool (the ones to release later).
func (r *NodeReconciler) occupy(ctx context.Context, node string, cidrs []string) []netip.Prefix {
	var held []netip.Prefix
	for _, s := range cidrs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		for _, p := range r.Pools {
			if !p.Contains(pfx) {
				continue
			}
			if err := p.Occupy(pfx); err != nil {
				log.FromContext(ctx).Error(err, "pod CIDR held by two nodes", "node", node, "cidr", pfx)
				continue
			}
			held = append(held, pfx)
		}
	}
	return held
}

func (r *NodeReconciler) release(node string) {
	freed := len(r.byNode[node]) > 0
	for _, pfx := range r.byNode[node] {
		for _, p := range r.Pools {
			p.Release(pfx)
		}
	}
	delete(r.byNode, node)
	delete(r.waiting, node)
	if freed {
		r.wakeWaiting()
	}
}

// wakeWaiting re-queues the nodes that found a pool exhausted.
func (r *NodeReconciler) wakeWaiting() {
	for name := range r.waiting {
		select {
		case r.wake <- event.GenericEvent{Object: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}}:
		default: // full: the periodic retry still comes
		}
	}
}

// Reconcile implements reconcile.Reconciler.
func (r *NodeReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Mode == IPAMClusterPool {
		if err := r.load(ctx); err != nil {
			return reconcile.Result{}, err
		}
	}
	var node corev1.Node
	if err := r.Client.Get(ctx, req.NamespacedName, &node); err != nil {
		if !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		// The Node is gone: delete its SigilNode (the owner reference does
		// the same where a garbage collector runs) and free its blocks.
		sn := &sigilv1.SigilNode{ObjectMeta: metav1.ObjectMeta{Name: req.Name}}
		if err := r.Client.Delete(ctx, sn); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		r.release(req.Name)
		return reconcile.Result{}, nil
	}

	var cur sigilv1.SigilNode
	exists := true
	if err := r.Client.Get(ctx, req.NamespacedName, &cur); err != nil {
		if !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		exists = false
	}
	if !exists && r.Mode == IPAMClusterPool && len(r.byNode[node.Name]) > 0 {
		// Our SigilNode is gone (deleted by hand, or our create is not
		// cached yet): do not leak its blocks; rewrite it with them.
		cur.Spec.PodCIDRs = prefixStrings(r.byNode[node.Name])
	}

	spec := sigilv1.SigilNodeSpec{InternalIP: internalIP(&node)}
	spec.TunnelEndpoint = spec.InternalIP
	if a := node.Annotations[AnnotationTunnelEndpoint]; a != "" {
		if ip, err := netip.ParseAddr(a); err == nil {
			spec.TunnelEndpoint = ip.String()
		} else {
			r.Recorder.Eventf(&node, nil, corev1.EventTypeWarning, "BadTunnelEndpoint", "Reconcile",
				"annotation %s=%q is not an IP address; using the InternalIP", AnnotationTunnelEndpoint, a)
		}
	}

	cond := metav1.Condition{Type: sigilv1.NodeConditionPodCIDRsAllocated, Status: metav1.ConditionTrue,
		Reason: sigilv1.NodeReasonAllocated, ObservedGeneration: node.Generation}
	var fresh []netip.Prefix // allocated by this reconcile, to undo on failure
	var result reconcile.Result
	switch r.Mode {
	case IPAMKubernetes:
		spec.PodCIDRs = slices.Clone(node.Spec.PodCIDRs)
		if len(spec.PodCIDRs) == 0 {
			cond.Status, cond.Reason = metav1.ConditionFalse, sigilv1.NodeReasonNoPodCIDR
			cond.Message = "node.spec.podCIDRs is empty; is kube-controller-manager running with --allocate-node-cidrs?"
		}
	default:
		spec.PodCIDRs = slices.Clone(cur.Spec.PodCIDRs)
		var missing []string
		for _, p := range r.Pools {
			if hasFamily(spec.PodCIDRs, p.Prefix().Addr().Is4()) {
				continue
			}
			blk, err := p.Allocate()
			if err != nil {
				if !errors.Is(err, cidrpool.ErrExhausted) {
					return reconcile.Result{}, err
				}
				missing = append(missing, err.Error())
				continue
			}
			fresh = append(fresh, blk)
			spec.PodCIDRs = append(spec.PodCIDRs, blk.String())
		}
		if len(missing) > 0 {
			cond.Status, cond.Reason = metav1.ConditionFalse, sigilv1.NodeReasonPoolExhausted
			cond.Message = "no free pod CIDR for this node: " + strings.Join(missing, "; ")
			result.RequeueAfter = exhaustedRetry
			r.waiting[node.Name] = true
		} else {
			delete(r.waiting, node.Name)
		}
	}

	want := &sigilv1.SigilNode{
		ObjectMeta: metav1.ObjectMeta{
			Name: node.Name,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
				Controller: new(true), BlockOwnerDeletion: new(false)}},
		},
		Spec: spec,
	}
	undo := func() {
		for _, blk := range fresh {
			for _, p := range r.Pools {
				p.Release(blk)
			}
		}
	}
	var err error
	if !exists {
		err = r.Client.Create(ctx, want)
		cur = *want
	} else if !slices.Equal(cur.Spec.PodCIDRs, spec.PodCIDRs) || cur.Spec.InternalIP != spec.InternalIP ||
		cur.Spec.TunnelEndpoint != spec.TunnelEndpoint || !ownedBy(cur.OwnerReferences, node.UID) {
		upd := cur.DeepCopy()
		upd.Spec, upd.OwnerReferences = spec, want.OwnerReferences
		err = r.Client.Update(ctx, upd)
		cur = *upd
	}
	if err != nil {
		undo()
		return reconcile.Result{}, err
	}
	if r.Mode == IPAMClusterPool {
		r.track(ctx, node.Name, spec.PodCIDRs, fresh)
	}
	if cond.Status == metav1.ConditionFalse {
		r.Recorder.Eventf(&node, nil, corev1.EventTypeWarning, cond.Reason, "AllocatePodCIDR", "%s", cond.Message)
	}
	if meta.SetStatusCondition(&cur.Status.Conditions, cond) {
		if err := r.Client.Status().Update(ctx, &cur); err != nil {
			return reconcile.Result{}, err
		}
	}
	return result, nil
}

func ownedBy(refs []metav1.OwnerReference, uid types.UID) bool {
	return len(refs) == 1 && refs[0].UID == uid
}

func hasFamily(cidrs []string, v4 bool) bool {
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() == v4 {
			return true
		}
	}
	return false
}

// track records the blocks a node now holds: blocks it gained other than
// the fresh ones (written by someone else) are occupied, blocks it lost are
// released.
func (r *NodeReconciler) track(ctx context.Context, node string, cidrs []string, fresh []netip.Prefix) {
	now := prefixesInPools(r.Pools, cidrs)
	old := r.byNode[node]
	for _, pfx := range old {
		if !slices.Contains(now, pfx) {
			for _, p := range r.Pools {
				p.Release(pfx)
			}
		}
	}
	var gained []string
	for _, pfx := range now {
		if !slices.Contains(old, pfx) && !slices.Contains(fresh, pfx) {
			gained = append(gained, pfx.String())
		}
	}
	r.occupy(ctx, node, gained)
	r.byNode[node] = now
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func prefixesInPools(pools []*cidrpool.Pool, cidrs []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		for _, pool := range pools {
			if pool.Contains(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// internalIP returns the node's first InternalIP address, or "".
func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				return ip.String()
			}
		}
	}
	return ""
}

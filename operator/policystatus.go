package operator

import (
	"context"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/operator/identityalloc"
	"github.com/sigil-net/sigil/policy"
)

// Reasons of the Valid condition the operator writes.
const (
	ReasonPolicyValid   = "Valid"
	ReasonPolicyInvalid = "Invalid"
)

// PolicyStatusReconciler validates policies with the same translators the
// agents use. For SigilNetworkPolicy and SigilClusterwideNetworkPolicy it
// server-side applies (field manager FieldOwner) status.observedGeneration,
// the Valid condition and status.selectedEndpoints, leaving the fields the
// agents report (CapacityExceeded, endpointsOverCapacity) to them.
// networking.k8s.io/v1 NetworkPolicy has no status in this API version, so
// its validity is reported as an Event on the object, once per generation.
type PolicyStatusReconciler struct {
	Client   client.Client
	Recorder recorder.EventRecorder

	mu       sync.Mutex
	reported map[types.NamespacedName]reportedGen // per NetworkPolicy
}

// reportedGen is the NetworkPolicy object and generation last reported.
type reportedGen struct {
	uid types.UID
	gen int64
}

// SetupWithManager registers one controller per policy kind. Endpoint
// changes re-count the policies that may select them.
func (r *PolicyStatusReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.reported = map[types.NamespacedName]reportedGen{}
	gen := builder.WithPredicates(predicate.GenerationChangedPredicate{})
	if err := ctrl.NewControllerManagedBy(mgr).Named("policy-status").
		For(&sigilv1.SigilNetworkPolicy{}, gen).
		Watches(&sigilv1.SigilEndpoint{}, handler.EnqueueRequestsFromMapFunc(r.namespacedPolicies)).
		Complete(reconcile.Func(r.reconcileNamespaced)); err != nil {
		return err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("clusterwide-policy-status").
		For(&sigilv1.SigilClusterwideNetworkPolicy{}, gen).
		Watches(&sigilv1.SigilEndpoint{}, handler.EnqueueRequestsFromMapFunc(r.clusterwidePolicies)).
		Complete(reconcile.Func(r.reconcileClusterwide)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).Named("networkpolicy-status").
		For(&networkingv1.NetworkPolicy{}, gen).
		Complete(reconcile.Func(r.reconcileNetworkPolicy))
}

func (r *PolicyStatusReconciler) namespacedPolicies(ctx context.Context, o client.Object) []reconcile.Request {
	var list sigilv1.SigilNetworkPolicyList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	out := make([]reconcile.Request, len(list.Items))
	for i := range list.Items {
		out[i].NamespacedName = client.ObjectKeyFromObject(&list.Items[i])
	}
	return out
}

func (r *PolicyStatusReconciler) clusterwidePolicies(ctx context.Context, _ client.Object) []reconcile.Request {
	var list sigilv1.SigilClusterwideNetworkPolicyList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil
	}
	out := make([]reconcile.Request, len(list.Items))
	for i := range list.Items {
		out[i].NamespacedName = client.ObjectKeyFromObject(&list.Items[i])
	}
	return out
}

func (r *PolicyStatusReconciler) reconcileNamespaced(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var p sigilv1.SigilNetworkPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &p); err != nil {
		return reconcile.Result{}, ignoreNotFound(err)
	}
	pol, err := policy.FromSigilPolicy(&p)
	return r.report(ctx, &p, "SigilNetworkPolicy", p.Generation, &p.Status, pol, err)
}

func (r *PolicyStatusReconciler) reconcileClusterwide(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var p sigilv1.SigilClusterwideNetworkPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &p); err != nil {
		return reconcile.Result{}, ignoreNotFound(err)
	}
	pol, err := policy.FromSigilClusterwidePolicy(&p)
	return r.report(ctx, &p, "SigilClusterwideNetworkPolicy", p.Generation, &p.Status, pol, err)
}

// report applies the Valid condition and the selected endpoint count.
func (r *PolicyStatusReconciler) report(ctx context.Context, obj client.Object, kind string, gen int64,
	prev *sigilv1.PolicyStatus, pol *policy.Policy, perr error) (reconcile.Result, error) {
	cond := metav1.Condition{Type: sigilv1.ConditionValid, Status: metav1.ConditionTrue, Reason: ReasonPolicyValid,
		Message: "policy accepted", ObservedGeneration: gen}
	var count int32
	var result reconcile.Result
	if perr != nil {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, ReasonPolicyInvalid, perr.Error()
	} else {
		n, complete, err := r.countSelected(ctx, pol.Subject, obj.GetNamespace())
		if err != nil {
			return reconcile.Result{}, err
		}
		if !complete {
			result.RequeueAfter = time.Second // an identity is not cached yet
		}
		count = n
	}
	old := meta.FindStatusCondition(prev.Conditions, sigilv1.ConditionValid)
	if old != nil && old.Status == cond.Status && old.Reason == cond.Reason && old.Message == cond.Message &&
		old.ObservedGeneration == gen && prev.ObservedGeneration == gen && prev.SelectedEndpoints == count {
		return result, nil
	}
	cond.LastTransitionTime = metav1.Now()
	if old != nil && old.Status == cond.Status {
		cond.LastTransitionTime = old.LastTransitionTime
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": sigilv1.GroupVersion.String(),
		"kind":       kind,
		"metadata":   map[string]any{"name": obj.GetName()},
		"status": map[string]any{
			"observedGeneration": gen,
			"selectedEndpoints":  int64(count),
			"conditions": []any{map[string]any{
				"type":               cond.Type,
				"status":             string(cond.Status),
				"reason":             cond.Reason,
				"message":            cond.Message,
				"observedGeneration": gen,
				"lastTransitionTime": cond.LastTransitionTime.UTC().Format(time.RFC3339),
			}},
		},
	}}
	if ns := obj.GetNamespace(); ns != "" {
		u.Object["metadata"].(map[string]any)["namespace"] = ns
	}
	if perr != nil && (old == nil || old.Status != cond.Status || old.Message != cond.Message) {
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, ReasonPolicyInvalid, "Validate", "%s", perr.Error())
	}
	err := r.Client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(FieldOwner), client.ForceOwnership)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	return result, err
}

// countSelected counts the SigilEndpoints (of namespace ns, or all when ns
// is "") whose identity's labels sel matches; complete is false when some
// endpoint's identity is not in the cache yet.
func (r *PolicyStatusReconciler) countSelected(ctx context.Context, sel policy.Selector, ns string) (int32, bool, error) {
	var eps sigilv1.SigilEndpointList
	var opts []client.ListOption
	if ns != "" {
		opts = append(opts, client.InNamespace(ns))
	}
	if err := r.Client.List(ctx, &eps, opts...); err != nil {
		return 0, false, err
	}
	labels := map[int64]identity.Labels{}
	var n int32
	complete := true
	for i := range eps.Items {
		id := eps.Items[i].Status.Identity
		l, ok := labels[id]
		if !ok {
			var obj sigilv1.SigilIdentity
			if err := r.Client.Get(ctx, client.ObjectKey{Name: identityalloc.Name(datapath.Identity(id))}, &obj); err != nil {
				if apierrors.IsNotFound(err) {
					complete = false
					continue
				}
				return 0, false, err
			}
			l = obj.Spec.SecurityLabels
			labels[id] = l
		}
		if sel.Matches(l) {
			n++
		}
	}
	return n, complete, nil
}

// reconcileNetworkPolicy reports a NetworkPolicy's validity as an Event,
// once per generation.
func (r *PolicyStatusReconciler) reconcileNetworkPolicy(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var np networkingv1.NetworkPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &np); err != nil {
		if apierrors.IsNotFound(err) {
			r.mu.Lock()
			delete(r.reported, req.NamespacedName)
			r.mu.Unlock()
		}
		return reconcile.Result{}, ignoreNotFound(err)
	}
	r.mu.Lock()
	done := r.reported[req.NamespacedName] == reportedGen{np.UID, np.Generation}
	r.mu.Unlock()
	if done {
		return reconcile.Result{}, nil
	}
	pol, err := policy.FromNetworkPolicy(&np)
	if err != nil {
		r.Recorder.Eventf(&np, nil, corev1.EventTypeWarning, ReasonPolicyInvalid, "Validate",
			"generation %d is not enforced by Sigil: %v", np.Generation, err)
	} else {
		n, _, cerr := r.countSelected(ctx, pol.Subject, np.Namespace)
		if cerr != nil {
			return reconcile.Result{}, cerr
		}
		r.Recorder.Eventf(&np, nil, corev1.EventTypeNormal, ReasonPolicyValid, "Validate",
			"generation %d accepted by Sigil; selects %s endpoints", np.Generation, strconv.Itoa(int(n)))
	}
	r.mu.Lock()
	r.reported[req.NamespacedName] = reportedGen{np.UID, np.Generation}
	r.mu.Unlock()
	return reconcile.Result{}, nil
}

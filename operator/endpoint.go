package operator

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

// EndpointReconciler allocates the identity of every live pod's security
// labels and keeps a SigilEndpoint for each pod that has IPs and does not
// use the host network.
type EndpointReconciler struct {
	Client   client.Client
	Recorder recorder.EventRecorder
	Filter   identity.Filter
	Range    identityalloc.Range
	Workers  int
}

// SetupWithManager watches pods, their SigilEndpoints and namespaces
// (namespace labels are part of every pod's security labels).
func (r *EndpointReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("endpoint").
		For(&corev1.Pod{}).
		Owns(&sigilv1.SigilEndpoint{}).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.podsOfNamespace)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Workers}).
		Complete(r)
}

func (r *EndpointReconciler) podsOfNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(o.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "listing pods of namespace", "namespace", o.GetName())
		return nil
	}
	out := make([]reconcile.Request, 0, len(pods.Items))
	for i := range pods.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&pods.Items[i])})
	}
	return out
}

// PodManaged reports whether a pod gets an identity: it does not use the
// host network and has not terminated.
func PodManaged(p *corev1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// Reconcile implements reconcile.Reconciler.
func (r *EndpointReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var pod corev1.Pod
	if err := r.Client.Get(ctx, req.NamespacedName, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return reconcile.Result{}, r.deleteEndpoint(ctx, req.NamespacedName, "")
		}
		return reconcile.Result{}, err
	}
	if !PodManaged(&pod) {
		return reconcile.Result{}, r.deleteEndpoint(ctx, req.NamespacedName, pod.UID)
	}
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, client.ObjectKey{Name: pod.Namespace}, &ns); err != nil {
		return reconcile.Result{}, ignoreNotFound(err) // namespace gone: pods follow
	}
	lbls := r.Filter.SecurityLabels(pod.Namespace, pod.Labels, ns.Labels)
	id, err := r.Range.Allocate(ctx, r.Client, lbls)
	if err != nil {
		r.Recorder.Eventf(&pod, nil, corev1.EventTypeWarning, "IdentityAllocationFailed", "AllocateIdentity", "%v", err)
		return reconcile.Result{}, fmt.Errorf("allocating identity: %w", err)
	}
	ips := podIPs(&pod)
	if len(ips) == 0 || pod.Spec.NodeName == "" {
		return reconcile.Result{}, r.deleteEndpoint(ctx, req.NamespacedName, pod.UID)
	}
	want := &sigilv1.SigilEndpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace,
			Labels: map[string]string{identityalloc.LabelLabelsHash: lbls.Hash()},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
				Controller: new(true), BlockOwnerDeletion: new(false),
			}},
		},
		Status: sigilv1.SigilEndpointStatus{
			Identity:   int64(id),
			LabelsHash: lbls.Hash(),
			NodeName:   pod.Spec.NodeName,
			IPs:        ips,
			NamedPorts: NamedPorts(&pod),
		},
	}
	var cur sigilv1.SigilEndpoint
	err = r.Client.Get(ctx, req.NamespacedName, &cur)
	switch {
	case apierrors.IsNotFound(err):
		if err := r.Client.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			return reconcile.Result{}, err
		} else if err != nil {
			return reconcile.Result{RequeueAfter: 100 * time.Millisecond}, nil // the cache lags a create of ours
		}
		return reconcile.Result{}, nil
	case err != nil:
		return reconcile.Result{}, err
	}
	if endpointEqual(&cur, want) {
		return reconcile.Result{}, nil
	}
	upd := cur.DeepCopy()
	upd.Labels = mergeLabels(upd.Labels, want.Labels)
	upd.OwnerReferences = want.OwnerReferences
	upd.Status = want.Status
	return reconcile.Result{}, r.Client.Update(ctx, upd)
}

// deleteEndpoint deletes the SigilEndpoint of a pod; with podUID set, only
// one owned by that pod or by nobody (a pod recreated under the same name
// gets its endpoint rewritten instead).
func (r *EndpointReconciler) deleteEndpoint(ctx context.Context, key types.NamespacedName, podUID types.UID) error {
	var cur sigilv1.SigilEndpoint
	if err := r.Client.Get(ctx, key, &cur); err != nil {
		return ignoreNotFound(err)
	}
	if podUID != "" {
		for _, o := range cur.OwnerReferences {
			if o.Kind == "Pod" && o.UID != podUID {
				return nil
			}
		}
	}
	return ignoreNotFound(r.Client.Delete(ctx, &cur, client.Preconditions{UID: &cur.UID}))
}

func endpointEqual(cur, want *sigilv1.SigilEndpoint) bool {
	if cur.Labels[identityalloc.LabelLabelsHash] != want.Labels[identityalloc.LabelLabelsHash] ||
		len(cur.OwnerReferences) != 1 || cur.OwnerReferences[0].UID != want.OwnerReferences[0].UID {
		return false
	}
	a, b := cur.Status, want.Status
	return a.Identity == b.Identity && a.LabelsHash == b.LabelsHash && a.NodeName == b.NodeName &&
		slices.Equal(a.IPs, b.IPs) && slices.Equal(a.NamedPorts, b.NamedPorts)
}

func mergeLabels(dst, src map[string]string) map[string]string {
	if dst == nil {
		dst = map[string]string{}
	}
	for k, v := range src {
		dst[k] = v
	}
	return dst
}

// podIPs returns the pod's valid addresses, at most one per family.
func podIPs(p *corev1.Pod) []string {
	var out []string
	var v4, v6 bool
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		a = a.Unmap()
		if (a.Is4() && v4) || (a.Is6() && v6) {
			return
		}
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
		out = append(out, a.String())
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		add(p.Status.PodIP)
	}
	return out
}

// NamedPorts returns the named container ports of a pod (regular
// containers and restartable init containers, i.e. sidecars), sorted by
// name and protocol; the first definition of a name and protocol wins.
func NamedPorts(p *corev1.Pod) []sigilv1.NamedPort {
	type key struct{ name, proto string }
	seen := map[key]bool{}
	var out []sigilv1.NamedPort
	add := func(cs []corev1.Container, sidecarsOnly bool) {
		for _, c := range cs {
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, cp := range c.Ports {
				if cp.Name == "" || cp.ContainerPort <= 0 {
					continue
				}
				proto := string(cp.Protocol)
				if proto == "" {
					proto = string(corev1.ProtocolTCP)
				}
				k := key{cp.Name, proto}
				if seen[k] {
					continue
				}
				seen[k] = true
				out = append(out, sigilv1.NamedPort{Name: cp.Name, Port: cp.ContainerPort, Protocol: proto})
			}
		}
	}
	add(p.Spec.Containers, false)
	add(p.Spec.InitContainers, true)
	slices.SortFunc(out, func(a, b sigilv1.NamedPort) int {
		if a.Name != b.Name {
			if a.Name < b.Name {
				return -1
			}
			return 1
		}
		if a.Protocol < b.Protocol {
			return -1
		} else if a.Protocol > b.Protocol {
			return 1
		}
		return 0
	})
	return out
}

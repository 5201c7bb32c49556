package operator_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/operator"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

// identitiesInNamespace lists the SigilIdentities of ns's label sets.
func identitiesInNamespace(ctx context.Context, c client.Client, ns string) (map[datapath.Identity]identity.Labels, error) {
	var list sigilv1.SigilIdentityList
	if err := c.List(ctx, &list); err != nil {
		return nil, err
	}
	out := map[datapath.Identity]identity.Labels{}
	for _, it := range list.Items {
		l := identity.Labels(it.Spec.SecurityLabels)
		if l.Namespace() == ns {
			out[datapath.Identity(it.Spec.ID)] = l
		}
	}
	return out, nil
}

// TestIdentitiesAndEndpoints: 200 pods over 20 label sets (with noise
// labels that must not split identities) give exactly 20 identities, while
// 4 agents allocate the same label sets concurrently and must agree; every
// pod with an IP gets a SigilEndpoint; hostNetwork and IP-less pods do not.
func TestIdentitiesAndEndpoints(t *testing.T) {
	e := k8stest.StartEnv(t)
	c := e.Client
	ctx := context.Background()
	ns := k8stest.Namespace(t, c)
	startOperator(t, e.Config, operator.Options{IdentityGCGrace: time.Hour}, "")

	const pods, sets = 200, 20
	var nsObj corev1.Namespace
	must(t, c.Get(ctx, client.ObjectKey{Name: ns}, &nsObj))
	filter := identity.NewFilter()
	setLabels := func(s int) map[string]string { return map[string]string{"app": fmt.Sprintf("app-%d", s), "tier": "t"} }

	// Agents race the operator for the same label sets.
	agentIDs := make([][4]datapath.Identity, sets)
	var wg sync.WaitGroup
	var agentErr error
	var mu sync.Mutex
	for a := 0; a < 4; a++ {
		ac, err := client.New(e.Config, client.Options{Scheme: e.Scheme})
		must(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := 0; s < sets; s++ {
				id, err := identityalloc.Allocate(ctx, ac, filter.SecurityLabels(ns, setLabels(s), nsObj.Labels))
				mu.Lock()
				if err != nil && agentErr == nil {
					agentErr = err
				}
				agentIDs[s][a] = id
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < pods; i++ {
		l := setLabels(i % sets)
		l["pod-template-hash"] = fmt.Sprintf("h%d", i) // noise
		node := fmt.Sprintf("node-%d", i%5)
		p := newPod(ns, fmt.Sprintf("p-%d", i), node, l)
		must(t, c.Create(ctx, p))
		must(t, setPodIP(ctx, c, p, podAddr(10, i)))
	}
	// A hostNetwork pod and a pod without an IP get no endpoint.
	hp := newPod(ns, "hostnet", "node-0", setLabels(0))
	hp.Spec.HostNetwork = true
	must(t, c.Create(ctx, hp))
	must(t, setPodIP(ctx, c, hp, podAddr(20, 0)))
	pending := newPod(ns, "pending", "", map[string]string{"app": "pending"})
	must(t, c.Create(ctx, pending))
	wg.Wait()
	must(t, agentErr)

	eventually(t, "200 endpoints", func() (bool, error) {
		var eps sigilv1.SigilEndpointList
		if err := c.List(ctx, &eps, client.InNamespace(ns)); err != nil {
			return false, err
		}
		return len(eps.Items) == pods, nil
	})
	// The pending pod's label set has an identity too: 21 in all.
	var ids map[datapath.Identity]identity.Labels
	eventually(t, "21 identities", func() (bool, error) {
		var err error
		ids, err = identitiesInNamespace(ctx, c, ns)
		return len(ids) == sets+1, err
	})
	byHash := map[string]datapath.Identity{}
	for id, l := range ids {
		byHash[l.Hash()] = id
	}
	for s := 0; s < sets; s++ {
		want := byHash[filter.SecurityLabels(ns, setLabels(s), nsObj.Labels).Hash()]
		for a := range agentIDs[s] {
			if agentIDs[s][a] != want {
				t.Fatalf("set %d: agent %d got identity %d, the cluster has %d", s, a, agentIDs[s][a], want)
			}
		}
	}

	var eps sigilv1.SigilEndpointList
	must(t, c.List(ctx, &eps, client.InNamespace(ns)))
	for _, ep := range eps.Items {
		var p corev1.Pod
		must(t, c.Get(ctx, client.ObjectKey{Namespace: ns, Name: ep.Name}, &p))
		lbls := filter.SecurityLabels(ns, p.Labels, nsObj.Labels)
		switch {
		case datapath.Identity(ep.Status.Identity) != byHash[lbls.Hash()]:
			t.Fatalf("%s: identity %d, want %d", ep.Name, ep.Status.Identity, byHash[lbls.Hash()])
		case ep.Status.NodeName != p.Spec.NodeName || len(ep.Status.IPs) != 1 || ep.Status.IPs[0] != p.Status.PodIP:
			t.Fatalf("%s: node %q ips %v, want %q [%s]", ep.Name, ep.Status.NodeName, ep.Status.IPs, p.Spec.NodeName, p.Status.PodIP)
		case len(ep.Status.NamedPorts) != 1 || ep.Status.NamedPorts[0] != (sigilv1.NamedPort{Name: "http", Port: 8080, Protocol: "TCP"}):
			t.Fatalf("%s: named ports %+v", ep.Name, ep.Status.NamedPorts)
		case ep.Labels[identityalloc.LabelLabelsHash] != lbls.Hash() || ep.Status.LabelsHash != lbls.Hash():
			t.Fatalf("%s: labels hash not recorded", ep.Name)
		case len(ep.OwnerReferences) != 1 || ep.OwnerReferences[0].UID != p.UID:
			t.Fatalf("%s: owner %+v, want pod %s", ep.Name, ep.OwnerReferences, p.UID)
		}
	}

	// A label change moves the pod to another identity; deleting the pod
	// deletes its endpoint (envtest has no garbage collector: the operator
	// does it itself).
	var p0 corev1.Pod
	must(t, c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p-0"}, &p0))
	p0.Labels["app"] = "app-1"
	must(t, c.Update(ctx, &p0))
	want := byHash[filter.SecurityLabels(ns, setLabels(1), nsObj.Labels).Hash()]
	eventually(t, "p-0 relabeled", func() (bool, error) {
		var ep sigilv1.SigilEndpoint
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p-0"}, &ep)
		return err == nil && datapath.Identity(ep.Status.Identity) == want, err
	})
	must(t, c.Delete(ctx, &p0, client.GracePeriodSeconds(0)))
	eventually(t, "p-0 endpoint deleted", func() (bool, error) {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p-0"}, &sigilv1.SigilEndpoint{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	})
	// A namespace label change gives all its pods new identities.
	nsObj.Labels["team"] = "blue"
	must(t, c.Update(ctx, &nsObj))
	eventually(t, "namespace relabel", func() (bool, error) {
		var ep sigilv1.SigilEndpoint
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p-1"}, &ep); err != nil {
			return false, err
		}
		var id sigilv1.SigilIdentity
		if err := c.Get(ctx, client.ObjectKey{Name: identityalloc.Name(datapath.Identity(ep.Status.Identity))}, &id); err != nil {
			return false, err
		}
		return id.Spec.SecurityLabels[identity.K8sKey(identity.LabelNamespaceLabelsPrefix+"team")] == "blue", nil
	})
	for _, name := range []string{"hostnet", "pending"} {
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &sigilv1.SigilEndpoint{}); !apierrors.IsNotFound(err) {
			t.Fatalf("%s has an endpoint (err %v)", name, err)
		}
	}
}

// TestIdentityGC: identities whose pods are gone are deleted after the
// grace period; those still used by a pod are kept, also past the grace.
func TestIdentityGC(t *testing.T) {
	e := k8stest.StartEnv(t)
	c := e.Client
	ctx := context.Background()
	ns := k8stest.Namespace(t, c)
	const grace = 2 * time.Second
	startOperator(t, e.Config, operator.Options{IdentityGCGrace: grace, IdentityGCInterval: 300 * time.Millisecond}, "")

	keep := newPod(ns, "keep", "node-0", map[string]string{"app": "keep"})
	gone := newPod(ns, "gone", "node-0", map[string]string{"app": "gone"})
	noIP := newPod(ns, "noip", "", map[string]string{"app": "no-ip-yet"})
	for i, p := range []*corev1.Pod{keep, gone, noIP} {
		must(t, c.Create(ctx, p))
		if p != noIP {
			must(t, setPodIP(ctx, c, p, podAddr(30, i)))
		}
	}
	// An identity an agent allocated for a pod that never came.
	orphan, err := identityalloc.Allocate(ctx, c, identity.Labels{identity.K8sKey(identity.LabelNamespace): ns, "k8s:app": "orphan"})
	must(t, err)
	var ids map[datapath.Identity]identity.Labels
	eventually(t, "4 identities", func() (bool, error) {
		var err error
		ids, err = identitiesInNamespace(ctx, c, ns)
		return len(ids) == 4, err
	})
	idOf := map[string]datapath.Identity{}
	for id, l := range ids {
		idOf[l["k8s:app"]] = id
	}
	must(t, c.Delete(ctx, gone, client.GracePeriodSeconds(0)))
	start := time.Now()
	eventually(t, "unused identity collected", func() (bool, error) {
		ids, err := identitiesInNamespace(ctx, c, ns)
		_, g := ids[idOf["gone"]]
		return !g, err
	})
	if el := time.Since(start); el < grace {
		t.Fatalf("collected %v after its pod went, before the %v grace period", el, grace)
	}
	eventually(t, "orphan identity collected", func() (bool, error) {
		ids, err := identitiesInNamespace(ctx, c, ns)
		_, o := ids[orphan]
		return !o, err
	})
	time.Sleep(grace) // past another grace period, the used ones stay
	ids, err = identitiesInNamespace(ctx, c, ns)
	must(t, err)
	for _, app := range []string{"keep", "no-ip-yet"} {
		if _, ok := ids[idOf[app]]; !ok {
			t.Fatalf("identity of %s (%d) was collected while in use", app, idOf[app])
		}
		var obj sigilv1.SigilIdentity
		must(t, c.Get(ctx, client.ObjectKey{Name: identityalloc.Name(idOf[app])}, &obj))
		if _, marked := obj.Annotations[identityalloc.AnnotationUnusedSince]; marked {
			t.Fatalf("identity of %s marked unused", app)
		}
	}
}

// TestNamedPorts covers sidecars, protocols and duplicates.
func TestNamedPorts(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	for _, tc := range []struct {
		name string
		spec corev1.PodSpec
		want []sigilv1.NamedPort
	}{
		{"none", corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{ContainerPort: 80}}}}}, nil},
		{"tcp default and udp", corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
			{Name: "web", ContainerPort: 80}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}},
			[]sigilv1.NamedPort{{Name: "dns", Port: 53, Protocol: "UDP"}, {Name: "web", Port: 80, Protocol: "TCP"}}},
		{"first wins", corev1.PodSpec{Containers: []corev1.Container{
			{Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 80}}},
			{Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 81}}}}},
			[]sigilv1.NamedPort{{Name: "web", Port: 80, Protocol: "TCP"}}},
		{"sidecar yes, init no", corev1.PodSpec{InitContainers: []corev1.Container{
			{Ports: []corev1.ContainerPort{{Name: "init", ContainerPort: 1}}},
			{RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "side", ContainerPort: 2}}}}},
			[]sigilv1.NamedPort{{Name: "side", Port: 2, Protocol: "TCP"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := operator.NamedPorts(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: tc.spec})
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

package operator_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/operator"
)

// createYAML creates an object written as YAML, as kubectl would send it.
func createYAML(ctx context.Context, c client.Client, doc string) error {
	var u unstructured.Unstructured
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		return err
	}
	return c.Create(ctx, &u)
}

func snpYAML(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: sigil.io/v1alpha1\nkind: SigilNetworkPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n%s", name, ns, spec)
}

// TestPolicySchemaRefusals: invalid SigilNetworkPolicies are refused by the
// API server with messages that say what is wrong.
func TestPolicySchemaRefusals(t *testing.T) {
	_, c := k8stest.Start(t)
	ctx := context.Background()
	ns := k8stest.Namespace(t, c)
	for i, tc := range []struct {
		name, spec, wantErr string
	}{
		{"two peer kinds", "  endpointSelector: {}\n  ingress: [{from: [{entity: world, cidr: 10.0.0.0/8}]}]\n", "exactly one of endpoints, cidr or entity"},
		{"unknown entity", "  endpointSelector: {}\n  egress: [{to: [{entity: moon}]}]\n", `Unsupported value: "moon"`},
		{"bad cidr", "  endpointSelector: {}\n  egress: [{to: [{cidr: 10.0.0.0/33}]}]\n", "cidr must be a prefix"},
		{"except outside cidr", "  endpointSelector: {}\n  egress: [{to: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]\n", "must lie inside cidr"},
		{"endPort below port", "  endpointSelector: {}\n  egress: [{to: [{entity: all}], toPorts: [{port: 90, endPort: 80}]}]\n", "endPort must not be below port"},
		{"no endpointSelector", "  ingress: [{}]\n", "spec.endpointSelector: Required value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := createYAML(ctx, c, snpYAML(ns, fmt.Sprintf("bad-%d", i), tc.spec))
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want Invalid mentioning %q", err, tc.wantErr)
			}
		})
	}
}

// TestPolicyStatus: the operator writes Valid and selectedEndpoints for
// Sigil policies (Valid=False with the reason for what only Validate
// catches), keeps the count current as endpoints come, and reports
// NetworkPolicies through Events.
func TestPolicyStatus(t *testing.T) {
	e := k8stest.StartEnv(t)
	c := e.Client
	ctx := context.Background()
	ns1, ns2 := k8stest.Namespace(t, c), k8stest.Namespace(t, c)
	startOperator(t, e.Config, operator.Options{IdentityGCGrace: time.Hour}, "")
	ip := 0
	addPod := func(ns, name, app string) {
		p := newPod(ns, name, "node-0", map[string]string{"app": app, "run": ns1})
		must(t, c.Create(ctx, p))
		must(t, setPodIP(ctx, c, p, podAddr(40, ip)))
		ip++
	}
	for i := 0; i < 3; i++ {
		addPod(ns1, fmt.Sprintf("web-%d", i), "web")
	}
	addPod(ns1, "db", "db")
	addPod(ns2, "web-x", "web")

	must(t, createYAML(ctx, c, snpYAML(ns1, "web", "  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{entity: world}]}]\n")))
	must(t, createYAML(ctx, c, snpYAML(ns1, "bad-values", "  endpointSelector: {matchExpressions: [{key: app, operator: In}]}\n")))
	must(t, createYAML(ctx, c, snpYAML(ns1, "bad-key", "  endpointSelector: {matchLabels: {\"bad key!\": x}}\n")))
	scnpName := "web-" + ns1
	must(t, createYAML(ctx, c, fmt.Sprintf("apiVersion: sigil.io/v1alpha1\nkind: SigilClusterwideNetworkPolicy\nmetadata: {name: %s}\nspec:\n  endpointSelector: {matchLabels: {app: web, run: %s}}\n  egress: [{to: [{entity: all}]}]\n", scnpName, ns1)))
	t.Cleanup(func() {
		_ = c.Delete(context.Background(), &sigilv1.SigilClusterwideNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: scnpName}})
	})
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: "np"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}}
	must(t, c.Create(ctx, np))

	status := func(obj client.Object, st *sigilv1.PolicyStatus) (*metav1.Condition, int32, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return nil, 0, err
		}
		return meta.FindStatusCondition(st.Conditions, sigilv1.ConditionValid), st.SelectedEndpoints, nil
	}
	for _, tc := range []struct {
		name  string
		obj   client.Object
		st    func(client.Object) *sigilv1.PolicyStatus
		valid metav1.ConditionStatus
		msg   string
		count int32
	}{
		{"selects 3", &sigilv1.SigilNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: "web"}},
			func(o client.Object) *sigilv1.PolicyStatus { return &o.(*sigilv1.SigilNetworkPolicy).Status }, metav1.ConditionTrue, "", 3},
		{"In without values", &sigilv1.SigilNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: "bad-values"}},
			func(o client.Object) *sigilv1.PolicyStatus { return &o.(*sigilv1.SigilNetworkPolicy).Status }, metav1.ConditionFalse,
			"spec.endpointSelector.matchExpressions[0].values: Required value", 0},
		{"bad label key", &sigilv1.SigilNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: "bad-key"}},
			func(o client.Object) *sigilv1.PolicyStatus { return &o.(*sigilv1.SigilNetworkPolicy).Status }, metav1.ConditionFalse,
			"spec.endpointSelector.matchLabels: Invalid value: \"bad key!\"", 0},
		{"clusterwide selects 4", &sigilv1.SigilClusterwideNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: scnpName}},
			func(o client.Object) *sigilv1.PolicyStatus { return &o.(*sigilv1.SigilClusterwideNetworkPolicy).Status }, metav1.ConditionTrue, "", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eventually(t, tc.name, func() (bool, error) {
				cond, n, err := status(tc.obj, tc.st(tc.obj))
				if err != nil || cond == nil {
					return false, err
				}
				if cond.Status == tc.valid && !strings.Contains(cond.Message, tc.msg) {
					return false, fmt.Errorf("message %q lacks %q", cond.Message, tc.msg)
				}
				return cond.Status == tc.valid && n == tc.count && tc.st(tc.obj).ObservedGeneration == tc.obj.GetGeneration(), nil
			})
		})
	}
	// A new endpoint updates the counts.
	addPod(ns1, "web-3", "web")
	snp := &sigilv1.SigilNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: "web"}}
	eventually(t, "count follows endpoints", func() (bool, error) {
		_, n, err := status(snp, &snp.Status)
		return n == 4, err
	})
	// The agents' fields survive the operator's server-side apply.
	snp.Status.Conditions = append(snp.Status.Conditions, metav1.Condition{Type: sigilv1.ConditionCapacityExceeded,
		Status: metav1.ConditionFalse, Reason: "Fits", LastTransitionTime: metav1.Now()})
	must(t, c.Status().Update(ctx, snp, client.FieldOwner("sigil-agent")))
	addPod(ns1, "web-4", "web")
	eventually(t, "count 5, agent condition kept", func() (bool, error) {
		_, n, err := status(snp, &snp.Status)
		return n == 5 && meta.FindStatusCondition(snp.Status.Conditions, sigilv1.ConditionCapacityExceeded) != nil, err
	})
	// NetworkPolicy: an Event, since it has no status.
	eventually(t, "NetworkPolicy event", func() (bool, error) {
		return hasEvent(ctx, c, ns1, "NetworkPolicy", "np", operator.ReasonPolicyValid)
	})
}

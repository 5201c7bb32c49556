package operator_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/operator"
)

const leaseNS = "sigil-system"

// installRole creates the generated ClusterRole and Role (rbac/role.yaml)
// and binds them to user.
func installRole(t *testing.T, c client.Client, user string) {
	t.Helper()
	ctx := context.Background()
	raw, err := os.ReadFile(filepath.Join("rbac", "role.yaml"))
	must(t, err)
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		if len(bytes.TrimSpace(bytes.TrimPrefix(doc, []byte("---")))) == 0 {
			continue
		}
		var meta struct{ Kind string }
		must(t, yaml.Unmarshal(doc, &meta))
		subj := []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: user, APIGroup: rbacv1.GroupName}}
		switch meta.Kind {
		case "ClusterRole":
			var cr rbacv1.ClusterRole
			must(t, yaml.Unmarshal(doc, &cr))
			must(t, client.IgnoreAlreadyExists(c.Create(ctx, &cr)))
			must(t, client.IgnoreAlreadyExists(c.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}, Subjects: subj})))
		case "Role":
			var r rbacv1.Role
			must(t, yaml.Unmarshal(doc, &r))
			if r.Namespace != leaseNS {
				t.Fatalf("Role in namespace %q, want %q", r.Namespace, leaseNS)
			}
			must(t, client.IgnoreAlreadyExists(c.Create(ctx, &r)))
			must(t, client.IgnoreAlreadyExists(c.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: leaseNS},
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.Name}, Subjects: subj})))
		default:
			t.Fatalf("unexpected kind %q in role.yaml", meta.Kind)
		}
	}
}

func elected(m ctrl.Manager) bool {
	select {
	case <-m.Elected():
		return true
	default:
		return false
	}
}

// TestLeastPrivilegeAndLeaderElection runs two operator replicas as a user
// that has only the generated RBAC: one is elected, it does its work with
// those permissions, and when it stops the other takes over. The role
// grants nothing beyond what the operator needs.
func TestLeastPrivilegeAndLeaderElection(t *testing.T) {
	e := k8stest.StartEnv(t)
	c := e.Client
	ctx := context.Background()
	const user = "sigil-operator-test"
	installRole(t, c, user)
	ucfg, err := e.UserConfig(user)
	must(t, err)
	uc, err := client.New(ucfg, client.Options{Scheme: e.Scheme})
	must(t, err)

	// What the role must not allow.
	for _, tc := range []struct {
		attrs   authorizationv1.ResourceAttributes
		allowed bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "watch", Resource: "pods"}, true},
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "sigil.io", Resource: "sigilidentities"}, true},
		{authorizationv1.ResourceAttributes{Verb: "update", Resource: "pods"}, false},
		{authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "default"}, false},
		{authorizationv1.ResourceAttributes{Verb: "update", Group: "sigil.io", Resource: "sigilnetworkpolicies"}, false},
		{authorizationv1.ResourceAttributes{Verb: "delete", Resource: "nodes"}, false},
		{authorizationv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: leaseNS}, true},
		{authorizationv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system"}, false},
	} {
		ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &tc.attrs}}
		must(t, uc.Create(ctx, ssar))
		if ssar.Status.Allowed != tc.allowed {
			t.Errorf("%s %s/%s in %q: allowed=%v, want %v", tc.attrs.Verb, tc.attrs.Group, tc.attrs.Resource, tc.attrs.Namespace, ssar.Status.Allowed, tc.allowed)
		}
	}

	resetNodes(t, c)
	opts := operator.Options{IdentityGCGrace: time.Hour}
	m1, stop1 := runOperator(t, ucfg, opts, leaseNS)
	m2, stop2 := runOperator(t, ucfg, opts, leaseNS)
	eventually(t, "a leader", func() (bool, error) { return elected(m1) || elected(m2), nil })
	time.Sleep(time.Second)
	if elected(m1) && elected(m2) {
		t.Fatal("two leaders")
	}
	follower, stopLeader := m2, stop1
	if elected(m2) {
		follower, stopLeader = m1, stop2
	}

	ns := k8stest.Namespace(t, c)
	work := func(i int) {
		t.Helper()
		p := newPod(ns, fmt.Sprintf("p%d", i), "rb-node", map[string]string{"app": fmt.Sprintf("a%d", i)})
		must(t, c.Create(ctx, p))
		must(t, setPodIP(ctx, c, p, podAddr(50, i)))
		createNode(t, c, fmt.Sprintf("rb-node-%d", i), nodeIP(i), nil)
		must(t, createYAML(ctx, c, snpYAML(ns, fmt.Sprintf("p%d", i), "  endpointSelector: {}\n")))
		eventually(t, "endpoint, node and policy status written with the role", func() (bool, error) {
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: p.Name}, &sigilv1.SigilEndpoint{}); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			var sn sigilv1.SigilNode
			if err := c.Get(ctx, client.ObjectKey{Name: fmt.Sprintf("rb-node-%d", i)}, &sn); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			if len(sn.Spec.PodCIDRs) != 1 || len(sn.Status.Conditions) != 1 {
				return false, nil
			}
			var snp sigilv1.SigilNetworkPolicy
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: p.Name}, &snp); err != nil {
				return false, err
			}
			return len(snp.Status.Conditions) == 1 && snp.Status.SelectedEndpoints == int32(i+1), nil
		})
	}
	work(0)
	if elected(follower) {
		t.Fatal("the follower was elected while the leader runs")
	}
	stopLeader()
	eventually(t, "the follower takes over", func() (bool, error) { return elected(follower), nil })
	work(1)
	resetNodes(t, c)
}

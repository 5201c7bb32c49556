package lab

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
)

// demoPods are the demo's workloads: a small shop and a visitor, spread
// over the nodes.
func (l *Lab) demoPods() []PodSpec {
	node := func(i int) string { return l.state.Nodes[i%len(l.state.Nodes)].Name }
	return []PodSpec{
		{Namespace: "shop", Name: "frontend", Labels: map[string]string{"app": "frontend"}, Node: node(0)},
		{Namespace: "shop", Name: "backend", Labels: map[string]string{"app": "backend"}, Node: node(1)},
		{Namespace: "shop", Name: "db", Labels: map[string]string{"app": "db"}, Node: node(0)},
		{Namespace: "guest", Name: "visitor", Labels: map[string]string{"app": "visitor"}, Node: node(1)},
	}
}

// demoPolicies: a standard NetworkPolicy (only the frontend may reach the
// backend), a SigilNetworkPolicy (only the backend may reach the db) and a
// SigilNetworkPolicy on egress (the visitor may only reach the world).
func demoPolicies() []client.Object {
	tcp := corev1.ProtocolTCP
	port80 := intstr.FromInt32(80)
	return []client.Object{
		&networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "backend-from-frontend"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port80}},
				}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			},
		},
		&sigilv1.SigilNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-from-backend"},
			Spec: sigilv1.PolicySpec{
				Description:      "only the backend talks to the database",
				EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []sigilv1.IngressRule{{
					From:    []sigilv1.Peer{{Endpoints: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}}}},
					ToPorts: []sigilv1.PortRule{{Port: &port80, Protocol: sigilv1.ProtocolTCP}},
				}},
			},
		},
		&sigilv1.SigilNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "guest", Name: "visitor-world-only"},
			Spec: sigilv1.PolicySpec{
				Description:      "visitors reach the outside world, not the cluster",
				EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "visitor"}},
				Egress:           []sigilv1.EgressRule{{To: []sigilv1.Peer{{Entity: sigilv1.EntityWorld}}}},
			},
		},
	}
}

// demoExpected is whether client reaches target (a pod name or "world")
// once the demo's policies apply.
func demoExpected(client, target string) bool {
	switch {
	case client == "visitor":
		return target == "world"
	case target == "backend":
		return client == "frontend"
	case target == "db":
		return client == "backend"
	}
	return true
}

// Demo runs the demo: pods, the matrix, policies, the matrix again and the
// dropped flows, naming the policies that dropped them. It fails when the
// datapath does not do what the policies say.
func (l *Lab) Demo(ctx context.Context, w io.Writer) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	// A fresh start: earlier runs' policies would change the first matrix.
	for _, p := range demoPolicies() {
		if err := c.Delete(ctx, p); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	for _, ns := range []string{"shop", "guest"} {
		if err := l.EnsureNamespace(ctx, ns, nil); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "Pods (sigil-probe serving TCP/UDP 80) on %d nodes:\n", len(l.state.Nodes))
	pods, err := l.RunPods(ctx, l.demoPods(), 2*time.Minute)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, p := range pods {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", p, p.IP, p.Node)
	}
	fmt.Fprintf(tw, "  world\t%s\t%s (outside the cluster)\n", ExternalHost, l.cfg.extNS())
	tw.Flush()

	targets, names := demoTargets(pods)
	before, err := l.Matrix(ctx, pods, targets, time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nConnectivity, TCP 80, before any policy:")
	printMatrix(w, pods, names, before, nil)

	fmt.Fprintln(w, "\nApplying:")
	fmt.Fprintln(w, "  NetworkPolicy      shop/backend-from-frontend  only the frontend reaches the backend (TCP 80)")
	fmt.Fprintln(w, "  SigilNetworkPolicy shop/db-from-backend        only the backend reaches the db (TCP 80)")
	fmt.Fprintln(w, "  SigilNetworkPolicy guest/visitor-world-only    the visitor may only reach the world (egress)")
	applied := time.Now()
	for _, p := range demoPolicies() {
		if err := c.Create(ctx, p); err != nil {
			return fmt.Errorf("apply %s: %w", p.GetName(), err)
		}
	}
	var after [][]bool
	var mismatch []string
	err = waitFor(ctx, 30*time.Second, func() error {
		after, err = l.Matrix(ctx, pods, targets, 500*time.Millisecond)
		if err != nil {
			return err
		}
		mismatch = nil
		for i, p := range pods {
			for j, name := range names {
				if p.Name != name && after[i][j] != demoExpected(p.Name, name) {
					mismatch = append(mismatch, fmt.Sprintf("%s -> %s: got %v", p.Name, name, after[i][j]))
				}
			}
		}
		if len(mismatch) > 0 {
			return fmt.Errorf("not as the policies say: %s", strings.Join(mismatch, "; "))
		}
		return nil
	})
	fmt.Fprintf(w, "\nConnectivity after the policies (enforced within %s of kubectl apply):\n", time.Since(applied).Round(100*time.Millisecond))
	if after != nil {
		printMatrix(w, pods, names, after, before)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nDropped flows (sigil observe --verdict DROPPED on each node):")
	since := (time.Since(applied) + 2*time.Second).Round(time.Second).String()
	for _, n := range l.state.Nodes {
		out, err := l.AgentExec(ctx, n.Name, "observe", "--verdict", "DROPPED", "--since", since, "--last", "12")
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "  node %s:\n", n.Name)
		for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	fmt.Fprintf(w, "\nTry: KUBECONFIG=%s kubectl get sigilnetworkpolicies,networkpolicies -A\n     sigil --kubeconfig %s --node %s policy get\n",
		l.cfg.Kubeconfig(), l.cfg.Kubeconfig(), l.state.Nodes[0].Name)
	return nil
}

// demoTargets are TCP 80 of every pod and of the world host.
func demoTargets(pods []Pod) ([]Target, []string) {
	var targets []Target
	var names []string
	for _, p := range pods {
		targets = append(targets, Target{"tcp", p.IP + ":80"})
		names = append(names, p.Name)
	}
	targets = append(targets, Target{"tcp", ExternalHost.String() + ":80"})
	return targets, append(names, "world")
}

// printMatrix prints rows of clients and columns of targets: ✓ reached,
// ✗ not; with prev, a changed cell is marked with *.
func printMatrix(w io.Writer, pods []Pod, names []string, m, prev [][]bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "  from \\ to\t")
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t", n)
	}
	fmt.Fprintln(tw)
	for i, p := range pods {
		fmt.Fprintf(tw, "  %s\t", p.Name)
		for j, n := range names {
			cell := "✗"
			switch {
			case p.Name == n:
				cell = "·"
			case m[i][j]:
				cell = "✓"
			}
			if prev != nil && p.Name != n && prev[i][j] != m[i][j] {
				cell += "*"
			}
			fmt.Fprintf(tw, "%s\t", cell)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if prev != nil {
		fmt.Fprintln(w, "  (* changed by the policies)")
	}
}

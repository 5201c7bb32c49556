package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/internal/k8stest"
)

func TestRemoteArgs(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"--node n1 status", "status"},
		{"--node=n1 status", "status"},
		{"status --node n1", "status"},
		{"status --node=n1 -o json", "status -o json"},
		{"-o json --node n1 bpf ct list", "-o json bpf ct list"},
		{"--kubeconfig /k --context c --agent-namespace kube-system --node n1 endpoint list -o yaml",
			"endpoint list -o yaml"},
		{"--kubeconfig=/k --context=c --agent-namespace=x --node=n1 status --verbose", "status --verbose"},
		{"observe --node n1 -n shop --namespace web --follow", "observe -n shop --namespace web --follow"},
		{"--node n1 --socket /run/s.sock --timeout 3s status", "--socket /run/s.sock --timeout 3s status"},
		{"--node n1 policy get -- --node x", "policy get -- --node x"},
		{"--nodes=3 status", "--nodes=3 status"}, // not ours
		{"status --node", "status"},              // a missing value is cobra's to report
	} {
		got := strings.Join(remoteArgs(strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("remoteArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// agentPod is a pod as the chart's DaemonSet makes it.
func agentPod(ns, name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			"app.kubernetes.io/name":      "sigil",
			"app.kubernetes.io/instance":  "sigil",
			"app.kubernetes.io/component": "agent",
			"helm.sh/chart":               "sigil-0.1.0",
		}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: agentContainer, Image: "sigil-agent:test"}},
		},
	}
}

func createPod(t *testing.T, c client.Client, p *corev1.Pod, phase corev1.PodPhase) {
	t.Helper()
	ctx := context.Background()
	if err := c.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	if phase != "" {
		p.Status.Phase = phase
		if err := c.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
}

// kubeconfigFile writes cfg as a kubeconfig file with one context, "envtest".
func kubeconfigFile(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.Contexts["elsewhere"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "nobody"}
	kc.CurrentContext = "elsewhere"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRemote runs --node's pod discovery and the API server's side of the
// exec against envtest. There are no kubelets, so the exec itself cannot
// run: the lab exercises that end to end.
func TestRemote(t *testing.T) {
	e := k8stest.StartEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(e.Config)
	ns := k8stest.Namespace(t, e.Client)

	createPod(t, e.Client, agentPod(ns, "sigil-agent-aaaaa", "node-a"), corev1.PodRunning)
	createPod(t, e.Client, agentPod(ns, "sigil-agent-bbbbb", "node-b"), corev1.PodRunning)
	// node-c's agent is still starting.
	pending := agentPod(ns, "sigil-agent-ccccc", "node-c")
	createPod(t, e.Client, pending, corev1.PodPending)
	// Another pod on node-a, without the agent's labels.
	other := agentPod(ns, "web-1", "node-a")
	other.Labels = map[string]string{"app": "web"}
	createPod(t, e.Client, other, corev1.PodRunning)
	// node-d has an old agent being replaced (Failed) and its new one (Running).
	old := agentPod(ns, "sigil-agent-old", "node-d")
	createPod(t, e.Client, old, corev1.PodFailed)
	createPod(t, e.Client, agentPod(ns, "sigil-agent-new", "node-d"), corev1.PodRunning)

	t.Run("found", func(t *testing.T) {
		for node, want := range map[string]string{"node-a": "sigil-agent-aaaaa", "node-b": "sigil-agent-bbbbb", "node-d": "sigil-agent-new"} {
			p, err := findAgentPod(ctx, cs, ns, node)
			if err != nil {
				t.Fatalf("%s: %v", node, err)
			}
			if p.Name != want {
				t.Errorf("%s: found %s, want %s", node, p.Name, want)
			}
		}
	})
	t.Run("no agent on the node", func(t *testing.T) {
		_, err := findAgentPod(ctx, cs, ns, "node-z")
		want := "no sigil-agent pod on node node-z in namespace " + ns + " (is Sigil installed? --agent-namespace selects another)"
		if err == nil || err.Error() != want {
			t.Errorf("got %v, want %q", err, want)
		}
		_, err = findAgentPod(ctx, cs, "sigil-system", "node-a")
		if err == nil || !strings.Contains(err.Error(), "no sigil-agent pod on node node-a in namespace sigil-system") {
			t.Errorf("other namespace: %v", err)
		}
	})
	t.Run("not running", func(t *testing.T) {
		_, err := findAgentPod(ctx, cs, ns, "node-c")
		want := "sigil-agent pod " + ns + "/sigil-agent-ccccc on node node-c is not running (Pending)"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want %q", err, want)
		}
	})
	t.Run("forbidden", func(t *testing.T) {
		// May list pods, may not exec.
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-reader"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-reader"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
			Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "reader"}}}
		for _, o := range []client.Object{role, rb} {
			if err := e.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		reader, err := e.UserConfig("reader")
		if err != nil {
			t.Fatal(err)
		}
		err = remoteExec(ctx, reader, ns, "node-a", []string{"status"}, os.Stdout, os.Stderr)
		t.Logf("without pods/exec: %v", err)
		if err == nil || !strings.Contains(err.Error(), "not allowed to exec into "+ns+"/sigil-agent-aaaaa: --node needs the RBAC permissions get and create on pods/exec in namespace "+ns) {
			t.Errorf("exec without pods/exec: %v", err)
		}
		// The permissions docs/observability.md lists are enough: the API
		// server then fails only for want of a kubelet.
		execer := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sigil-node"},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
				{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}}}}
		erb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sigil-node"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "sigil-node"},
			Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "execer"}}}
		for _, o := range []client.Object{execer, erb} {
			if err := e.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		ec, err := e.UserConfig("execer")
		if err != nil {
			t.Fatal(err)
		}
		err = remoteExec(ctx, ec, ns, "node-a", []string{"status"}, os.Stdout, os.Stderr)
		if err == nil || strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "exec into "+ns+"/sigil-agent-aaaaa (node node-a)") {
			t.Errorf("exec with list pods, get+create pods/exec: %v", err)
		}
		nobody, err := e.UserConfig("nobody")
		if err != nil {
			t.Fatal(err)
		}
		err = remoteExec(ctx, nobody, ns, "node-a", []string{"status"}, os.Stdout, os.Stderr)
		if err == nil || !strings.Contains(err.Error(), "not allowed to list pods in namespace "+ns) {
			t.Errorf("exec without pods list: %v", err)
		}
	})
	t.Run("exec reaches the API server", func(t *testing.T) {
		// As cluster admin the API server accepts the exec and then fails to
		// reach node-a's kubelet (there is no Node node-a).
		err := remoteExec(ctx, e.Config, ns, "node-a", []string{"status"}, os.Stdout, os.Stderr)
		if err == nil || !strings.Contains(err.Error(), "exec into "+ns+"/sigil-agent-aaaaa (node node-a)") {
			t.Errorf("got %v", err)
		}
		t.Logf("exec without a kubelet: %v", err)
	})
	t.Run("command line", func(t *testing.T) {
		kc := kubeconfigFile(t, e.Config)
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"--node", "node-z", "--kubeconfig", kc, "--context", "envtest", "--agent-namespace", ns, "status"},
				"no sigil-agent pod on node node-z in namespace " + ns},
			{[]string{"bpf", "ct", "list", "--node=node-c", "--kubeconfig=" + kc, "--context=envtest", "--agent-namespace=" + ns},
				"is not running (Pending)"},
			{[]string{"status", "--node", "node-a", "--kubeconfig", kc, "--context", "envtest"},
				"no sigil-agent pod on node node-a in namespace sigil-system"},
			{[]string{"status", "--node", "node-a", "--kubeconfig", filepath.Join(t.TempDir(), "none")},
				"--node needs a Kubernetes client configuration"},
			{[]string{"status", "--kubeconfig", kc}, "only apply with --node NODE"},
			{[]string{"demo", "--node", "node-a"}, "the demo runs on this machine"},
		} {
			out, err := runCLI(t, c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("sigil %s: got %v (output %q), want %q", strings.Join(c.args, " "), err, out, c.want)
			}
		}
		// What reaches the exec: the command line without the flags of --node.
		var got []string
		remoteExecFn = func(_ context.Context, cfg *rest.Config, gotNS, node string, args []string, _, _ io.Writer) error {
			if gotNS != ns || node != "node-a" || cfg.Host != e.Config.Host {
				t.Errorf("exec in %s on %s at %s", gotNS, node, cfg.Host)
			}
			got = args
			return &RemoteExitError{Code: 3}
		}
		defer func() { remoteExecFn = remoteExec }()
		_, err := runCLI(t, "-o", "json", "--node", "node-a", "--kubeconfig", kc, "--context=envtest", "bpf", "ct", "list", "--agent-namespace", ns)
		var re *RemoteExitError
		if !errors.As(err, &re) || re.Code != 3 {
			t.Errorf("exit status: %v", err)
		}
		if want := []string{"-o", "json", "bpf", "ct", "list"}; !slices.Equal(got, want) {
			t.Errorf("remote command line %q, want %q", got, want)
		}
		// Main exits with the remote status, and 0 when the remote command succeeded.
		if code := Main([]string{"--node", "node-a", "--kubeconfig", kc, "--context", "envtest", "--agent-namespace", ns, "status"}); code != 3 {
			t.Errorf("Main: exit %d, want the remote 3", code)
		}
		remoteExecFn = func(context.Context, *rest.Config, string, string, []string, io.Writer, io.Writer) error { return nil }
		if code := Main([]string{"--node=node-a", "--kubeconfig=" + kc, "--context=envtest", "--agent-namespace=" + ns, "status"}); code != 0 {
			t.Errorf("Main: exit %d, want 0", code)
		}
	})
}

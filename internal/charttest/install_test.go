package charttest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/internal/k8stest"
)

func TestMain(m *testing.M) { os.Exit(k8stest.Run(m)) }

// writeKubeconfig writes a kubeconfig for cfg (envtest's admin, by client
// certificate) and returns its path.
func writeKubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// releaseKinds are what the chart creates (besides CRDs).
var releaseKinds = []schema.GroupVersionKind{
	{Version: "v1", Kind: "ConfigMap"},
	{Version: "v1", Kind: "ServiceAccount"},
	{Version: "v1", Kind: "Service"},
	{Group: "apps", Version: "v1", Kind: "DaemonSet"},
	{Group: "apps", Version: "v1", Kind: "Deployment"},
	{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "Role"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"},
}

// releaseObjects lists every object of releaseKinds labelled with release.
func releaseObjects(t testing.TB, c client.Client, release string) []string {
	t.Helper()
	var found []string
	for _, gvk := range releaseKinds {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
		if err := c.List(context.Background(), l, client.MatchingLabels{"app.kubernetes.io/instance": release}); err != nil {
			t.Fatalf("list %s: %v", gvk.Kind, err)
		}
		for _, o := range l.Items {
			found = append(found, fmt.Sprintf("%s %s/%s", gvk.Kind, o.GetNamespace(), o.GetName()))
		}
	}
	return found
}

// TestInstallUpgradeUninstall installs the chart on a real API server (no
// nodes: nothing runs, but every object passes the server's validation),
// upgrades it to changed values and uninstalls it.
func TestInstallUpgradeUninstall(t *testing.T) {
	helmBin(t)
	env := k8stest.StartEnv(t)
	c := env.Client
	ns := fmt.Sprintf("sigil-chart-%d", time.Now().UnixNano()%1_000_000)
	kenv := []string{"KUBECONFIG=" + writeKubeconfig(t, env.Config)}
	const rel = "sigil-test"
	chart := chartDir(t)

	// Server-side dry run of everything first: a clear error per object.
	if out, err := helm(t, kenv, "install", rel, chart, "--namespace", ns, "--create-namespace", "--dry-run=server"); err != nil {
		t.Fatalf("dry run: %v", err)
	} else if !strings.Contains(out, "kind: DaemonSet") {
		t.Fatalf("dry run rendered no DaemonSet:\n%s", out)
	}

	if _, err := helm(t, kenv, "install", rel, chart, "--namespace", ns, "--create-namespace", "--timeout", "60s"); err != nil {
		t.Fatal(err)
	}
	objs := releaseObjects(t, c, rel)
	for _, want := range []string{
		"ConfigMap " + ns + "/sigil-config",
		"DaemonSet " + ns + "/sigil-agent",
		"Deployment " + ns + "/sigil-operator",
		"PodDisruptionBudget " + ns + "/sigil-operator",
		"Service " + ns + "/sigil-agent-metrics",
		"Service " + ns + "/sigil-operator-metrics",
		"ServiceAccount " + ns + "/sigil-agent",
		"ServiceAccount " + ns + "/sigil-operator",
		"ClusterRole /sigil-agent",
		"ClusterRole /sigil-operator",
		"ClusterRoleBinding /sigil-agent",
		"ClusterRoleBinding /sigil-operator",
		"Role " + ns + "/sigil-operator",
		"RoleBinding " + ns + "/sigil-operator",
	} {
		if !contains(objs, want) {
			t.Errorf("after install: no %s (have %v)", want, objs)
		}
	}

	if _, err := helm(t, kenv, "upgrade", rel, chart, "--namespace", ns, "--timeout", "60s",
		"--set", "mtu=9000", "--set", "routingMode=native", "--set", "metrics.operator.enabled=false"); err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "sigil-config"}, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["mtu"] != "9000" || cm.Data["routing-mode"] != "native" {
		t.Errorf("after upgrade: ConfigMap %v", cm.Data)
	}
	if objs := releaseObjects(t, c, rel); contains(objs, "Service "+ns+"/sigil-operator-metrics") {
		t.Error("after upgrade: the operator's metrics Service is still there")
	}

	if _, err := helm(t, kenv, "uninstall", rel, "--namespace", ns, "--wait", "--timeout", "60s"); err != nil {
		t.Fatal(err)
	}
	if left := releaseObjects(t, c, rel); len(left) > 0 {
		t.Errorf("after uninstall: %v", left)
	}
	// The CRDs stay (helm never deletes crds/).
	var crds unstructured.UnstructuredList
	crds.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinitionList"})
	if err := c.List(context.Background(), &crds); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range crds.Items {
		if strings.HasSuffix(o.GetName(), ".sigil.io") {
			n++
		}
	}
	if n == 0 {
		t.Error("the Sigil CRDs are gone")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

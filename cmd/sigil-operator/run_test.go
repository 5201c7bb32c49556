package main

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/internal/k8stest"
)

// TestRun starts the command's run with a kubeconfig file, as deployed:
// it takes the lease in its namespace and publishes a node.
func TestRun(t *testing.T) {
	e := k8stest.StartEnv(t)
	c := e.Client
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sigil-run-test"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: e.Config.Host, CertificateAuthorityData: e.Config.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: e.Config.CertData, ClientKeyData: e.Config.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseFlags([]string{"--kubeconfig", path, "--leader-election-namespace", "sigil-run-test",
		"--metrics-bind-address", "0", "--health-probe-bind-address", "127.0.0.1:0", "--log-level", "error",
		"--cluster-pool-cidr", "198.18.128.0/17"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(rctx, cfg) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "run-test-node"}}
	if err := c.Create(ctx, node); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	defer func() { _ = c.Delete(context.Background(), node) }()
	k8stest.Eventually(t, 60*time.Second, func() (bool, error) {
		var lease coordinationv1.Lease
		if err := c.Get(ctx, client.ObjectKey{Namespace: "sigil-run-test", Name: "sigil-operator"}, &lease); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		var sn sigilv1.SigilNode
		if err := c.Get(ctx, client.ObjectKey{Name: node.Name}, &sn); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return len(sn.Spec.PodCIDRs) == 1, nil
	})
}

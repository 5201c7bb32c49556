package k8stest_test

import (
	"context"
	"os"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/internal/k8stest"
)

func TestMain(m *testing.M) { os.Exit(k8stest.Run(m)) }

// TestCRDsInstalled creates a SigilIdentity through the real API server and
// checks that its CEL rule is enforced.
func TestCRDsInstalled(t *testing.T) {
	_, c := k8stest.Start(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		id      int64
		wantErr string
	}{
		{"300", 300, ""},
		{"301", 302, "decimal form of spec.id"},
	} {
		obj := &sigilv1.SigilIdentity{
			ObjectMeta: metav1.ObjectMeta{Name: tc.name},
			Spec:       sigilv1.SigilIdentitySpec{ID: tc.id, SecurityLabels: map[string]string{"k8s:app": "web"}},
		}
		err := c.Create(ctx, obj)
		if err == nil {
			t.Cleanup(func() { _ = c.Delete(context.Background(), obj) })
		}
		switch {
		case tc.wantErr == "" && err != nil:
			t.Fatalf("create %s: %v", tc.name, err)
		case tc.wantErr != "" && (err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.wantErr)):
			t.Fatalf("create %s: got %v, want an Invalid error mentioning %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestShared checks that Start returns the package's shared server and
// that Namespace makes distinct namespaces.
func TestShared(t *testing.T) {
	cfg1, c := k8stest.Start(t)
	cfg2, _ := k8stest.Start(t)
	if cfg1.Host != cfg2.Host {
		t.Fatalf("two servers under Run: %s, %s", cfg1.Host, cfg2.Host)
	}
	a, b := k8stest.Namespace(t, c), k8stest.Namespace(t, c)
	if a == b || !strings.HasPrefix(a, "testshared-") {
		t.Fatalf("namespaces %q, %q", a, b)
	}
}

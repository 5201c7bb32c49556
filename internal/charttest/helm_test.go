package charttest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/sigil-net/sigil/internal/k8stest"
)

// repoRoot is the module root.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := k8stest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func chartDir(t testing.TB) string { return filepath.Join(repoRoot(t), "charts", "sigil") }

// helmBin returns the pinned helm, skipping the test without it (unless CI).
func helmBin(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(repoRoot(t), "hack", "k8s-binaries.sh"), "--print-dir").Output()
		if err != nil {
			t.Fatalf("hack/k8s-binaries.sh --print-dir: %v", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	p := filepath.Join(dir, "helm")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("no helm in %s (build it with hack/k8s-binaries.sh --only helm); CI is unset, so skipping", dir)
		}
		t.Fatalf("no helm in %s", dir)
	}
	return p
}

// helm runs helm with private cache/config/data folders.
func helm(t testing.TB, env []string, args ...string) (string, error) {
	t.Helper()
	bin := helmBin(t)
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), err
}

// valueSets are the value combinations linted and rendered.
var valueSets = map[string][]string{
	"defaults": nil,
	"native": {"--set", "routingMode=native", "--set", "mtu=9000", "--set", "masquerade=false",
		"--set", "ipam.operator.clusterPoolIPv4PodCIDRList[0]=198.18.128.0/17", "--set", "ipam.operator.clusterPoolIPv4MaskSize=26",
		"--set", "k8sServiceHost=192.0.2.10", "--set", "k8sServicePort=443"},
	"strict": {"--set", "policyEnforcementMode=always", "--set", "flows.bufferSize=65536", "--set", "cni.exclusive=false",
		"--set", "cni.uninstall=true", "--set", "cni.chainPortmap=true", "--set", "agent.privileged=true",
		"--set", "prefilter.enabled=true", "--set", "prefilter.devices[0]=eth0", "--set", "prefilter.cidrs[0]=203.0.113.0/24"},
	"minimal": {"--set", "metrics.agent.enabled=false", "--set", "metrics.operator.enabled=false",
		"--set", "operator.replicas=1", "--set", "operator.podDisruptionBudget.enabled=false",
		"--set", "image.repository=registry.example/sigil-agent", "--set", "image.tag=v9", "--set", "image.pullPolicy=Never"},
	"no-operator": {"--set", "operator.enabled=false"},
}

func TestLint(t *testing.T) {
	dir := chartDir(t)
	for name, args := range valueSets {
		out, err := helm(t, nil, append([]string{"lint", "--strict", dir}, args...)...)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if !strings.Contains(out, "0 chart(s) failed") {
			t.Errorf("%s: lint output:\n%s", name, out)
		}
	}
}

// render runs helm template and decodes the manifests.
func render(t testing.TB, args ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := helm(t, nil, append([]string{"template", "rel", chartDir(t), "--namespace", "sigil-system"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

func decode(t testing.TB, manifests string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decoding rendered manifests: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

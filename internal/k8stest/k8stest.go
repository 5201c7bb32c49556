// Package k8stest starts a real Kubernetes API server (kube-apiserver and
// etcd through controller-runtime's envtest) for tests, with Sigil's CRDs
// installed from charts/sigil/crds and Sigil's types registered in the
// client's scheme.
//
// The binaries come from hack/k8s-binaries.sh (its --print-dir folder), or
// from KUBEBUILDER_ASSETS when that is set. Without them a test is skipped
// with a message saying how to build them, unless CI is set, where it fails.
//
// Starting an API server costs a few seconds, so a package shares one:
//
//	func TestMain(m *testing.M) { os.Exit(k8stest.Run(m)) }
//
// Under Run, every Start in the package returns the same server (started on
// first use, stopped when the tests end); without Run, Start gives each test
// its own server and stops it at the test's end. Tests that share a server
// keep apart by working in their own namespace (Namespace) or on objects
// with distinct names.
//
// envtest runs no controllers: no garbage collector (owner references are
// not acted on), no namespace finalization, no kubelet. Tests create Nodes
// and Pods themselves and set their status.
package k8stest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
)

// CRDDir is the CRD folder, relative to the repository root.
const CRDDir = "charts/sigil/crds"

// Env is a running test API server.
type Env struct {
	// Config reaches the API server as a cluster admin.
	Config *rest.Config
	// Client is an uncached client on Config with Scheme.
	Client client.Client
	// Scheme holds client-go's types and Sigil's.
	Scheme *runtime.Scheme
	// Root is the repository root.
	Root string

	env *envtest.Environment
}

// Scheme returns a new scheme with client-go's built-in types, the
// apiextensions types and Sigil's types.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	utilruntime.Must(sigilv1.AddToScheme(s))
	return s
}

// RepoRoot returns the repository root: the nearest folder at or above the
// working directory that holds go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("k8stest: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// ErrNoBinaries marks a missing kube-apiserver or etcd.
var ErrNoBinaries = errors.New("k8stest: Kubernetes test binaries missing")

// AssetsDir returns the folder holding kube-apiserver and etcd:
// KUBEBUILDER_ASSETS if set, else what `hack/k8s-binaries.sh --print-dir`
// prints. The error wraps ErrNoBinaries when a binary is missing.
func AssetsDir(root string) (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		out, err := exec.Command("bash", filepath.Join(root, "hack", "k8s-binaries.sh"), "--print-dir").Output()
		if err != nil {
			return "", fmt.Errorf("k8stest: hack/k8s-binaries.sh --print-dir: %w", err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, bin)); err != nil || fi.IsDir() {
			return dir, fmt.Errorf("%w: no %s in %s (build them with hack/k8s-binaries.sh --only apiserver,etcd)",
				ErrNoBinaries, bin, dir)
		}
	}
	return dir, nil
}

var logOnce sync.Once

// quietLogs routes controller-runtime's logs to stderr at warning level and
// above, unless a test already set a logger.
func quietLogs() {
	logOnce.Do(func() {
		lvl := slog.LevelWarn
		if os.Getenv("SIGIL_TEST_DEBUG") != "" {
			lvl = slog.LevelDebug
		}
		ctrllog.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
	})
}

// Options changes how an API server is started; the zero value is envtest's
// defaults.
type Options struct {
	// ServiceCIDR is the API server's --service-cluster-ip-range, where
	// ClusterIPs are allocated (envtest's default: 10.0.0.0/24, 254
	// Services).
	ServiceCIDR string
}

// StartServer starts an API server with Sigil's CRDs outside of a test (a
// benchmark, a tool); the caller stops it with Stop. Its error wraps
// ErrNoBinaries when kube-apiserver or etcd is missing.
func StartServer(o Options) (*Env, error) { return startEnv(o) }

// startEnv starts an API server with Sigil's CRDs.
func startEnv(o Options) (*Env, error) {
	quietLogs()
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := AssetsDir(root)
	if err != nil {
		return nil, err
	}
	s := Scheme()
	te := &envtest.Environment{
		Scheme:                   s,
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{filepath.Join(root, CRDDir)},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 90 * time.Second, // two shared cores
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	if o.ServiceCIDR != "" {
		te.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", o.ServiceCIDR)
	}
	// envtest prefers KUBEBUILDER_ASSETS over BinaryAssetsDirectory; both
	// now name the same folder.
	cfg, err := te.Start()
	if err != nil {
		_ = te.Stop()
		return nil, fmt.Errorf("k8stest: starting envtest: %w", err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000 // the default 5/10 would throttle the tests
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = te.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: s, Root: root, env: te}, nil
}

// WriteKubeconfig writes Config (the admin's client certificate) as a
// kubeconfig file at path, for processes outside the test: the agent,
// kube-proxy.
func (e *Env) WriteKubeconfig(path string) error {
	kc := clientcmdapi.NewConfig()
	cfg := e.Config
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// Stop stops the API server and etcd.
func (e *Env) Stop() error { return e.env.Stop() }

// UserConfig provisions a user authenticated by client certificate and
// returns a config for it. The user has no permissions beyond what RBAC
// bindings grant its name or groups.
func (e *Env) UserConfig(name string, groups ...string) (*rest.Config, error) {
	u, err := e.env.AddUser(envtest.User{Name: name, Groups: groups}, e.Config)
	if err != nil {
		return nil, err
	}
	cfg := u.Config()
	cfg.QPS, cfg.Burst = e.Config.QPS, e.Config.Burst
	return cfg, nil
}

// shared is the package's API server under Run.
var shared struct {
	enabled bool
	once    sync.Once
	env     *Env
	err     error
}

// Run runs a package's tests with one API server shared by every Start and
// StartEnv call, started on first use and stopped after the tests. Call it
// from TestMain and pass its result to os.Exit.
func Run(m *testing.M) int {
	shared.enabled = true
	code := m.Run()
	if shared.env != nil {
		if err := shared.env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "k8stest: stopping the API server: %v\n", err)
		}
	}
	return code
}

// StartEnv returns a running API server: the package's shared one under
// Run, else a new one stopped at the end of the test. It skips the test
// when the binaries are missing and CI is unset, and fails it otherwise.
func StartEnv(t testing.TB) *Env {
	t.Helper()
	return StartEnvWith(t, Options{})
}

// StartEnvWith is StartEnv with options. With any option set it always
// starts a server of its own (stopped at the end of the test), since the
// shared one runs with the defaults.
func StartEnvWith(t testing.TB, o Options) *Env {
	t.Helper()
	var (
		e   *Env
		err error
	)
	if shared.enabled && o == (Options{}) {
		shared.once.Do(func() { shared.env, shared.err = startEnv(o) })
		e, err = shared.env, shared.err
	} else {
		e, err = startEnv(o)
		if err == nil {
			t.Cleanup(func() {
				if err := e.Stop(); err != nil {
					t.Errorf("k8stest: stopping the API server: %v", err)
				}
			})
		}
	}
	if err != nil {
		if errors.Is(err, ErrNoBinaries) && os.Getenv("CI") == "" {
			t.Skipf("%v (CI is unset, so skipping)", err)
		}
		t.Fatal(err)
	}
	return e
}

// Start returns the config and client of a running API server; see StartEnv.
func Start(t testing.TB) (*rest.Config, client.Client) {
	t.Helper()
	e := StartEnv(t)
	return e.Config, e.Client
}

// Namespace creates a namespace with a unique name derived from the test's
// name and returns that name. It is deleted at the test's end (envtest has
// no namespace controller, so it stays Terminating with its content; use
// fresh names rather than reusing one).
func Namespace(t testing.TB, c client.Client) string {
	t.Helper()
	base := strings.ToLower(t.Name())
	base = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, base)
	if len(base) > 40 {
		base = base[:40]
	}
	base = strings.Trim(base, "-")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: base + "-"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Create(ctx, ns); err != nil {
		t.Fatalf("k8stest: creating namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Delete(ctx, ns)
	})
	return ns.Name
}

// Eventually polls cond every interval until it returns true or timeout
// passes, then fails the test with the last error cond returned.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				t.Fatalf("condition not met within %v: %v", timeout, last)
			}
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
)

// SigilNamespace is where the lab installs the chart (as docs/install.md
// does, and where `sigil --node` looks by default).
const SigilNamespace = "sigil-system"

// kube is a client of the lab's API server, through the proxy.
type kube struct {
	cs  kubernetes.Interface
	cfg *rest.Config
}

// RESTConfig is the admin client configuration of the lab's API server.
func (l *Lab) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.cfg.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("lab kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

func (l *Lab) client() (*kube, error) {
	l.clientMu.Lock()
	defer l.clientMu.Unlock()
	if l.kc != nil {
		return l.kc, nil
	}
	cfg, err := l.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	l.kc = &kube{cs: cs, cfg: cfg}
	return l.kc, nil
}

// quietControllerRuntime keeps controller-runtime from printing "log.SetLogger
// was never called" with a stack trace: the lab uses only its client.
var quietControllerRuntime sync.Once

// Client is a controller-runtime client of the lab's API server that knows
// Sigil's types.
func (l *Lab) Client() (client.Client, error) {
	quietControllerRuntime.Do(func() { ctrllog.SetLogger(logr.Discard()) })
	l.clientMu.Lock()
	defer l.clientMu.Unlock()
	if l.crc != nil {
		return l.crc, nil
	}
	cfg, err := l.RESTConfig()
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := sigilv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	l.crc = c
	return c, nil
}

// waitNodesRegistered waits for every node object to exist.
func (k *kube) waitNodesRegistered(ctx context.Context, names []string, timeout time.Duration) error {
	return waitFor(ctx, timeout, func() error {
		for _, n := range names {
			if _, err := k.cs.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{}); err != nil {
				return fmt.Errorf("node %s not registered: %w", n, err)
			}
		}
		return nil
	})
}

// waitSigilReady waits for the agent on every node, the operator, and every
// node Ready (which needs Sigil's CNI configuration on it).
func (k *kube) waitSigilReady(ctx context.Context, names []string, timeout time.Duration) error {
	var last error
	err := waitFor(ctx, timeout, func() error {
		last = k.sigilReady(ctx, names)
		return last
	})
	if err != nil {
		return fmt.Errorf("%w\n%s", err, k.podSummary(ctx))
	}
	return nil
}

func (k *kube) sigilReady(ctx context.Context, names []string) error {
	ds, err := k.cs.AppsV1().DaemonSets(SigilNamespace).Get(ctx, "sigil-agent", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if ds.Status.NumberReady != int32(len(names)) || ds.Status.UpdatedNumberScheduled != int32(len(names)) {
		return fmt.Errorf("sigil-agent: %d of %d ready", ds.Status.NumberReady, len(names))
	}
	if err := deploymentAvailable(ctx, k.cs, SigilNamespace, "sigil-operator"); err != nil {
		return err
	}
	for _, n := range names {
		node, err := k.cs.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeReady(node) {
			return fmt.Errorf("node %s not Ready", n)
		}
	}
	return nil
}

func deploymentAvailable(ctx context.Context, cs kubernetes.Interface, ns, name string) error {
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue {
			return nil
		}
	}
	return fmt.Errorf("deployment %s/%s not available", ns, name)
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podSummary lists the pods that are not ready, with why, for errors.
func (k *kube) podSummary(ctx context.Context) string {
	pods, err := k.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "pods: " + err.Error()
	}
	var lines []string
	for _, p := range pods.Items {
		ready := p.Status.Phase == corev1.PodRunning
		var why []string
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if !cs.Ready {
				ready = false
				if w := cs.State.Waiting; w != nil {
					why = append(why, cs.Name+": "+w.Reason+" "+w.Message)
				}
				if t := cs.State.Terminated; t != nil {
					why = append(why, fmt.Sprintf("%s: exit %d %s", cs.Name, t.ExitCode, t.Reason))
				}
			}
		}
		if !ready {
			lines = append(lines, fmt.Sprintf("  %s/%s on %s: %s %s", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, strings.Join(why, "; ")))
		}
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return ""
	}
	return "pods not ready:\n" + strings.Join(lines, "\n")
}

// HelmValues are the chart values the lab installs with.
func (l *Lab) HelmValues() []string {
	c := l.cfg
	replicas := 2
	if len(l.state.Nodes) < 2 {
		replicas = 1 // one operator per node: they use host ports
	}
	v := []string{
		"k8sServiceHost=" + APIServerAddr.String(),
		fmt.Sprintf("k8sServicePort=%d", APIServerPort),
		"image.tag=" + ImageTag, "image.pullPolicy=Never",
		"operator.image.tag=" + ImageTag, "operator.image.pullPolicy=Never",
		fmt.Sprintf("operator.replicas=%d", replicas),
		"ipam.operator.clusterPoolIPv4PodCIDRList={" + PodPool.String() + "}",
		"ipam.operator.clusterPoolIPv4MaskSize=24",
		"routingMode=" + c.Routing,
		"serviceCIDRs={" + ServiceCIDR.String() + "}",
		fmt.Sprintf("kubeProxyReplacement=%v", !l.state.KubeProxy),
		"agent.perNodeHostPaths=true",
		"agent.pinDir=" + c.pinDir(),
		"agent.stateDir=" + filepath.Join(c.Dir, "agent-state"),
		"agent.runDir=" + filepath.Join(c.Dir, "run"),
		"cni.binPath=" + filepath.Join(c.Dir, "cni", "bin"),
		"cni.confPath=" + filepath.Join(c.Dir, "cni", "net.d"),
		"cgroup.hostRoot=" + cgroup2Root(),
		// The chart's default list has SYS_RESOURCE (memlock on old
		// kernels); this host's bounding set lacks it, and this kernel
		// accounts BPF memory to the cgroup instead.
		"agent.capabilities={NET_ADMIN,NET_RAW,BPF,PERFMON,SYS_ADMIN}",
		// The lab's nodes share one kernel: small requests let the
		// scheduler place every test pod.
		"agent.resources.requests.cpu=10m", "operator.resources.requests.cpu=10m",
	}
	return append(v, l.state.HelmValues...)
}

// helm runs `helm install|upgrade sigil` with the lab's values.
func (l *Lab) helm(ctx context.Context, verb string, extra ...string) error {
	args := []string{verb, "sigil", filepath.Join(l.cfg.Repo, "charts", "sigil"),
		"--namespace", SigilNamespace, "--kubeconfig", l.cfg.Kubeconfig()}
	if verb == "install" {
		args = append(args, "--create-namespace")
	}
	for _, v := range append(l.HelmValues(), extra...) {
		args = append(args, "--set", v)
	}
	return l.runHelm(ctx, args...)
}

// Upgrade runs helm upgrade with the lab's values plus extra --set values,
// and waits until Sigil is ready again on every node.
func (l *Lab) Upgrade(ctx context.Context, extra ...string) error {
	l.step("helm upgrade sigil %s", strings.Join(extra, " "))
	if err := l.helm(ctx, "upgrade", extra...); err != nil {
		return err
	}
	k, err := l.client()
	if err != nil {
		return err
	}
	var names []string
	for _, n := range l.state.Nodes {
		names = append(names, n.Name)
	}
	// Let the DaemonSet controller see the new generation first.
	time.Sleep(2 * time.Second)
	return k.waitSigilReady(ctx, names, 4*time.Minute)
}

// runHelm runs the cached helm with a private cache/config home.
func (l *Lab) runHelm(ctx context.Context, args ...string) error {
	bin := filepath.Join(l.cfg.KubeBin, "helm")
	if l.cfg.KubeBin == "" {
		bin = "helm"
	}
	home := filepath.Join(l.cfg.Dir, "helm")
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm %s: %w\n%s", args[0], err, out)
	}
	return nil
}

package cli

// sigil --node NODE <command> runs <command> in the sigil-agent pod of NODE
// through the API server (pods/exec), the way kubectl exec does, and makes
// the remote exit status ours.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/sigil-net/sigil/internal/podexec"
)

const (
	// defaultAgentNamespace is where docs/install.md installs the chart.
	defaultAgentNamespace = "sigil-system"
	// agentSelector matches the agent pods of charts/sigil (sigil.agentSelector
	// without the release name, so any release is found).
	agentSelector = "app.kubernetes.io/name=sigil,app.kubernetes.io/component=agent"
	// agentContainer is the agent's container in the chart's DaemonSet.
	agentContainer = "agent"
	// remoteBinary is the CLI inside the agent image (on its PATH).
	remoteBinary = "sigil"
)

// remoteFlags are the global flags that select the remote agent; they are
// consumed here and not passed on to the remote sigil.
var remoteFlags = map[string]bool{"node": true, "kubeconfig": true, "context": true, "agent-namespace": true}

// RemoteExitError is the non-zero exit status of the remote sigil; its
// errors were already written to our stderr.
type RemoteExitError struct{ Code int }

func (e *RemoteExitError) Error() string {
	return fmt.Sprintf("remote sigil exited with status %d", e.Code)
}

// remoteArgs returns args without the flags of remoteFlags, in all their
// forms (--node x, --node=x). Everything after "--" is kept as it is.
func remoteArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if strings.HasPrefix(a, "--") {
			name, _, hasValue := strings.Cut(a[2:], "=")
			if remoteFlags[name] {
				if !hasValue {
					i++ // the value is the next argument
				}
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// kubeConfig loads the client configuration as kubectl does: --kubeconfig,
// else $KUBECONFIG, else ~/.kube/config, else the in-cluster configuration;
// --context selects the context.
func (o *options) kubeConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: o.kubeCtx}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("--node needs a Kubernetes client configuration (--kubeconfig, --context): %w", err)
	}
	return cfg, nil
}

// runRemote runs args (the whole command line) in the agent pod of o.node.
func (o *options) runRemote(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if o.node == "" {
		return errors.New("--kubeconfig, --context and --agent-namespace only apply with --node NODE")
	}
	cfg, err := o.kubeConfig()
	if err != nil {
		return err
	}
	return remoteExecFn(ctx, cfg, o.agentNS, o.node, remoteArgs(args), stdout, stderr)
}

// remoteExecFn is remoteExec; tests replace it.
var remoteExecFn = remoteExec

// remoteExec finds the agent pod of node in ns and runs sigil args in it.
func remoteExec(ctx context.Context, cfg *rest.Config, ns, node string, args []string, stdout, stderr io.Writer) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	pod, err := findAgentPod(ctx, cs, ns, node)
	if err != nil {
		return err
	}
	err = podexec.Run(ctx, cfg, cs, pod.Namespace, pod.Name, agentContainer, append([]string{remoteBinary}, args...), stdout, stderr)
	if err != nil && ctx.Err() != nil {
		return nil // interrupted (observe --follow and Ctrl-C), as locally
	}
	return execErr(err, pod)
}

// execErr turns the errors of the exec stream into what the user should do.
func execErr(err error, pod *corev1.Pod) error {
	if err == nil {
		return nil
	}
	var ce utilexec.CodeExitError
	if errors.As(err, &ce) {
		return &RemoteExitError{Code: ce.ExitStatus()}
	}
	var ee utilexec.ExitError
	if errors.As(err, &ee) {
		return &RemoteExitError{Code: ee.ExitStatus()}
	}
	if apierrors.IsForbidden(err) || strings.Contains(err.Error(), "forbidden") {
		return fmt.Errorf("not allowed to exec into %s/%s: --node needs the RBAC permissions get and create on pods/exec in namespace %s (%v)",
			pod.Namespace, pod.Name, pod.Namespace, err)
	}
	return fmt.Errorf("exec into %s/%s (node %s): %w", pod.Namespace, pod.Name, pod.Spec.NodeName, err)
}

// findAgentPod returns the running sigil-agent pod scheduled on node.
func findAgentPod(ctx context.Context, cs kubernetes.Interface, ns, node string) (*corev1.Pod, error) {
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		LabelSelector: agentSelector,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("not allowed to list pods in namespace %s: --node needs the RBAC permission list on pods (and get, create on pods/exec) there (%v)", ns, err)
		}
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("no sigil-agent pod on node %s in namespace %s (is Sigil installed? --agent-namespace selects another)", node, ns)
		}
		return nil, fmt.Errorf("listing the sigil-agent pods of node %s in namespace %s: %w", node, ns, err)
	}
	pods := list.Items
	if len(pods) == 0 {
		return nil, fmt.Errorf("no sigil-agent pod on node %s in namespace %s (is Sigil installed? --agent-namespace selects another)", node, ns)
	}
	// Running pods that are not being deleted first, then the newest.
	sort.SliceStable(pods, func(i, j int) bool {
		ri, rj := usable(&pods[i]), usable(&pods[j])
		if ri != rj {
			return ri
		}
		return pods[j].CreationTimestamp.Before(&pods[i].CreationTimestamp)
	})
	p := &pods[0]
	if !usable(p) {
		why := string(p.Status.Phase)
		if why == "" {
			why = "Pending"
		}
		if p.DeletionTimestamp != nil {
			why += ", being deleted"
		}
		if p.Status.Reason != "" {
			why += ", " + p.Status.Reason
		}
		if p.Status.Message != "" {
			why += ": " + p.Status.Message
		}
		return nil, fmt.Errorf("sigil-agent pod %s/%s on node %s is not running (%s): see kubectl -n %s describe pod %s",
			p.Namespace, p.Name, node, why, p.Namespace, p.Name)
	}
	return p, nil
}

func usable(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil
}

// errRemoteDone ends a command that ran in the remote agent pod: the local
// command must not run too, and there is nothing left to report.
var errRemoteDone = errors.New("ran in the remote agent pod")

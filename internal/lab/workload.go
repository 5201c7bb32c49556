package lab

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sigil-net/sigil/internal/image"
	"github.com/sigil-net/sigil/internal/podexec"
)

// ProbeImage is the test workload image the lab imports (cmd/sigil-probe).
var ProbeImage = image.Options{Tag: ImageTag}.Ref("sigil-probe")

// PodSpec is a test workload pod: sigil-probe serving TCP and UDP on Ports.
type PodSpec struct {
	Namespace, Name string
	Labels          map[string]string
	// Node pins the pod to a node ("" lets the scheduler choose).
	Node  string
	Ports []int32
}

// Pod is a running workload pod.
type Pod struct {
	Namespace, Name, Node, IP string
}

// String is namespace/name.
func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// EnsureNamespace creates a namespace with labels (idempotent).
func (l *Lab) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	k, err := l.client()
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := k.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// RunPods creates the pods and waits until all are ready (with an address).
func (l *Lab) RunPods(ctx context.Context, specs []PodSpec, timeout time.Duration) ([]Pod, error) {
	k, err := l.client()
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		if _, err := k.cs.CoreV1().Pods(s.Namespace).Create(ctx, probePod(s), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create pod %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	out := make([]Pod, len(specs))
	err = waitFor(ctx, timeout, func() error {
		for i, s := range specs {
			p, err := k.cs.CoreV1().Pods(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(p) || p.Status.PodIP == "" {
				return fmt.Errorf("pod %s/%s not ready (%s)", s.Namespace, s.Name, p.Status.Phase)
			}
			out[i] = Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, IP: p.Status.PodIP}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, k.podSummary(ctx))
	}
	return out, nil
}

func probePod(s PodSpec) *corev1.Pod {
	ports := s.Ports
	if len(ports) == 0 {
		ports = []int32{80}
	}
	var list []string
	for _, p := range ports {
		list = append(list, fmt.Sprint(p))
	}
	// Named like the upstream NetworkPolicy fixture's (serve-80-tcp), so
	// policies may name ports.
	var cports []corev1.ContainerPort
	for _, p := range ports {
		cports = append(cports,
			corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-tcp", p), ContainerPort: p, Protocol: corev1.ProtocolTCP},
			corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-udp", p), ContainerPort: p, Protocol: corev1.ProtocolUDP})
	}
	grace := int64(1)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: s.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      s.Node,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "probe", Image: ProbeImage, ImagePullPolicy: corev1.PullNever,
				Args:  []string{"serve", "--tcp", strings.Join(list, ","), "--udp", strings.Join(list, ",")},
				Ports: cports,
				// The kubelet probes from the node: policy must let it.
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(ports[0])}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
	return pod
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Target is one probe destination: tcp or udp, host:port.
type Target struct {
	Proto string // tcp or udp
	Addr  string // host:port
}

func (t Target) String() string { return t.Proto + "/" + t.Addr }

// ProbeRow probes every target from pod at once (one exec of sigil-probe
// matrix) and returns, per target, whether it connected.
func (l *Lab) ProbeRow(ctx context.Context, from Pod, targets []Target, timeout time.Duration) ([]bool, error) {
	k, err := l.client()
	if err != nil {
		return nil, err
	}
	args := []string{"/usr/local/bin/sigil-probe", "matrix", "--timeout", timeout.String()}
	for _, t := range targets {
		args = append(args, t.String())
	}
	var stdout, stderr bytes.Buffer
	if err := podexec.Run(ctx, k.cfg, k.cs, from.Namespace, from.Name, "probe", args, &stdout, &stderr); err != nil {
		return nil, fmt.Errorf("probe from %s: %w: %s", from, err, stderr.String())
	}
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		target, outcome, _ := strings.Cut(line, " ")
		got[target] = strings.HasPrefix(outcome, "CONNECTED")
	}
	out := make([]bool, len(targets))
	for i, t := range targets {
		v, ok := got[t.String()]
		if !ok {
			return nil, fmt.Errorf("probe from %s: no result for %s in %q", from, t, stdout.String())
		}
		out[i] = v
	}
	return out, nil
}

// Matrix probes targets from every pod, rows in parallel: result[i][j] is
// whether pods[i] reached targets[j].
func (l *Lab) Matrix(ctx context.Context, pods []Pod, targets []Target, timeout time.Duration) ([][]bool, error) {
	out := make([][]bool, len(pods))
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i], errs[i] = l.ProbeRow(ctx, p, targets, timeout)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// AgentExec runs the sigil CLI in the agent pod of node and returns its
// output.
func (l *Lab) AgentExec(ctx context.Context, node string, args ...string) (string, error) {
	k, err := l.client()
	if err != nil {
		return "", err
	}
	pods, err := k.cs.CoreV1().Pods(SigilNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || !podReady(&p) {
			continue
		}
		var stdout, stderr bytes.Buffer
		err := podexec.Run(ctx, k.cfg, k.cs, p.Namespace, p.Name, "agent", append([]string{"sigil"}, args...), &stdout, &stderr)
		if err != nil {
			return stdout.String(), fmt.Errorf("sigil %s on %s: %w: %s", strings.Join(args, " "), node, err, stderr.String())
		}
		return stdout.String(), nil
	}
	return "", fmt.Errorf("no ready sigil-agent pod on %s", node)
}

package lab

// The lab end-to-end suite: a real two-node cluster (etcd, kube-apiserver,
// controller-manager, scheduler; containerd and kubelet per node) with Sigil
// installed by its Helm chart, then the upstream NetworkPolicy fixture with
// policies from cyclonus's generator judged against cyclonus's oracle, the
// outside world, an agent restart with an established connection, helm
// upgrade, the demo, `sigil --node`, and down leaving nothing behind.
//
// Needs root, containerd/runc/ctr and the cached Kubernetes binaries; skipped
// without them unless CI is set (then it fails instead).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// requireLab skips (or, under CI, fails) when the host cannot run a lab.
func requireLab(t *testing.T) Config {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("CI") != "" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("the lab needs root")
	}
	if err := checkHostTools(); err != nil {
		skip("%v", err)
	}
	repo, err := findRepo()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(repo, "hack", "k8s-binaries.sh"), "--print-dir").Output()
	if err != nil {
		t.Fatalf("k8s-binaries.sh --print-dir: %v", err)
	}
	bin := strings.TrimSpace(string(out))
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "helm"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			skip("no %s in %s (run hack/k8s-binaries.sh)", b, bin)
		}
	}
	// The proxy runs as `sigil lab proxy`: build the CLI.
	sigil := filepath.Join(t.TempDir(), "sigil")
	if out, err := exec.Command("go", "build", "-o", sigil, filepath.Join(repo, "cmd", "sigil")).CombinedOutput(); err != nil {
		t.Fatalf("go build sigil: %v\n%s", err, out)
	}
	return Config{Name: "sgl-e2e", Dir: t.TempDir(), Nodes: 2, Routing: RoutingTunnel, Repo: repo, KubeBin: bin, SigilBinary: sigil}
}

func TestLabE2E(t *testing.T) {
	cfg := requireLab(t)
	ctx := context.Background()
	l, err := Up(ctx, cfg, newTestWriter(t))
	if l != nil {
		// Down also when Up failed half-way; then check nothing is left.
		t.Cleanup(func() { downAndCheck(t, l) })
	}
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}

	pods := fixturePods(t, l)
	t.Run("cyclonus", func(t *testing.T) { testCyclonus(t, l, pods, 8) })
	t.Run("service", func(t *testing.T) { testService(t, l, pods) })
	t.Run("agent-restart", func(t *testing.T) { testAgentRestart(t, l, pods) })
	t.Run("helm-upgrade", func(t *testing.T) { testHelmUpgrade(t, l, pods) })
	t.Run("sigil-node", func(t *testing.T) { testSigilNode(t, l) })
	t.Run("demo", func(t *testing.T) {
		if err := l.Demo(ctx, newTestWriter(t)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestLabNativeKubeProxy is a lab with native routing (pods routed by the
// underlay, no tunnel) and the real kube-proxy handling Services: the
// fixture through a few cyclonus cases, and ClusterIPs with policy judged
// on the backend (kube-proxy DNATs in the host; Sigil judges egress after
// it).
func TestLabNativeKubeProxy(t *testing.T) {
	cfg := requireLab(t)
	cfg.Name, cfg.Routing, cfg.KubeProxy = "sgl-native", RoutingNative, true
	l, err := Up(context.Background(), cfg, newTestWriter(t))
	if l != nil {
		t.Cleanup(func() { downAndCheck(t, l) })
	}
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	pods := fixturePods(t, l)
	t.Run("cyclonus", func(t *testing.T) { testCyclonus(t, l, pods, 3) })
	t.Run("service", func(t *testing.T) { testService(t, l, pods) })
}

// testWriter logs whole lines through t.
type testWriter struct {
	t   *testing.T
	buf *strings.Builder
}

func newTestWriter(t *testing.T) testWriter { return testWriter{t, &strings.Builder{}} }

func (w testWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	s := w.buf.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		for _, line := range strings.Split(s[:i], "\n") {
			w.t.Log(line)
		}
		w.buf.Reset()
		w.buf.WriteString(s[i+1:])
	}
	return len(p), nil
}

var fixtureNS, fixtureNames = []string{"x", "y", "z"}, []string{"a", "b", "c"}

// fixturePods runs the upstream NetworkPolicy fixture: namespaces x, y, z
// (labelled ns=<name>), pods a, b, c (pod=<name>) serving TCP and UDP 80 and
// 81, alternating over the nodes so that every namespace spans both.
func fixturePods(t *testing.T, l *Lab) []Pod {
	t.Helper()
	ctx := context.Background()
	var specs []PodSpec
	for i, ns := range fixtureNS {
		if err := l.EnsureNamespace(ctx, ns, map[string]string{"ns": ns}); err != nil {
			t.Fatal(err)
		}
		for j, name := range fixtureNames {
			specs = append(specs, PodSpec{Namespace: ns, Name: name, Labels: map[string]string{"pod": name},
				Node: l.state.Nodes[(i+j)%len(l.state.Nodes)].Name, Ports: []int32{80, 81}})
		}
	}
	start := time.Now()
	pods, err := l.RunPods(ctx, specs, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d fixture pods ready in %s", len(pods), time.Since(start).Round(time.Millisecond))
	return pods
}

// fixtureTargets are every pod on TCP and UDP 80 and 81, and the world.
func fixtureTargets(pods []Pod) []Target {
	var ts []Target
	for _, p := range pods {
		for _, proto := range []string{"tcp", "udp"} {
			for _, port := range []int{80, 81} {
				ts = append(ts, Target{proto, fmt.Sprintf("%s:%d", p.IP, port)})
			}
		}
	}
	return append(ts, Target{"tcp", ExternalHost.String() + ":80"})
}

// expectMatrix is the oracle's matrix for policies over the fixture; the
// world column is always reachable (no fixture policy has egress ipBlocks
// that exclude it and every egress-restricted case is filtered out below).
func expectMatrix(pods []Pod, policies []*networkingv1.NetworkPolicy) [][]bool {
	oracle := matcher.BuildNetworkPolicies(true, policies)
	peer := func(p Pod) *matcher.TrafficPeer {
		return &matcher.TrafficPeer{IP: p.IP, Internal: &matcher.InternalPeer{
			PodLabels: map[string]string{"pod": p.Name}, NamespaceLabels: map[string]string{"ns": p.Namespace}, Namespace: p.Namespace}}
	}
	world := &matcher.TrafficPeer{IP: ExternalHost.String()}
	out := make([][]bool, len(pods))
	for i, src := range pods {
		for _, dst := range pods {
			for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
				for _, port := range []int{80, 81} {
					// A pod reaching its own address never leaves its
					// namespace (loopback): no CNI judges it, and the
					// upstream suite expects it allowed.
					out[i] = append(out[i], src == dst || oracle.IsTrafficAllowed(&matcher.Traffic{
						Source: peer(src), Destination: peer(dst), ResolvedPort: port,
						ResolvedPortName: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), Protocol: proto,
					}).IsAllowed())
				}
			}
		}
		out[i] = append(out[i], oracle.IsTrafficAllowed(&matcher.Traffic{
			Source: peer(src), Destination: world, ResolvedPort: 80, Protocol: corev1.ProtocolTCP}).IsAllowed())
	}
	return out
}

// cyclonusCases picks a spread of cyclonus's generated cases that are one
// step of policy creations (what a lab round trip can afford: each costs a
// few seconds).
func cyclonusCases(n int) []*generator.TestCase {
	gen := generator.NewTestCaseGenerator(false, "192.168.1.10", fixtureNS, nil, nil)
	var simple []*generator.TestCase
	for _, tc := range gen.GenerateAllTestCases() {
		if len(tc.Steps) != 1 {
			continue
		}
		ok := true
		for _, a := range tc.Steps[0].Actions {
			if a.CreatePolicy == nil {
				ok = false
			}
		}
		if ok {
			simple = append(simple, tc)
		}
	}
	var out []*generator.TestCase
	for i := 0; i < n && len(simple) > 0; i++ {
		out = append(out, simple[i*len(simple)/n])
	}
	return out
}

func testCyclonus(t *testing.T, l *Lab, pods []Pod, cases int) {
	ctx := context.Background()
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	targets := fixtureTargets(pods)
	deleteAll := func() {
		for _, ns := range fixtureNS {
			if err := c.DeleteAllOf(ctx, &networkingv1.NetworkPolicy{}, client.InNamespace(ns)); err != nil {
				t.Error(err)
			}
		}
	}
	// Also after a failed case: the later subtests start with no policy.
	defer deleteAll()
	// No policy: everything connects (same node and across, the world too).
	checkMatrix(t, l, pods, targets, expectMatrix(pods, nil), "no policy")
	for _, tc := range cyclonusCases(cases) {
		var policies []*networkingv1.NetworkPolicy
		for _, a := range tc.Steps[0].Actions {
			policies = append(policies, a.CreatePolicy.Policy.DeepCopy())
		}
		applied := time.Now()
		for _, p := range policies {
			if err := c.Create(ctx, p.DeepCopy()); err != nil {
				t.Fatalf("%s: create %s/%s: %v", tc.Description, p.Namespace, p.Name, err)
			}
		}
		checkMatrix(t, l, pods, targets, expectMatrix(pods, policies), tc.Description)
		t.Logf("%q: matrix as the oracle says %s after apply", tc.Description, time.Since(applied).Round(100*time.Millisecond))
		deleteAll()
	}
	// With every policy gone, everything connects again.
	checkMatrix(t, l, pods, targets, expectMatrix(pods, nil), "policies deleted")
}

// checkMatrix probes until the matrix equals want (policy takes a moment to
// reach the nodes) and fails with the differences after 45s.
func checkMatrix(t *testing.T, l *Lab, pods []Pod, targets []Target, want [][]bool, what string) {
	t.Helper()
	var diff []string
	err := waitFor(context.Background(), 45*time.Second, func() error {
		got, err := l.Matrix(context.Background(), pods, targets, time.Second)
		if err != nil {
			return err
		}
		diff = diff[:0]
		for i, p := range pods {
			for j, tg := range targets {
				if got[i][j] != want[i][j] {
					diff = append(diff, fmt.Sprintf("%s -> %s: connected=%v, oracle=%v", p, tg, got[i][j], want[i][j]))
				}
			}
		}
		if len(diff) > 0 {
			return fmt.Errorf("%d cells differ", len(diff))
		}
		return nil
	})
	if err != nil {
		sort.Strings(diff)
		if len(diff) > 20 {
			diff = append(diff[:20], "...")
		}
		t.Fatalf("%s: %v\n%s", what, err, strings.Join(diff, "\n"))
	}
}

// testAgentRestart deletes the agent pod of the node a connection ends on,
// while the connection is open and a policy denies other traffic: the
// connection keeps working while the agent is gone and after the new one
// is ready, and the policy holds throughout.
func testAgentRestart(t *testing.T, l *Lab, pods []Pod) {
	ctx := context.Background()
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	denyY := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "deny-all-ingress"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if err := c.Create(ctx, denyY); err != nil {
		t.Fatal(err)
	}
	defer c.Delete(ctx, denyY)
	xa, xb, ya := findPod(t, pods, "x/a"), findPod(t, pods, "x/b"), findPod(t, pods, "y/a")
	if xa.Node == xb.Node {
		t.Fatalf("fixture: x/a and x/b on one node")
	}
	targets := []Target{{"tcp", xb.IP + ":80"}, {"tcp", ya.IP + ":80"}}
	wantRow := func(when string) {
		t.Helper()
		err := waitFor(ctx, 20*time.Second, func() error {
			row, err := l.ProbeRow(ctx, xa, targets, time.Second)
			if err != nil {
				return err
			}
			if !row[0] || row[1] {
				return fmt.Errorf("x/a -> x/b connected=%v (want true), x/a -> y/a connected=%v (want false)", row[0], row[1])
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	wantRow("before the restart")

	// An established connection from x/b's node (its host) to x/a across
	// the tunnel: x/a's node's agent is the one restarted.
	var xbNode Node
	for _, n := range l.state.Nodes {
		if n.Name == xb.Node {
			xbNode = n
		}
	}
	conn, err := dialInNS(xbNode.NetNS, "tcp", xa.IP+":80")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	echo := func(when string) {
		t.Helper()
		msg := fmt.Sprintf("ping %s\n", when)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatalf("%s: write: %v", when, err)
		}
		if got, err := r.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("%s: echo %q, %v", when, got, err)
		}
	}
	echo("before")

	k, err := l.client()
	if err != nil {
		t.Fatal(err)
	}
	agents, err := k.cs.CoreV1().Pods(SigilNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + xa.Node})
	if err != nil || len(agents.Items) != 1 {
		t.Fatalf("agent pod on %s: %v %d", xa.Node, err, len(agents.Items))
	}
	old := agents.Items[0]
	zero := int64(0)
	if err := k.cs.CoreV1().Pods(SigilNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	echo("agent deleted")
	wantRow("while the agent restarts")
	var names []string
	for _, n := range l.state.Nodes {
		names = append(names, n.Name)
	}
	if err := waitFor(ctx, 3*time.Minute, func() error {
		if _, err := k.cs.CoreV1().Pods(SigilNamespace).Get(ctx, old.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("old agent pod %s still there", old.Name)
		}
		return k.sigilReady(ctx, names)
	}); err != nil {
		t.Fatalf("agent back: %v\n%s", err, k.podSummary(ctx))
	}
	echo("agent back")
	wantRow("after the restart")
}

// testService creates a ClusterIP Service over pod b of every fixture
// namespace: kube-controller-manager's EndpointSlice controller fills it,
// the agents load-balance it in eBPF, and a pod on either node reaches the
// backends through the ClusterIP over TCP and UDP; a policy that denies the
// backends' ingress is judged on the backend, so it holds through the
// ClusterIP too.
func testService(t *testing.T, l *Lab, pods []Pod) {
	ctx := context.Background()
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"pod": "b"}, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 8080, TargetPort: intstr.FromString("serve-80-tcp"), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 8081, TargetPort: intstr.FromInt32(81), Protocol: corev1.ProtocolUDP},
		}}}
	if err := c.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	defer c.Delete(ctx, svc)
	vip := svc.Spec.ClusterIP
	targets := []Target{{"tcp", vip + ":8080"}, {"udp", vip + ":8081"}}
	clients := []Pod{findPod(t, pods, "x/a"), findPod(t, pods, "x/c"), findPod(t, pods, "y/a")}
	if clients[0].Node == clients[2].Node {
		t.Fatal("fixture: x/a and y/a on one node")
	}
	checkMatrix(t, l, clients, targets, [][]bool{{true, true}, {true, true}, {true, true}}, "ClusterIP "+vip)
	// The backend's policy applies to traffic through the ClusterIP: only
	// namespace x may reach x/b.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-from-x"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}},
		}}
	if err := c.Create(ctx, np); err != nil {
		t.Fatal(err)
	}
	checkMatrix(t, l, clients, targets, [][]bool{{true, true}, {true, true}, {false, false}}, "ClusterIP "+vip+" with b-from-x")
	if err := c.Delete(ctx, np); err != nil {
		t.Fatal(err)
	}
	// Egress is judged on the backend too: x/c may only reach pod b, which
	// it does through b's ClusterIP (not a pod address), while x/a's egress
	// allows only pod c, so b's ClusterIP is closed to it.
	egress := func(name, pod, to string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": to}}}}}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			}}
	}
	for _, p := range []*networkingv1.NetworkPolicy{egress("c-to-b", "c", "b"), egress("a-to-c", "a", "c")} {
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		defer c.Delete(ctx, p)
	}
	checkMatrix(t, l, clients, targets, [][]bool{{false, false}, {true, true}, {true, true}}, "ClusterIP "+vip+" with egress policies")
}

func findPod(t *testing.T, pods []Pod, name string) Pod {
	t.Helper()
	for _, p := range pods {
		if p.String() == name {
			return p
		}
	}
	t.Fatalf("no pod %s", name)
	return Pod{}
}

// testHelmUpgrade changes a value that rolls the agents (the ConfigMap's
// checksum) and checks Sigil comes back with connectivity intact.
func testHelmUpgrade(t *testing.T, l *Lab, pods []Pod) {
	ctx := context.Background()
	if err := l.Upgrade(ctx, "flows.bufferSize=8192"); err != nil {
		t.Fatal(err)
	}
	k, err := l.client()
	if err != nil {
		t.Fatal(err)
	}
	cm, err := k.cs.CoreV1().ConfigMaps(SigilNamespace).Get(ctx, "sigil-config", metav1.GetOptions{})
	if err != nil || cm.Data["flow-buffer"] != "8192" {
		t.Fatalf("sigil-config after upgrade: %v %v", cm.Data["flow-buffer"], err)
	}
	checkMatrix(t, l, pods[:2], fixtureTargets(pods), expectMatrix(pods, nil)[:2], "after helm upgrade")
}

// testSigilNode runs the real CLI with --node: pods/exec through the API
// server into that node's agent.
func testSigilNode(t *testing.T, l *Lab) {
	for _, n := range l.state.Nodes {
		out, err := exec.Command(l.cfg.SigilBinary, "--kubeconfig", l.cfg.Kubeconfig(), "--node", n.Name, "status", "-o", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("sigil --node %s status: %v\n%s", n.Name, err, out)
		}
		var st map[string]any
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("sigil --node %s status -o json: %v\n%s", n.Name, err, out)
		}
		if !strings.Contains(string(out), n.Name) {
			t.Errorf("status of %s does not name the node:\n%s", n.Name, out)
		}
	}
}

// downAndCheck runs Down and checks that nothing the lab made is left.
func downAndCheck(t *testing.T, l *Lab) {
	if err := l.Down(); err != nil {
		t.Errorf("lab down: %v", err)
	}
	s, c := l.state, l.cfg
	for _, p := range s.Processes {
		if p.alive() {
			t.Errorf("%s (pid %d) still running", p.Name, p.PID)
		}
	}
	for _, n := range s.Nodes {
		if pids := shimPIDs(n.ContainerdSocket); len(pids) > 0 {
			t.Errorf("%s: shims still running: %v", n.Name, pids)
		}
	}
	for _, ns := range s.NetNS {
		if _, err := os.Stat(netnsPath(ns)); err == nil {
			t.Errorf("network namespace %s left", ns)
		}
	}
	for _, cg := range s.Cgroups {
		if _, err := os.Stat(cg); err == nil {
			t.Errorf("cgroup %s left", cg)
		}
	}
	if _, err := os.Stat(c.pinDir()); err == nil {
		t.Errorf("pins %s left", c.pinDir())
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(data), " "+s.Dir) {
		t.Errorf("mounts under %s left", s.Dir)
	}
	for k, v := range s.Sysctls {
		if got, _ := os.ReadFile("/proc/sys/" + k); strings.TrimSpace(string(got)) != v {
			t.Errorf("sysctl %s = %s, was %s", k, strings.TrimSpace(string(got)), v)
		}
	}
	if _, err := os.Stat(s.path); err == nil {
		t.Errorf("state file %s left", s.path)
	}
	for _, ns := range listNetNS() {
		if strings.HasPrefix(ns, "cni-") && !preexistingNetNS[ns] {
			t.Errorf("pod network namespace %s left", ns)
		}
	}
}

// preexistingNetNS are the pod namespaces present before the suite (other
// tests' or a running lab's), which downAndCheck must not count.
var preexistingNetNS = map[string]bool{}

func init() {
	for _, ns := range listNetNS() {
		preexistingNetNS[ns] = true
	}
}

func listNetNS() []string {
	ents, _ := os.ReadDir("/var/run/netns")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

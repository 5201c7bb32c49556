package cni_test

// Multi-node end-to-end test: two node namespaces on an underlay veth, each
// running the built sigil-agent (via nsenter) against a real API server
// (envtest), pods added by the built sigil-cni through libcni. The operator
// does not run: the test writes the SigilNodes and SigilEndpoints it would
// publish. Addresses come from 198.18.0.0/15 only. Needs root and the
// Kubernetes test binaries (skipped without them unless CI is set).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// TestMultiNodeE2E runs two nodes, each with the real agent and pods added
// by the real CNI plugin, in tunnel and native routing: cross-node TCP, UDP
// and ICMP are allowed, then a NetworkPolicy on the far pod allows only TCP
// 8080 from the sender's app; the far node sees the sender's identity; a
// pod reaches an outside host masqueraded to its node's address; the local
// node probes its pod while a remote node is denied; killing and restarting
// either node's agent keeps an established cross-node connection working.
func TestMultiNodeE2E(t *testing.T) {
	requireE2E(t)
	env := k8stest.StartEnv(t)
	for i, mode := range []datapath.RoutingMode{datapath.RoutingTunnel, datapath.RoutingNative} {
		t.Run(string(mode), func(t *testing.T) { testMultiNode(t, env, mode, 60+10*i) })
	}
}

// apiProxy listens in ns on the API server's own loopback address and port
// and forwards to it in the test's namespace, so a kubeconfig with the API
// server's URL (and its certificate's 127.0.0.1) works from a node
// namespace.
func apiProxy(t *testing.T, ns *testnet.NS, cfg *rest.Config) {
	t.Helper()
	u, err := url.Parse(cfg.Host)
	if err != nil || u.Host == "" {
		t.Fatalf("API server host %q: %v", cfg.Host, err)
	}
	f, err := ns.Forward(u.Host, u.Host)
	if err != nil {
		t.Fatalf("API proxy: %v", err)
	}
	t.Cleanup(func() { f.Close() })
}

// writeKubeconfig writes env's admin kubeconfig into the test's temporary
// folder.
func writeKubeconfig(t *testing.T, env *k8stest.Env) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// newK8sNode builds a node (namespace, folders, agent): for a node under
// Kubernetes, setup (when not nil) wires the underlay and the API proxy
// before the agent starts; newNode is it without setup.
func newK8sNode(t *testing.T, podCIDR string, setup func(*node), extra ...string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, podCIDR: podCIDR,
		ns:       testnet.NewNS(t, "sgn"),
		pinDir:   "/sys/fs/bpf/sigil-test-" + randHex(4),
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "run", "sigil.sock"),
		confDir:  filepath.Join(dir, "net.d"),
		cniBin:   filepath.Join(dir, "bin"),
		cacheDir: filepath.Join(dir, "cache"),
		extra:    extra,
	}
	t.Cleanup(func() { os.RemoveAll(n.pinDir) })
	n.ns.MustRun(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	n.cfg = libcni.NewCNIConfigWithCacheDir([]string{n.cniBin}, n.cacheDir, nil)
	if setup != nil {
		setup(n)
	}
	n.startAgent(nil)
	t.Cleanup(n.stopAgent)
	return n
}

func eventuallyE2E(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustCreateObj(t *testing.T, c client.Client, o client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), o); err != nil {
		t.Fatalf("create %T %s: %v", o, o.GetName(), err)
	}
	t.Cleanup(func() { c.Delete(context.Background(), o) })
}

// twoNodes describes two nodes under Kubernetes on an underlay veth.
type twoNodes struct {
	names, cidrs, underlay [2]string
	mode                   datapath.RoutingMode
	flags                  []string // agent flags besides the common ones
	// setup1, if set, prepares node 1 before its agent starts (the
	// underlay comes with node 2, once both namespaces exist).
	setup1 func(*node)
}

// startTwoNodes writes the SigilNodes (what the operator would), then
// starts both nodes with the real agent against env. Node 1's agent starts
// before the underlay exists; it must still program the route to node 2
// from its SigilNode.
func startTwoNodes(t *testing.T, env *k8stest.Env, kubeconfig string, s twoNodes) [2]*node {
	t.Helper()
	for i := range s.names {
		mustCreateObj(t, env.Client, &sigilv1.SigilNode{ObjectMeta: metav1.ObjectMeta{Name: s.names[i]},
			Spec: sigilv1.SigilNodeSpec{PodCIDRs: []string{s.cidrs[i]}, InternalIP: s.underlay[i], TunnelEndpoint: s.underlay[i]}})
	}
	flags := func(i int) []string {
		return append([]string{"--k8s=true", "--kubeconfig", kubeconfig, "--node-name", s.names[i],
			"--routing-mode", string(s.mode), "--cluster-pool-cidr", "198.18.0.0/16", "--masquerade=true",
			"--metrics-address", ""}, s.flags...)
	}
	var nodes [2]*node
	nodes[0] = newK8sNode(t, s.cidrs[0], func(n *node) {
		apiProxy(t, n.ns, env.Config)
		if s.setup1 != nil {
			s.setup1(n)
		}
	}, flags(0)...)
	nodes[1] = newK8sNode(t, s.cidrs[1], func(n *node) {
		apiProxy(t, n.ns, env.Config)
		testnet.Veth(t, nodes[0].ns, "ul0", n.ns, "ul0")
		nodes[0].ns.MustRun(t, "ip", "addr", "add", s.underlay[0]+"/24", "dev", "ul0")
		n.ns.MustRun(t, "ip", "addr", "add", s.underlay[1]+"/24", "dev", "ul0")
	}, flags(1)...)
	return nodes
}

// addK8sPod creates the Pod object named name in namespace ns with
// labels, placed on nodeName as the scheduler would have, then adds the
// pod through the real CNI plugin on n and waits for the agent to give it
// the identity of its labels.
func addK8sPod(t *testing.T, admin client.Client, ns string, n *node, nodeName, name string, labels map[string]string) (*pod, apitypes.Endpoint) {
	t.Helper()
	mustCreateObj(t, admin, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}})
	p := n.newPod(t, name+"-"+randHex(6))
	p.rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name},
		{"K8S_POD_UID", "uid-" + p.rt.ContainerID}}
	if err := n.add(n.conflist("1.1.0"), p); err != nil {
		t.Fatalf("ADD %s: %v\nagent log:\n%s", name, err, n.log())
	}
	var ep apitypes.Endpoint
	eventuallyE2E(t, 20*time.Second, "identity of "+name+" from its labels", func() (err error) {
		ep, err = n.client().GetEndpoint(context.Background(), p.rt.ContainerID, "eth0")
		if err == nil && (ep.Identity < 256 || ep.PodName != name) {
			err = fmt.Errorf("endpoint %+v", ep)
		}
		return err
	})
	return p, ep
}

// publishEndpoint writes the SigilEndpoint of a pod, as the operator
// publishes it.
func publishEndpoint(t *testing.T, admin client.Client, ns, name, nodeName string, p *pod, id uint32) {
	t.Helper()
	mustCreateObj(t, admin, &sigilv1.SigilEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status: sigilv1.SigilEndpointStatus{Identity: int64(id), NodeName: nodeName, IPs: []string{p.ip.String()}}})
}

func testMultiNode(t *testing.T, env *k8stest.Env, mode datapath.RoutingMode, base int) {
	start := time.Now()
	ctx := context.Background()
	admin := env.Client
	ns := k8stest.Namespace(t, admin)
	kubeconfig := writeKubeconfig(t, env)

	names := [2]string{fmt.Sprintf("mn-%s-1", mode), fmt.Sprintf("mn-%s-2", mode)}
	cidrs := [2]string{fmt.Sprintf("198.18.%d.0/24", base+1), fmt.Sprintf("198.18.%d.0/24", base+2)}
	underlay := [2]string{fmt.Sprintf("198.19.%d.1", base), fmt.Sprintf("198.19.%d.2", base)}
	outsideNet := base + 5
	nodeExt := fmt.Sprintf("198.19.%d.1", outsideNet)
	outsideIP := fmt.Sprintf("198.19.%d.2", outsideNet)

	// The underlay: node 1's ul0 <-> node 2's ul0. Node 1 also has an
	// "outside" host on ext0.
	var outside *testnet.NS
	nodes := startTwoNodes(t, env, kubeconfig, twoNodes{names: names, cidrs: cidrs, underlay: underlay, mode: mode,
		setup1: func(n *node) {
			outside = testnet.NewNS(t, "sgo")
			testnet.Veth(t, n.ns, "ext0", outside, "eth0")
			n.ns.MustRun(t, "ip", "addr", "add", nodeExt+"/24", "dev", "ext0")
			outside.MustRun(t, "ip", "addr", "add", outsideIP+"/24", "dev", "eth0")
		}})
	n1, n2 := nodes[0], nodes[1]

	// Pods through the real CNI plugin, named as their Pod objects.
	add := func(n *node, i int, name string) (*pod, apitypes.Endpoint) {
		t.Helper()
		return addK8sPod(t, admin, ns, n, names[i], name, map[string]string{"app": name})
	}
	a, epA := add(n1, 0, "a")
	b, epB := add(n2, 1, "b")
	if epA.Identity == epB.Identity {
		t.Fatalf("a and b share identity %d (labels app=a and app=b)", epA.Identity)
	}
	// The SigilEndpoints, as the operator publishes them. In tunnel mode
	// a's comes only after node 2 has shown it reads a's identity from the
	// VNI (it has no ipcache entry for a until then); natively routed,
	// node 2 needs it to know a at all.
	publish := func(name, nodeName string, p *pod, id uint32) {
		t.Helper()
		publishEndpoint(t, admin, ns, name, nodeName, p, id)
	}
	publish("b", names[1], b, epB.Identity)
	if mode == datapath.RoutingNative {
		publish("a", names[0], a, epA.Identity)
	}
	t.Logf("%s: a=%s (id %d) on %s, b=%s (id %d) on %s", mode, a.ip, epA.Identity, names[0], b.ip, epB.Identity, names[1])

	for _, port := range []int{8080, 9090} {
		b.ns.Serve(t, fmt.Sprintf("%s:%d", b.ip, port))
	}
	a.ns.Serve(t, a.ip.String()+":8080")
	addrB := func(port int) string { return fmt.Sprintf("%s:%d", b.ip, port) }

	// Allowed before any policy: TCP both ways, UDP, ICMP.
	eventuallyE2E(t, 20*time.Second, "a -> b:8080 across nodes", func() error {
		return a.ns.TCP(addrB(8080), time.Second)
	})
	if err := b.ns.TCP(a.ip.String()+":8080", 3*time.Second); err != nil {
		t.Fatalf("b -> a:8080: %v", err)
	}
	if err := a.ns.UDP(addrB(8080), 3*time.Second); err != nil {
		t.Fatalf("UDP a -> b:8080: %v", err)
	}
	if err := a.ns.Ping(b.ip.String()); err != nil {
		t.Fatalf("ICMP a -> b: %v", err)
	}

	// The far node knows the sender by its identity (tunnel mode: read from
	// the VNI, as node 2 has no ipcache entry for a yet; native: from the
	// ipcache): node 2's flow records of a's traffic name a's identity.
	if mode == datapath.RoutingTunnel {
		maps, err := datapath.OpenPinned(n2.pinDir)
		if err != nil {
			t.Fatal(err)
		}
		_, known, err := maps.IPCache.Lookup(a.ip)
		maps.Close()
		if err != nil || known {
			t.Fatalf("node 2's ipcache knows a (%v, %v) before its SigilEndpoint exists", known, err)
		}
	}
	eventuallyE2E(t, 10*time.Second, "node 2's flows from a carry a's identity", func() error {
		var seen []string
		found := false
		err := n2.client().Flows(ctx, flows.Query{Last: 4096}.Values(), func(r apitypes.FlowRecord) error {
			if f := r.Flow; f != nil && f.Source.IP == a.ip && f.Destination.IP == b.ip {
				seen = append(seen, fmt.Sprint(f.Source.Identity))
				if f.Source.Identity == epA.Identity {
					found = true
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("flows a -> b on node 2 with source identities %v, want %d", seen, epA.Identity)
		}
		return nil
	})

	if mode == datapath.RoutingTunnel {
		publish("a", names[0], a, epA.Identity)
	}

	// A pod reaches an outside host masqueraded to its node's address, and
	// gets the replies.
	var outLn net.Listener
	if err := outside.Do(func() (err error) { outLn, err = net.Listen("tcp4", outsideIP+":7000"); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outLn.Close() })
	peers := make(chan string, 16)
	go func() {
		for {
			c, err := outLn.Accept()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	if err := a.ns.TCP(outsideIP+":7000", 3*time.Second); err != nil {
		t.Fatalf("a -> outside host %s: %v", outsideIP, err)
	}
	if src := <-peers; src != nodeExt {
		t.Fatalf("outside host saw source %s, want the node's %s (masqueraded)", src, nodeExt)
	}

	// An established cross-node connection, kept through the rest.
	conn, err := a.ns.DialTCP(addrB(8080), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := testnet.Echo(conn, 3*time.Second); err != nil {
		t.Fatalf("established a -> b:8080: %v", err)
	}

	// A NetworkPolicy on b: TCP 8080 from app=a only.
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(8080)
	mustCreateObj(t, admin, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b-from-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		}})
	eventuallyE2E(t, 20*time.Second, "policy: a -> b:9090 denied", func() error {
		if err := a.ns.TCP(addrB(9090), 300*time.Millisecond); err == nil {
			return fmt.Errorf("a -> b:9090 still connects")
		}
		return nil
	})
	denied := func(when string) {
		t.Helper()
		if err := a.ns.TCP(addrB(8080), 3*time.Second); err != nil {
			t.Errorf("%s: TCP a -> b:8080 (allowed): %v", when, err)
		}
		if err := a.ns.TCP(addrB(9090), 500*time.Millisecond); err == nil {
			t.Errorf("%s: TCP a -> b:9090 connects; the policy denies it", when)
		}
		if err := a.ns.UDP(addrB(8080), 500*time.Millisecond); err == nil {
			t.Errorf("%s: UDP a -> b:8080 answered; the policy allows TCP only", when)
		}
		if err := a.ns.Ping(b.ip.String()); err == nil {
			t.Errorf("%s: ICMP a -> b answered; the policy denies it", when)
		}
		// Node probes: b's own node reaches it (host ingress), node 1 (a
		// remote node, not app=a) does not.
		if err := n2.ns.TCP(addrB(8080), 3*time.Second); err != nil {
			t.Errorf("%s: node 2 -> its pod b:8080 (probe): %v", when, err)
		}
		if err := n1.ns.TCP(addrB(8080), 500*time.Millisecond); err == nil {
			t.Errorf("%s: node 1 -> b:8080 connects; the policy allows only app=a", when)
		}
		if err := testnet.Echo(conn, 3*time.Second); err != nil {
			t.Errorf("%s: established a -> b:8080: %v", when, err)
		}
	}
	denied("with the policy")

	// Kill node 2's agent (SIGKILL, like a crash): the datapath stays, the
	// established connection and the policy keep working; and after the
	// restart too.
	n2.stopAgent()
	denied("node 2's agent down")
	n2.startAgent(nil)
	if err := testnet.Echo(conn, 3*time.Second); err != nil {
		t.Fatalf("established a -> b:8080 after node 2's agent restarted: %v", err)
	}
	denied("node 2's agent restarted")
	// The same on the sending side: node 1's agent killed and restarted.
	n1.stopAgent()
	if err := testnet.Echo(conn, 3*time.Second); err != nil {
		t.Fatalf("established a -> b:8080 with node 1's agent down: %v", err)
	}
	n1.startAgent(nil)
	denied("node 1's agent restarted")
	if mode == datapath.RoutingTunnel {
		if out, err := n1.ns.Run("ip", "-d", "link", "show", datapath.DefaultTunnelDevice); err != nil || !strings.Contains(out, "vxlan") {
			t.Errorf("node 1 tunnel device: %s %v", out, err)
		}
	}
	t.Logf("%s: %s", mode, time.Since(start).Round(time.Millisecond))
}

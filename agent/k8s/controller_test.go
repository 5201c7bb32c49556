package k8s_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/k8s"
	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/internal/testnet"
)

func TestMain(m *testing.M) { os.Exit(k8stest.Run(m)) }

const nodeName = "node-a"

func logger() *slog.Logger {
	if os.Getenv("SIGIL_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// agentRBACConfig returns a config for a user bound to exactly the
// generated agent ClusterRole (agent/rbac/role.yaml).
func agentRBACConfig(t *testing.T, c client.Client) *rest.Config {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(data, &role); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	role.ResourceVersion = ""
	if err := c.Create(ctx, &role); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	user := "system:sigil-agent:" + nodeName
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "sigil-agent-test"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}}}
	if err := c.Create(ctx, binding); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cfg, err := k8stest.StartEnv(t).UserConfig(user)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testAgent is an in-process agent: datapath, enforcer, manager, controller.
type testAgent struct {
	dp      *datapath.Datapath
	enf     *agent.Enforcer
	m       *agent.Manager
	ctrl    *k8s.Controller
	cancel  context.CancelFunc
	started bool
}

type agentEnv struct {
	pinDir, stateDir string
	node             *testnet.Node
	cfg              *rest.Config
	admin            client.Client
	cidr             netip.Prefix
}

// start runs an agent; withController false stops after restore (the
// state before the API server is consulted).
func (e *agentEnv) start(t *testing.T, withController bool) *testAgent {
	t.Helper()
	log := logger()
	d, err := datapath.Load(datapath.Config{PinDir: e.pinDir, NetNS: e.node.NS.Path, EventsBytes: 1 << 16, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetRuntimeConfig(datapath.RuntimeConfig{Enforcement: datapath.EnforceDefault,
		Flags: datapath.ConfigAllowHostIngress}); err != nil {
		t.Fatal(err)
	}
	enf, err := agent.NewEnforcer(agent.EnforcerConfig{Datapath: agent.NewBPFDatapath(d), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := k8s.New(k8s.Config{RestConfig: e.cfg, NodeName: nodeName, Enforcer: enf,
		// The operator's allocator, through the agent's own (RBAC-limited) client.
		AllocateIdentities: true,
		ProbeInterval:      500 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m, err := agent.NewManager(agent.Config{StateDir: e.stateDir, PodCIDR: e.cidr, Datapath: enf.Datapath(),
		Labels: ctrl.LabelSource(), Identities: ctrl.IdentityAllocator(), PolicyFlags: enf.PolicyFlags,
		LinkExists: func(name string, idx int) bool {
			got, err := e.node.NS.InterfaceIndex(name)
			return err == nil && got == idx
		}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	enf.Attach(m)
	a := &testAgent{dp: d, enf: enf, m: m, ctrl: ctrl}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	if withController {
		ctrl.Start(ctx)
		a.started = true
	}
	return a
}

func (a *testAgent) stop() {
	a.cancel()
	if a.started {
		a.ctrl.Wait()
	}
	a.m.Close()
	a.dp.Close()
}

// addEndpoint wires a pod namespace with ip on the node and creates its
// endpoint through the manager, as sigil-cni's ADD does.
func (e *agentEnv) addEndpoint(t *testing.T, ag *testAgent, ip netip.Addr, ns, name string) (*testnet.Pod, apitypes.Endpoint) {
	t.Helper()
	p, err := e.node.AddPod(ip, testnet.Unique("sgp"))
	if err != nil {
		t.Fatal(err)
	}
	hostMAC, err := e.node.NS.HardwareAddr(p.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := ag.m.Create(apitypes.EndpointRequest{ContainerID: "cid-" + name, IfName: "eth0", NetNS: p.NS.Path,
		HostIfName: p.HostIf, HostIfIndex: p.IfIndex, HostMAC: hostMAC.String(), MAC: p.MAC.String(),
		PodNamespace: ns, PodName: name})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Addresses[0].IP != ip {
		t.Fatalf("IPAM gave %s %s, the test wired %s", name, ep.Addresses[0].IP, ip)
	}
	return p, ep
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	var last error
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, last)
}

func mustCreate(t *testing.T, c client.Client, o client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), o); err != nil {
		t.Fatalf("create %T %s: %v", o, o.GetName(), err)
	}
}

func pod(ns, name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "pause",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}}}
}

func identityOf(t *testing.T, c client.Client, lbls identity.Labels) (datapath.Identity, error) {
	var list sigilv1.SigilIdentityList
	if err := c.List(context.Background(), &list); err != nil {
		return 0, err
	}
	for _, si := range list.Items {
		if identity.Labels(si.Spec.SecurityLabels).Equal(lbls) {
			return datapath.Identity(si.Spec.ID), nil
		}
	}
	return 0, fmt.Errorf("no SigilIdentity for %v", lbls)
}

func nsLabels(t *testing.T, c client.Client, ns string) map[string]string {
	var n corev1.Namespace
	if err := c.Get(context.Background(), client.ObjectKey{Name: ns}, &n); err != nil {
		t.Fatal(err)
	}
	return n.Labels
}

// TestAgentPolicyEndToEnd drives a node agent (real BPF maps, real veths)
// from a real API server: pods and a NetworkPolicy produce the expected
// policy entries; a label change moves an endpoint to its new identity and
// cuts its established flow that the policy now denies; a policy changed
// while the agent is down is enforced after restart without a window in
// which the maps are cleared; deleting the policy removes its entries;
// SigilNodes and SigilEndpoints fill the ipcache. The agent runs as a
// user bound to the generated RBAC role.
func TestAgentPolicyEndToEnd(t *testing.T) {
	testnet.RequireRoot(t)
	dt.RequireBPF(t)
	_, admin := k8stest.Start(t)
	ctx := context.Background()
	ns := k8stest.Namespace(t, admin)
	fl := identity.NewFilter()

	node, err := testnet.CreateNode(netip.MustParseAddr("198.18.7.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Delete() })
	env := &agentEnv{pinDir: dt.PinDir(t), stateDir: t.TempDir(), node: node, cfg: agentRBACConfig(t, admin),
		admin: admin, cidr: netip.MustParsePrefix("198.18.7.0/24")}

	// Pods in the API first, as the kubelet would see them.
	mustCreate(t, admin, pod(ns, "a", map[string]string{"app": "a"}))
	mustCreate(t, admin, pod(ns, "b", map[string]string{"app": "b"}))

	ag := env.start(t, true)
	defer func() { ag.stop() }()

	// The CNI's ADD, straight through the manager, for two veths.
	ipA, ipB := netip.MustParseAddr("198.18.7.2"), netip.MustParseAddr("198.18.7.3")
	podA, epA := env.addEndpoint(t, ag, ipA, ns, "a")
	podB, epB := env.addEndpoint(t, ag, ipB, ns, "b")

	lblsOf := func(app string) identity.Labels {
		return fl.SecurityLabels(ns, map[string]string{"app": app}, nsLabels(t, admin, ns))
	}
	var idA, idB datapath.Identity
	eventually(t, "endpoints resolve to their pods' identities", func() error {
		var err error
		if idA, err = identityOf(t, admin, lblsOf("a")); err != nil {
			return err
		}
		if idB, err = identityOf(t, admin, lblsOf("b")); err != nil {
			return err
		}
		for ip, want := range map[netip.Addr]datapath.Identity{ipA: idA, ipB: idB} {
			e, err := ag.dp.Endpoints.Lookup(ip)
			if err != nil {
				return err
			}
			if e.Identity != want || e.Flags != 0 {
				return fmt.Errorf("endpoint %s: identity %d flags %d, want %d flags 0", ip, e.Identity, e.Flags, want)
			}
			c, ok, err := ag.dp.IPCache.Lookup(ip)
			if err != nil || !ok || c.Identity != want || !c.LocalEndpoint {
				return fmt.Errorf("ipcache %s: %+v %v %v", ip, c, ok, err)
			}
		}
		return nil
	})
	// A pod the API server does not show yet: init identity, failed
	// closed; once its Pod appears it resolves and opens.
	ipL := netip.MustParseAddr("198.18.7.4")
	_, epL := env.addEndpoint(t, ag, ipL, ns, "late")
	if e, err := ag.dp.Endpoints.Lookup(ipL); err != nil || e.Identity != datapath.IdentityInit ||
		e.Flags != agent.FailClosedFlags || datapath.Identity(epL.Identity) != datapath.IdentityInit {
		t.Fatalf("unknown pod's endpoint: %+v %v, want init identity, both directions enforced", e, err)
	}
	mustCreate(t, admin, pod(ns, "late", map[string]string{"app": "late"}))
	eventually(t, "late pod resolves", func() error {
		idL, err := identityOf(t, admin, lblsOf("late"))
		if err != nil {
			return err
		}
		if e, err := ag.dp.Endpoints.Lookup(ipL); err != nil || e.Identity != idL || e.Flags != 0 {
			return fmt.Errorf("late endpoint %+v %v, want identity %d flags 0", e, err, idL)
		}
		return nil
	})

	podB.NS.Serve(t, ipB.String()+":8080")
	addrB := ipB.String() + ":8080"
	if err := podA.NS.TCP(addrB, 2*time.Second); err != nil {
		t.Fatalf("A -> B without policy: %v", err)
	}

	// A NetworkPolicy: B accepts TCP 8080 from app=a only.
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(8080)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b-from-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		}}
	mustCreate(t, admin, np)
	keyA := datapath.PolicyKey{Identity: idA, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}
	eventually(t, "policy entries in B's BPF policy map", func() error {
		e, err := ag.dp.Endpoints.Lookup(ipB)
		if err != nil {
			return err
		}
		if e.Flags != datapath.EndpointEnforceIngress {
			return fmt.Errorf("B flags %d", e.Flags)
		}
		entries, err := ag.dp.Policy.List(epB.ID)
		if err != nil {
			return err
		}
		if ent, ok := entries[keyA]; !ok || ent.Deny {
			return fmt.Errorf("B's entries %v lack an allow for %v", entries, keyA)
		}
		if len(entries) != 1 {
			return fmt.Errorf("B's entries %v, want only %v", entries, keyA)
		}
		return nil
	})
	if n := histogramCount(t); n == 0 {
		t.Errorf("sigil_policy_implementation_delay_seconds has no observations")
	}
	// An established flow A -> B that the policy allows.
	conn, err := podA.NS.DialTCP(addrB, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := testnet.Echo(conn, 2*time.Second); err != nil {
		t.Fatalf("A -> B allowed by policy: %v", err)
	}

	// Label change: A moves to app=c, a new identity, without being
	// re-created; B's policy now denies A's established flow, whose
	// conntrack entries are flushed, so it is cut.
	var pa corev1.Pod
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "a"}, &pa); err != nil {
		t.Fatal(err)
	}
	pa.Labels = map[string]string{"app": "c"}
	if err := admin.Update(ctx, &pa); err != nil {
		t.Fatal(err)
	}
	var idC datapath.Identity
	eventually(t, "A moves to its new identity", func() error {
		var err error
		if idC, err = identityOf(t, admin, lblsOf("c")); err != nil {
			return err
		}
		e, err := ag.dp.Endpoints.Lookup(ipA)
		if err != nil {
			return err
		}
		c, _, _ := ag.dp.IPCache.Lookup(ipA)
		if e.Identity != idC || e.ID != epA.ID || c.Identity != idC {
			return fmt.Errorf("A: endpoint %+v ipcache %+v, want identity %d id %d", e, c, idC, epA.ID)
		}
		return nil
	})
	if got, ok := ag.m.Get("cid-a", "eth0"); !ok || got.ID != epA.ID {
		t.Fatalf("endpoint A was dropped: %+v %v", got, ok)
	}
	eventually(t, "A's identity persisted", func() error {
		if got, _ := ag.m.Get("cid-a", "eth0"); datapath.Identity(got.Identity) != idC {
			return fmt.Errorf("manager has identity %d", got.Identity)
		}
		return nil
	})
	eventually(t, "conntrack of the now-denied flow flushed", func() error {
		cts, err := ag.dp.Conntrack.List()
		if err != nil {
			return err
		}
		for _, ct := range cts {
			if ct.Tuple.Direction == datapath.Ingress && ct.Tuple.Dst == ipB && ct.Tuple.Src == ipA {
				return fmt.Errorf("ingress entry %s still there", ct.Tuple)
			}
		}
		return nil
	})
	if err := testnet.Echo(conn, 500*time.Millisecond); err == nil {
		t.Fatal("the established flow A -> B survived a policy change that denies it")
	}
	if err := podA.NS.TCP(addrB, 500*time.Millisecond); err == nil {
		t.Fatal("new flow A(app=c) -> B allowed")
	}

	// Back to app=a; then restart with the policy changed while the
	// agent is down.
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "a"}, &pa); err != nil {
		t.Fatal(err)
	}
	pa.Labels = map[string]string{"app": "a"}
	if err := admin.Update(ctx, &pa); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A back on its identity", func() error {
		if e, err := ag.dp.Endpoints.Lookup(ipA); err != nil || e.Identity != idA {
			return fmt.Errorf("A: %+v %v", e, err)
		}
		return podA.NS.TCP(addrB, 500*time.Millisecond)
	})
	ag.stop()

	port9090 := intstr.FromInt32(9090)
	if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: "b-from-a"}, np); err != nil {
		t.Fatal(err)
	}
	np.Spec.Ingress[0].Ports[0].Port = &port9090
	if err := admin.Update(ctx, np); err != nil {
		t.Fatal(err)
	}

	// Restored, not yet synced: the maps hold exactly the last applied state.
	ag = env.start(t, false)
	if e, err := ag.dp.Endpoints.Lookup(ipB); err != nil || e.Flags != datapath.EndpointEnforceIngress || e.Identity != idB {
		t.Fatalf("B after restore, before sync: %+v %v (a policed endpoint must stay policed)", e, err)
	}
	if entries, err := ag.dp.Policy.List(epB.ID); err != nil || len(entries) != 1 {
		t.Fatalf("B's map after restore, before sync: %v %v", entries, err)
	} else if _, ok := entries[keyA]; !ok {
		t.Fatalf("B's map after restore lost %v: %v", keyA, entries)
	}
	if err := podA.NS.TCP(addrB, 2*time.Second); err != nil {
		t.Fatalf("A -> B:8080 between restore and sync (last known state allows it): %v", err)
	}
	ag.stop()
	ag = env.start(t, true)
	key9090 := keyA
	key9090.Port = 9090
	eventually(t, "restart converges to the changed policy", func() error {
		entries, err := ag.dp.Policy.List(epB.ID)
		if err != nil {
			return err
		}
		if _, ok := entries[key9090]; !ok || len(entries) != 1 {
			return fmt.Errorf("B's entries %v, want only %v", entries, key9090)
		}
		if !ag.ctrl.Health().Synced || !ag.ctrl.Health().Connected {
			return fmt.Errorf("health %+v", ag.ctrl.Health())
		}
		return nil
	})
	if err := podA.NS.TCP(addrB, 500*time.Millisecond); err == nil {
		t.Fatal("A -> B:8080 allowed after the policy moved to 9090")
	}

	// Nodes and remote pods fill the ipcache.
	remoteIP := netip.MustParseAddr("198.18.9.5")
	mustCreate(t, admin, &sigilv1.SigilNode{ObjectMeta: metav1.ObjectMeta{Name: nodeName},
		Spec: sigilv1.SigilNodeSpec{PodCIDRs: []string{"198.18.7.0/24"}, InternalIP: "198.19.0.1"}})
	mustCreate(t, admin, &sigilv1.SigilNode{ObjectMeta: metav1.ObjectMeta{Name: "node-b"},
		Spec: sigilv1.SigilNodeSpec{PodCIDRs: []string{"198.18.9.0/24"}, InternalIP: "198.19.0.2", TunnelEndpoint: "198.19.1.2"}})
	mustCreate(t, admin, &sigilv1.SigilEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "remote"},
		Status: sigilv1.SigilEndpointStatus{Identity: int64(idA), NodeName: "node-b", IPs: []string{remoteIP.String()}}})
	eventually(t, "ipcache has nodes and the remote pod", func() error {
		want := map[netip.Addr]datapath.IPCacheEntry{
			netip.MustParseAddr("198.19.0.1"): {Identity: datapath.IdentityHost},
			netip.MustParseAddr("198.19.0.2"): {Identity: datapath.IdentityRemoteNode},
			netip.MustParseAddr("198.19.1.2"): {Identity: datapath.IdentityRemoteNode},
			remoteIP:                          {Identity: idA, TunnelEndpoint: netip.MustParseAddr("198.19.1.2")},
		}
		for ip, w := range want {
			got, ok, err := ag.dp.IPCache.Lookup(ip)
			if err != nil || !ok || got != w {
				return fmt.Errorf("ipcache %s: %+v %v %v, want %+v", ip, got, ok, err, w)
			}
		}
		return nil
	})
	// The remote pod (identity of app=a) is allowed into B on 9090 by the
	// same policy: its identity already has the entry.
	if entries, _ := ag.dp.Policy.List(epB.ID); len(entries) != 1 {
		t.Fatalf("remote pod changed B's entries: %v", entries)
	}

	// Deleting the policy removes its entries and B's enforcement.
	if err := admin.Delete(ctx, np); err != nil {
		t.Fatal(err)
	}
	eventually(t, "policy deletion removes its entries", func() error {
		e, err := ag.dp.Endpoints.Lookup(ipB)
		if err != nil {
			return err
		}
		entries, err := ag.dp.Policy.List(epB.ID)
		if err != nil {
			return err
		}
		if e.Flags != 0 || len(entries) != 0 {
			return fmt.Errorf("B flags %d entries %v", e.Flags, entries)
		}
		return nil
	})
	if err := podA.NS.TCP(addrB, 2*time.Second); err != nil {
		t.Fatalf("A -> B after the policy is gone: %v", err)
	}
}

// histogramCount returns the observations of the policy implementation
// delay histogram in the default registry.
func histogramCount(t *testing.T) uint64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "sigil_policy_implementation_delay_seconds" {
			var n uint64
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
			return n
		}
	}
	return 0
}

// cutProxy is a TCP proxy to the API server whose connections can be cut
// (the API server becomes unreachable) and restored on the same address.
type cutProxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	p := &cutProxy{t: t, target: target}
	p.listen("127.0.0.1:0")
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() { p.listen(p.addr) }

// TestAgentAPIServerUnreachable: while the API server is unreachable the
// agent keeps enforcing the last known state and its health says so; once
// it is back, changes made meanwhile are applied.
func TestAgentAPIServerUnreachable(t *testing.T) {
	testnet.RequireRoot(t)
	dt.RequireBPF(t)
	_, admin := k8stest.Start(t)
	ctx := context.Background()
	ns := k8stest.Namespace(t, admin)

	node, err := testnet.CreateNode(netip.MustParseAddr("198.18.8.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Delete() })
	cfg := rest.CopyConfig(agentRBACConfig(t, admin))
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCutProxy(t, u.Host)
	cfg.Host = "https://" + proxy.addr
	env := &agentEnv{pinDir: dt.PinDir(t), stateDir: t.TempDir(), node: node, cfg: cfg,
		admin: admin, cidr: netip.MustParsePrefix("198.18.8.0/24")}
	mustCreate(t, admin, pod(ns, "s", map[string]string{"app": "s"}))
	ag := env.start(t, true)
	defer func() { ag.stop() }()
	ip := netip.MustParseAddr("198.18.8.2")
	_, ep := env.addEndpoint(t, ag, ip, ns, "s")

	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-s"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "s"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	mustCreate(t, admin, deny)
	eventually(t, "policy enforced", func() error {
		if e, err := ag.dp.Endpoints.Lookup(ip); err != nil || e.Flags != datapath.EndpointEnforceIngress {
			return fmt.Errorf("endpoint %+v %v", e, err)
		}
		if h := ag.ctrl.Health(); !h.Connected || !h.Synced {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})

	proxy.cut()
	eventually(t, "health reports the API server unreachable", func() error {
		if h := ag.ctrl.Health(); h.Connected || h.Message == "" {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	if err := admin.Delete(ctx, deny); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if e, err := ag.dp.Endpoints.Lookup(ip); err != nil || e.Flags != datapath.EndpointEnforceIngress {
		t.Fatalf("while unreachable the last known state must stay: %+v %v", e, err)
	}
	if got, ok := ag.m.Get("cid-s", "eth0"); !ok || got.ID != ep.ID {
		t.Fatalf("endpoint lost while unreachable: %+v", got)
	}

	proxy.restore()
	deadline := time.Now().Add(60 * time.Second)
	for {
		e, err := ag.dp.Endpoints.Lookup(ip)
		h := ag.ctrl.Health()
		if err == nil && e.Flags == 0 && h.Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after reconnecting: endpoint %+v %v, health %+v", e, err, h)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package cni_test

// Services end-to-end test, on the multi-node harness (multinode_e2e_test.go):
// two node namespaces on an underlay veth, the built sigil-agent in each
// against a real API server (envtest), pods added by the built sigil-cni,
// and Services with their EndpointSlices created in the API server. The
// test writes the EndpointSlices itself, as the EndpointSlice controller
// would: kube-controller-manager does not run in envtest. ClusterIPs come
// from the API server's service range, set to 198.19.232.0/24: 198.18.0.0/15
// only, and apart from the ranges other load-balancers on this machine may
// translate (envtest's default 10.0.0.0/24 in other tests, the lab's
// 198.19.240.0/20), since socket load-balancers attached to the cgroup root
// translate every process's connect().
//
// Two ways of load-balancing, the same cases:
//   - sigil-lb: the agents with --kube-proxy-replacement=true (the socket
//     load-balancer; both agents attach to the same cgroup v2 root, one
//     machine, so either node's programs may translate a pod's connect();
//     they hold the same services, which is why the test waits for both);
//   - kube-proxy: the agents with --kube-proxy-replacement=false and the real
//     kube-proxy binary in iptables mode in each node namespace
//     (internal/kubeproxy), with Node objects the test creates.
//
// In kube-proxy mode the agents get --service-cidr, so pods' egress to a
// ClusterIP is judged after kube-proxy's DNAT. The cases that need branch
// svc-datapath's datapath are marked with needsSvcDatapath (see
// svcDatapathLanded). Needs root and the Kubernetes binaries
// (kube-apiserver, etcd, kube-proxy); skipped without them unless CI is set.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/internal/kubeproxy"
	"github.com/sigil-net/sigil/internal/testnet"
)

// svcDatapathLanded says whether branch svc-datapath's kube-proxy-mode
// datapath (egress judged after kube-proxy's DNAT with --service-cidr,
// replies kept on the host path for its reverse NAT) is in. It is, merged
// into this branch; set it false (or leave SIGIL_E2E_SVC_DATAPATH unset
// after doing so) to run this file against a tree without it: the cases
// that need it are then skipped with "needs svc-datapath: ...".
const svcDatapathLanded = true

// svcServiceCIDR is the API server's --service-cluster-ip-range here.
const svcServiceCIDR = "198.19.232.0/24"

// needsSvcDatapath skips the rest of a kube-proxy-mode case that needs
// branch svc-datapath, unless that work is declared landed.
func needsSvcDatapath(t *testing.T, reason string) {
	t.Helper()
	if svcDatapathLanded || os.Getenv("SIGIL_E2E_SVC_DATAPATH") == "1" {
		return
	}
	t.Skip("needs svc-datapath: " + reason)
}

// Why kube-proxy-mode cases are skipped until svc-datapath lands.
const (
	whySameNode = "a same-node backend's reply is redirected into the client (bpf_redirect_peer) past the node's " +
		"conntrack, so kube-proxy's DNAT is not reversed and the client resets the connection"
	whyTunnel = "a reply arriving through the tunnel is redirected into the client past the node's conntrack, " +
		"so kube-proxy's DNAT is not reversed"
	whyEgress = "egress policy is judged in from_container before kube-proxy's DNAT, on the ClusterIP (world), " +
		"so a rule allowing the backend pod does not match"
)

type svcMode struct {
	name      string
	kubeProxy bool
	routing   datapath.RoutingMode
	base      int // address block: pod CIDRs 198.18.base+1/24, base+2/24; underlay 198.19.base.0/24
}

// TestServices runs the services suite with Sigil's socket load-balancer and
// with kube-proxy (iptables mode): a ClusterIP reachable over TCP and UDP
// from pods on the backend's node and on the other node; connections spread
// over three backends; a backend removed from the EndpointSlice while
// traffic runs gets no new connections while an established one to it keeps
// working; a Service without ready endpoints refuses at once; an egress
// NetworkPolicy allowing only pod b lets the client reach b through b's
// ClusterIP and not c through c's.
func TestServices(t *testing.T) {
	requireE2E(t)
	env := k8stest.StartEnvWith(t, k8stest.Options{ServiceCIDR: svcServiceCIDR})
	for _, m := range []svcMode{
		{name: "sigil-lb", routing: datapath.RoutingTunnel, base: 80},
		{name: "sigil-lb", routing: datapath.RoutingNative, base: 83},
		{name: "kube-proxy", kubeProxy: true, routing: datapath.RoutingTunnel, base: 86},
		{name: "kube-proxy", kubeProxy: true, routing: datapath.RoutingNative, base: 89},
	} {
		t.Run(m.name+"/"+string(m.routing), func(t *testing.T) { testServices(t, env, m) })
	}
}

// kubeProxyBinary returns the cached kube-proxy, skipping the test without
// it unless CI is set.
func kubeProxyBinary(t *testing.T, env *k8stest.Env) string {
	t.Helper()
	dir, err := k8stest.AssetsDir(env.Root)
	if err == nil {
		var bin string
		if bin, err = kubeproxy.Find(dir); err == nil {
			return bin
		}
	}
	if os.Getenv("CI") == "" {
		t.Skipf("%v (CI is unset, so skipping)", err)
	}
	t.Fatal(err)
	return ""
}

// startKubeProxies creates the Node objects kube-proxy needs and runs
// kube-proxy in each node namespace; cleanup stops it by PID and flushes
// its chains.
func startKubeProxies(t *testing.T, env *k8stest.Env, bin, kubeconfig string, nodes [2]*node, names, cidrs, underlay [2]string) {
	t.Helper()
	for i, n := range nodes {
		mustCreateObj(t, env.Client, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: names[i]},
			Spec:   corev1.NodeSpec{PodCIDR: cidrs[i], PodCIDRs: []string{cidrs[i]}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: underlay[i]}}}})
		log, err := os.CreateTemp(t.TempDir(), "kube-proxy-*.log")
		if err != nil {
			t.Fatal(err)
		}
		kp, err := kubeproxy.Start(kubeproxy.Config{Binary: bin, NetNS: n.ns.Path, Kubeconfig: kubeconfig,
			NodeName: names[i], ClusterCIDR: "198.18.0.0/16", Log: log, Verbosity: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := kp.Stop(); err != nil {
				t.Errorf("stopping kube-proxy on %s: %v", names[i], err)
			}
			if t.Failed() {
				data, _ := os.ReadFile(log.Name())
				t.Logf("kube-proxy on %s (last 3000 bytes):\n%s", names[i], tail(string(data), 3000))
			}
		})
		if err := kp.WaitHealthy(context.Background(), 60*time.Second); err != nil {
			data, _ := os.ReadFile(log.Name())
			t.Fatalf("kube-proxy on %s: %v\n%s", names[i], err, tail(string(data), 3000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// svcPorts: every test Service has TCP 80 -> the pods' 8080 and UDP 53 ->
// 5353, with named ports as the EndpointSlice controller writes them.
var svcPorts = []corev1.ServicePort{
	{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)},
	{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353)},
}

// svcSlice is the EndpointSlice the EndpointSlice controller would write
// for Service name with these endpoints (pod name -> ready).
func svcSlice(ns, name string, eps []discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-e2e",
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "sigil-e2e"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To("dns"), Port: ptr.To[int32](5353), Protocol: ptr.To(corev1.ProtocolUDP)},
		},
		Endpoints: eps,
	}
}

func svcEndpoint(p *pod, name, nodeName string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{p.ip.String()}, NodeName: ptr.To(nodeName),
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: name},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready), Terminating: ptr.To(false)}}
}

func testServices(t *testing.T, env *k8stest.Env, m svcMode) {
	start := time.Now()
	ctx := context.Background()
	admin := env.Client
	var kubeProxy string
	if m.kubeProxy {
		kubeProxy = kubeProxyBinary(t, env)
	}
	ns := k8stest.Namespace(t, admin)
	kubeconfig := writeKubeconfig(t, env)

	names := [2]string{fmt.Sprintf("svc-%s-%s-1", m.name, m.routing), fmt.Sprintf("svc-%s-%s-2", m.name, m.routing)}
	cidrs := [2]string{fmt.Sprintf("198.18.%d.0/24", m.base+1), fmt.Sprintf("198.18.%d.0/24", m.base+2)}
	underlay := [2]string{fmt.Sprintf("198.19.%d.1", m.base), fmt.Sprintf("198.19.%d.2", m.base)}
	flags := []string{fmt.Sprintf("--kube-proxy-replacement=%t", !m.kubeProxy)}
	if m.kubeProxy {
		// Pods' egress to ClusterIPs is judged after kube-proxy's DNAT.
		flags = append(flags, "--service-cidr="+svcServiceCIDR)
	}
	nodes := startTwoNodes(t, env, kubeconfig, twoNodes{names: names, cidrs: cidrs, underlay: underlay, mode: m.routing,
		flags: flags})
	if m.kubeProxy {
		startKubeProxies(t, env, kubeProxy, kubeconfig, nodes, names, cidrs, underlay)
	}

	// Clients a (node 1) and z (node 2); backends b (node 1), c and d
	// (node 2), each answering with its name on TCP 8080 and UDP 5353.
	type member struct {
		name string
		node int
		p    *pod
	}
	pods := map[string]*member{}
	for _, pm := range []*member{{name: "a", node: 0}, {name: "z", node: 1}, {name: "b", node: 0}, {name: "c", node: 1}, {name: "d", node: 1}} {
		var id uint32
		p, ep := addK8sPod(t, admin, ns, nodes[pm.node], names[pm.node], pm.name, map[string]string{"app": pm.name})
		pm.p, id = p, ep.Identity
		publishEndpoint(t, admin, ns, pm.name, names[pm.node], p, id)
		pods[pm.name] = pm
	}
	for _, name := range []string{"b", "c", "d"} {
		p := pods[name].p
		srv, err := p.ns.StartNameServer(name, p.ip.String()+":8080", p.ip.String()+":5353")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
	}
	ep := func(name string, ready bool) discoveryv1.Endpoint {
		return svcEndpoint(pods[name].p, name, names[pods[name].node], ready)
	}

	// Services: web (b, c, d), svc-b (b), svc-c (c), and empty (d, not
	// ready). Selectors as a user would write them; the slices are the
	// test's (see the top of the file).
	clusterIP := map[string]string{}
	epSlices := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range []struct {
		name     string
		selector string
		eps      []discoveryv1.Endpoint
	}{
		{"web", "", []discoveryv1.Endpoint{ep("b", true), ep("c", true), ep("d", true)}},
		{"svc-b", "b", []discoveryv1.Endpoint{ep("b", true)}},
		{"svc-c", "c", []discoveryv1.Endpoint{ep("c", true)}},
		{"empty", "d", []discoveryv1.Endpoint{ep("d", false)}},
	} {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.name},
			Spec: corev1.ServiceSpec{Ports: svcPorts}}
		if s.selector != "" {
			svc.Spec.Selector = map[string]string{"app": s.selector}
		}
		mustCreateObj(t, admin, svc)
		clusterIP[s.name] = svc.Spec.ClusterIP
		epSlices[s.name] = svcSlice(ns, s.name, s.eps)
		mustCreateObj(t, admin, epSlices[s.name])
	}
	t.Logf("%s: ClusterIPs %v", m.name, clusterIP)
	tcpAddr := func(svc string) string { return net.JoinHostPort(clusterIP[svc], "80") }
	udpAddr := func(svc string) string { return net.JoinHostPort(clusterIP[svc], "53") }

	// The datapath has the services: both agents' load-balancers (Sigil),
	// or each node's kube-proxy rules.
	eventuallyE2E(t, 30*time.Second, "services in the datapath", func() error {
		for i, n := range nodes {
			var have []string
			if m.kubeProxy {
				fs, err := kubeproxy.Frontends(n.ns.Path)
				if err != nil {
					return err
				}
				have = fs
			} else {
				svcs, err := n.client().Services(ctx)
				if err != nil {
					return err
				}
				for _, s := range svcs {
					if len(s.Backends) > 0 {
						have = append(have, fmt.Sprintf("%s:%d/%s", s.Frontend.Address, s.Frontend.Port, strings.ToLower(s.Frontend.Protocol)))
					}
				}
			}
			for _, svc := range []string{"web", "svc-b", "svc-c"} {
				for _, f := range []string{tcpAddr(svc) + "/tcp", udpAddr(svc) + "/udp"} {
					if !slices.Contains(have, f) {
						return fmt.Errorf("node %s lacks %s (%s); has %v", names[i], f, svc, have)
					}
				}
			}
		}
		return nil
	})
	t.Logf("%s: services in the datapath after %s", m.name, time.Since(start).Round(time.Millisecond))

	// ClusterIP from the backend's node and from the other node, TCP and UDP.
	t.Run("reach", func(t *testing.T) {
		for _, client := range []string{"a", "z"} {
			for _, backend := range []string{"b", "c"} {
				for _, proto := range []string{"tcp", "udp"} {
					same := pods[client].node == pods[backend].node
					where := "other node"
					if same {
						where = "same node"
					}
					t.Run(fmt.Sprintf("%s/%s->svc-%s/%s", proto, client, backend, strings.ReplaceAll(where, " ", "-")), func(t *testing.T) {
						if m.kubeProxy && same {
							needsSvcDatapath(t, whySameNode)
						}
						if m.kubeProxy && !same && m.routing == datapath.RoutingTunnel {
							needsSvcDatapath(t, whyTunnel)
						}
						addr := tcpAddr("svc-" + backend)
						if proto == "udp" {
							addr = udpAddr("svc-" + backend)
						}
						var got string
						eventuallyE2E(t, 10*time.Second, fmt.Sprintf("%s %s -> %s (%s)", proto, client, addr, where), func() (err error) {
							got, err = pods[client].p.ns.Who(proto, addr, time.Second)
							if err == nil && got != backend {
								err = fmt.Errorf("answered by %q, want %q", got, backend)
							}
							return err
						})
						for i := 0; i < 5; i++ {
							if got, err := pods[client].p.ns.Who(proto, addr, 2*time.Second); err != nil || got != backend {
								t.Fatalf("%s %s -> %s, try %d: %q %v", proto, client, addr, i, got, err)
							}
						}
					})
				}
			}
		}
	})

	// Spread: new connections from a to web reach all three backends.
	t.Run("spread", func(t *testing.T) {
		if m.kubeProxy {
			needsSvcDatapath(t, whySameNode+" (b is on a's node)")
		}
		const N = 60
		for _, proto := range []string{"tcp", "udp"} {
			addr := tcpAddr("web")
			if proto == "udp" {
				addr = udpAddr("web")
			}
			seen := map[string]int{}
			for i := 0; i < N; i++ {
				got, err := pods["a"].p.ns.Who(proto, addr, 2*time.Second)
				if err != nil {
					t.Fatalf("%s a -> web %s, connection %d: %v", proto, addr, i, err)
				}
				seen[got]++
			}
			t.Logf("%s: %d connections to web: %v", proto, N, seen)
			if len(seen) != 3 || seen["b"] == 0 || seen["c"] == 0 || seen["d"] == 0 {
				t.Errorf("%s: %d connections reached %v, want all of b, c and d", proto, N, seen)
			}
		}
	})

	// A backend removed from the EndpointSlice while connections are being
	// made: no new connection reaches it once the datapath has the change,
	// none fails meanwhile, and an established connection to it keeps
	// working.
	t.Run("remove-backend", func(t *testing.T) {
		if m.kubeProxy {
			needsSvcDatapath(t, whySameNode+" (b is on a's node)")
		}
		a := pods["a"].p
		var est net.Conn
		for i := 0; i < 100 && est == nil; i++ {
			c, err := a.ns.DialTCP(tcpAddr("web"), 2*time.Second)
			if err != nil {
				t.Fatalf("a -> web: %v", err)
			}
			if got, err := testnet.Ask(c, 2*time.Second); err != nil {
				c.Close()
				t.Fatalf("a -> web: %v", err)
			} else if got == "d" {
				est = c
			} else {
				c.Close()
			}
		}
		if est == nil {
			t.Fatal("no connection to d in 100 tries")
		}
		defer est.Close()

		// Traffic: new connections in a loop, before, during and after.
		type result struct {
			at   time.Time
			name string
			err  error
		}
		var (
			mu      sync.Mutex
			results []result
			stop    = make(chan struct{})
			wg      sync.WaitGroup
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := a.ns.Who("tcp", tcpAddr("web"), 2*time.Second)
				mu.Lock()
				results = append(results, result{time.Now(), got, err})
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		}()
		stopTraffic := func() {
			select {
			case <-stop:
			default:
				close(stop)
			}
			wg.Wait()
		}
		defer stopTraffic()
		time.Sleep(200 * time.Millisecond)

		sl := epSlices["web"]
		sl.Endpoints = []discoveryv1.Endpoint{ep("b", true), ep("c", true)}
		removed := time.Now()
		if err := admin.Update(ctx, sl); err != nil {
			t.Fatal(err)
		}
		// Converged: the last 30 new connections, all made after the
		// update, did not reach d (those made before the agents, or
		// kube-proxy, had the change may have).
		eventuallyE2E(t, 20*time.Second, "new connections stop reaching d", func() error {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for i := len(results) - 1; i >= 0 && n < 30; i-- {
				if !results[i].at.After(removed) {
					return fmt.Errorf("only %d connections since the update", n)
				}
				if results[i].err == nil && results[i].name == "d" {
					return fmt.Errorf("a new connection reached d %s after the update", results[i].at.Sub(removed).Round(time.Millisecond))
				}
				n++
			}
			if n < 30 {
				return fmt.Errorf("only %d connections since the update", n)
			}
			return nil
		})
		stopTraffic()
		var failed []string
		lastD := time.Duration(0)
		for _, r := range results {
			if r.err != nil {
				failed = append(failed, r.err.Error())
			}
			if r.name == "d" && r.at.After(removed) {
				lastD = r.at.Sub(removed)
			}
		}
		if lastD > 0 {
			t.Logf("%d new connections around the change; the last to reach d was %s after the update", len(results), lastD.Round(time.Millisecond))
		} else {
			t.Logf("%d new connections around the change; none made after the update reached d", len(results))
		}
		if len(failed) > 0 {
			t.Errorf("%d of %d new connections failed while d was removed: %v", len(failed), len(results), failed[:min(3, len(failed))])
		}
		// After: none of 30 fresh connections reaches d; the established
		// connection to d still answers.
		for i := 0; i < 30; i++ {
			got, err := a.ns.Who("tcp", tcpAddr("web"), 2*time.Second)
			if err != nil || got == "d" {
				t.Fatalf("a -> web after d was removed, connection %d: %q %v", i, got, err)
			}
		}
		if got, err := testnet.Ask(est, 2*time.Second); err != nil || got != "d" {
			t.Errorf("established connection to d after its removal: %q %v", got, err)
		}
	})

	// No ready endpoint: refused at once (a fast error, not a hang), from
	// both nodes.
	t.Run("no-endpoints", func(t *testing.T) {
		if m.kubeProxy {
			// kube-proxy rejects it in the filter table (FORWARD). The
			// node namespaces have no default route, so routing may
			// answer first (network unreachable); either is fast.
			for i, n := range nodes {
				out, err := n.ns.Run("iptables", "-w", "-S", "KUBE-SERVICES")
				if err != nil || !strings.Contains(out, "-d "+clusterIP["empty"]+"/32") || !strings.Contains(out, "-j REJECT") {
					t.Errorf("node %s: kube-proxy has no REJECT rule for empty's %s: %v\n%s", names[i], clusterIP["empty"], err, out)
				}
			}
		}
		for _, client := range []string{"a", "z"} {
			began := time.Now()
			_, err := pods[client].p.ns.Who("tcp", tcpAddr("empty"), 5*time.Second)
			took := time.Since(began)
			var ne net.Error
			switch {
			case err == nil:
				t.Errorf("%s -> empty %s connected; it has no ready endpoint", client, tcpAddr("empty"))
			case errors.As(err, &ne) && ne.Timeout(), took > 2*time.Second:
				t.Errorf("%s -> empty %s: %v after %s; want a fast rejection", client, tcpAddr("empty"), err, took)
			default:
				t.Logf("%s -> empty: rejected in %s: %v", client, took.Round(time.Microsecond), err)
			}
		}
	})

	// Egress policy on a: only to pod b (its ports). Through b's ClusterIP
	// a reaches b; through c's it does not reach c.
	t.Run("egress-policy", func(t *testing.T) {
		tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
		p8080, p5353 := intstr.FromInt32(8080), intstr.FromInt32(5353)
		mustCreateObj(t, admin, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "a-to-b-only"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p8080}, {Protocol: &udp, Port: &p5353}},
				}},
			}})
		a := pods["a"].p
		cAddr := pods["c"].p.ip.String() + ":8080"
		eventuallyE2E(t, 20*time.Second, "policy in force: a -> c's pod IP denied", func() error {
			if got, err := a.ns.Who("tcp", cAddr, 300*time.Millisecond); err == nil {
				return fmt.Errorf("a -> %s still answered by %q", cAddr, got)
			}
			return nil
		})
		for _, proto := range []string{"tcp", "udp"} {
			addr := tcpAddr("svc-c")
			if proto == "udp" {
				addr = udpAddr("svc-c")
			}
			if got, err := a.ns.Who(proto, addr, 500*time.Millisecond); err == nil {
				t.Errorf("%s a -> svc-c %s answered by %q; the policy allows b only", proto, addr, got)
			}
		}
		if m.kubeProxy {
			needsSvcDatapath(t, whyEgress+" (the denied half passed)")
		}
		for _, proto := range []string{"tcp", "udp"} {
			addr := tcpAddr("svc-b")
			if proto == "udp" {
				addr = udpAddr("svc-b")
			}
			if got, err := a.ns.Who(proto, addr, 2*time.Second); err != nil || got != "b" {
				t.Errorf("%s a -> svc-b %s (allowed to b): %q %v", proto, addr, got, err)
			}
		}
	})

	t.Logf("%s: %s", m.name, time.Since(start).Round(time.Millisecond))
}

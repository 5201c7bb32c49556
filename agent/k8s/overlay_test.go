package k8s_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

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

// ovNode is one node of the two-node overlay test: its netns, and an
// in-process agent (datapath, overlay, prefilter, enforcer, manager,
// controller) wired as sigil-agent wires them.
type ovNode struct {
	name     string
	tn       *testnet.Node
	underlay netip.Addr
	podCIDR  netip.Prefix
	pinDir   string
	stateDir string

	dp     *datapath.Datapath
	ov     *agent.Overlay
	pf     *agent.NodePrefilter
	m      *agent.Manager
	ctrl   *k8s.Controller
	cancel context.CancelFunc
}

func (n *ovNode) start(t *testing.T, cfg *rest.Config, mode datapath.RoutingMode, prefilter []string) {
	t.Helper()
	log := logger()
	d, err := datapath.Load(datapath.Config{PinDir: n.pinDir, NetNS: n.tn.NS.Path, EventsBytes: 1 << 16, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetRuntimeConfig(datapath.RuntimeConfig{Enforcement: datapath.EnforceDefault,
		Flags: datapath.ConfigAllowHostIngress}); err != nil {
		t.Fatal(err)
	}
	ov, err := agent.NewOverlay(d, agent.OverlayConfig{Mode: mode, MTU: 1500, Masquerade: true,
		ClusterPoolCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var pf *agent.NodePrefilter
	if len(prefilter) > 0 {
		if pf, err = agent.NewPrefilter(agent.PrefilterConfig{PinDir: n.pinDir, NetNS: n.tn.NS.Path, Devices: prefilter,
			Static: []netip.Prefix{netip.MustParsePrefix("198.19.55.0/24")}, Logger: log}); err != nil {
			t.Fatal(err)
		}
	}
	enf, err := agent.NewEnforcer(agent.EnforcerConfig{Datapath: agent.NewBPFDatapath(d), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := k8s.New(k8s.Config{RestConfig: cfg, NodeName: n.name, Enforcer: enf, Overlay: ov, Prefilter: pf,
		AllocateIdentities: true,
		ProbeInterval:      500 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m, err := agent.NewManager(agent.Config{StateDir: n.stateDir, PodCIDR: n.podCIDR, Datapath: enf.Datapath(),
		Labels: ctrl.LabelSource(), Identities: ctrl.IdentityAllocator(), PolicyFlags: enf.PolicyFlags,
		LinkExists: func(name string, idx int) bool {
			got, err := n.tn.NS.InterfaceIndex(name)
			return err == nil && got == idx
		}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	enf.Attach(m)
	ctx, cancel := context.WithCancel(context.Background())
	ctrl.Start(ctx)
	n.dp, n.ov, n.pf, n.m, n.ctrl, n.cancel = d, ov, pf, m, ctrl, cancel
}

func (n *ovNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.ctrl.Wait()
	n.m.Close()
	if n.pf != nil {
		n.pf.Close()
	}
	n.dp.Close()
	n.cancel = nil
}

// addPod wires a pod on the node and creates its endpoint through the
// manager (as sigil-cni's ADD does), its Pod object first.
func (n *ovNode) addPod(t *testing.T, admin client.Client, ip netip.Addr, ns, name string, labels map[string]string) *testnet.Pod {
	t.Helper()
	mustCreate(t, admin, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}})
	p, err := n.tn.AddPod(ip, testnet.Unique("sgp"))
	if err != nil {
		t.Fatal(err)
	}
	hostMAC, err := n.tn.NS.HardwareAddr(p.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := n.m.Create(apitypes.EndpointRequest{ContainerID: "cid-" + name, IfName: "eth0", NetNS: p.NS.Path,
		HostIfName: p.HostIf, HostIfIndex: p.IfIndex, HostMAC: hostMAC.String(), MAC: p.MAC.String(),
		PodNamespace: ns, PodName: name})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Addresses[0].IP != ip {
		t.Fatalf("IPAM gave %s %s, the test wired %s", name, ep.Addresses[0].IP, ip)
	}
	return p
}

// TestAgentOverlayTwoNodes runs two in-process agents, each in its own node
// namespace with its own pin and state dirs, on an underlay veth pair, from
// one real API server: the tunnel map, routes and masquerade chain are
// programmed from the SigilNode objects (and follow their changes), pods
// reach each other across nodes, a NetworkPolicy is enforced across nodes,
// and (tunnel mode) the XDP prefilter on node 1's underlay follows a
// clusterwide deny policy.
func TestAgentOverlayTwoNodes(t *testing.T) {
	testnet.RequireRoot(t)
	dt.RequireBPF(t)
	for _, mode := range []datapath.RoutingMode{datapath.RoutingTunnel, datapath.RoutingNative} {
		t.Run(string(mode), func(t *testing.T) { testOverlayTwoNodes(t, mode) })
	}
}

func testOverlayTwoNodes(t *testing.T, mode datapath.RoutingMode) {
	cfg, admin := k8stest.Start(t)
	ctx := context.Background()
	ns := k8stest.Namespace(t, admin)
	fl := identity.NewFilter()

	// Addresses of their own per mode: the API server is shared with other
	// tests, whose SigilNodes and SigilEndpoints stay (there is no
	// namespace controller to remove them).
	base := 20
	if mode == datapath.RoutingNative {
		base = 30
	}
	var nodes []*ovNode
	for i := 1; i <= 2; i++ {
		tn, err := testnet.CreateNode(netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", base+i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tn.Delete() })
		nodes = append(nodes, &ovNode{name: fmt.Sprintf("ovl-%s-%d", mode, i), tn: tn,
			underlay: netip.MustParseAddr(fmt.Sprintf("198.19.%d.%d", base, i)),
			podCIDR:  netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", base+i)),
			pinDir:   dt.PinDir(t), stateDir: t.TempDir()})
	}
	n1, n2 := nodes[0], nodes[1]
	testnet.Veth(t, n1.tn.NS, "ul0", n2.tn.NS, "ul0")
	n1.tn.NS.MustRun(t, "ip", "addr", "add", n1.underlay.String()+"/24", "dev", "ul0")
	n2.tn.NS.MustRun(t, "ip", "addr", "add", n2.underlay.String()+"/24", "dev", "ul0")

	// The SigilNodes, as the operator's node IPAM would have them.
	for _, n := range nodes {
		sn := &sigilv1.SigilNode{ObjectMeta: metav1.ObjectMeta{Name: n.name},
			Spec: sigilv1.SigilNodeSpec{PodCIDRs: []string{n.podCIDR.String()}, InternalIP: n.underlay.String(),
				TunnelEndpoint: n.underlay.String()}}
		mustCreate(t, admin, sn)
		t.Cleanup(func() { admin.Delete(context.Background(), sn) })
	}
	var prefilterDevs []string
	if mode == datapath.RoutingTunnel {
		prefilterDevs = []string{"ul0"}
	}
	n1.start(t, cfg, mode, prefilterDevs)
	t.Cleanup(n1.stop)
	n2.start(t, cfg, mode, nil)
	t.Cleanup(n2.stop)

	// Programmed from the SigilNodes.
	for _, n := range nodes {
		other := nodes[0]
		if n == n1 {
			other = n2
		}
		eventually(t, n.name+": tunnel map from the SigilNodes", func() error {
			got, err := n.dp.Tunnel.List()
			if err != nil {
				return err
			}
			want := map[netip.Prefix]netip.Addr{}
			if mode == datapath.RoutingTunnel {
				want[other.podCIDR] = other.underlay
				want[netip.PrefixFrom(other.underlay, 32)] = other.underlay
			}
			return sameSubset(got, want, nodes, n)
		})
		eventually(t, n.name+": routes from the SigilNodes", func() error {
			out, err := n.tn.NS.Run("ip", "-4", "route", "show", "proto", "0xa7")
			if err != nil {
				return err
			}
			want := other.podCIDR.String() + " dev " + datapath.DefaultTunnelDevice
			if mode == datapath.RoutingNative {
				want = other.podCIDR.String() + " via " + other.underlay.String() + " dev ul0"
			}
			if !strings.Contains(out, want) {
				return fmt.Errorf("routes %q, want a line %q", out, want)
			}
			if strings.Contains(out, n.podCIDR.String()) {
				return fmt.Errorf("routes %q route the own pod CIDR", out)
			}
			return nil
		})
		eventually(t, n.name+": masquerade from the SigilNodes", func() error {
			out, err := n.tn.NS.Run("iptables", "-t", "nat", "-S")
			if err != nil {
				return err
			}
			for _, want := range []string{
				"-A POSTROUTING -s " + n.podCIDR.String() + ` -m comment --comment "sigil masquerade" -j SIGIL-MASQ`,
				"-A SIGIL-MASQ -d 198.18.0.0/16 -j RETURN",
				"-A SIGIL-MASQ -d " + other.underlay.String() + "/32 -j RETURN",
				"-A SIGIL-MASQ -d " + n.underlay.String() + "/32 -j RETURN",
				"-A SIGIL-MASQ -d " + other.podCIDR.String() + " -j RETURN",
				"-A SIGIL-MASQ -j MASQUERADE",
			} {
				if !strings.Contains(out, want+"\n") {
					return fmt.Errorf("nat table lacks %q:\n%s", want, out)
				}
			}
			return nil
		})
		rc, err := n.dp.Config.Get()
		if err != nil {
			t.Fatal(err)
		}
		if tunnel := rc.Flags&datapath.ConfigTunnel != 0; tunnel != (mode == datapath.RoutingTunnel) ||
			rc.Flags&datapath.ConfigAllowHostIngress == 0 {
			t.Errorf("%s: runtime config %+v: want tunnel flag %v and the agent's flags kept", n.name, rc, mode == datapath.RoutingTunnel)
		}
		// Native mode: from_netdev on the underlay, then the fast path on.
		devs, err := n.dp.NativeIngressDevices()
		native := mode == datapath.RoutingNative
		if fast := rc.Flags&datapath.ConfigNativeFast != 0; err != nil || fast != native ||
			native && !slices.Contains(devs, "ul0") || !native && len(devs) != 0 {
			t.Errorf("%s: fast path flag %v, from_netdev on %v (%v); want both in native mode only, on ul0", n.name, fast, devs, err)
		}
		if mode == datapath.RoutingTunnel {
			idx, err := n.tn.NS.InterfaceIndex(datapath.DefaultTunnelDevice)
			if err != nil || uint32(idx) != rc.TunnelIfIndex {
				t.Errorf("%s: tunnel ifindex %d in the config, device has %d (%v)", n.name, rc.TunnelIfIndex, idx, err)
			}
			out := n.tn.NS.MustRun(t, "ip", "-d", "link", "show", datapath.DefaultTunnelDevice)
			if !strings.Contains(out, "mtu 1450") || !strings.Contains(out, "external") {
				t.Errorf("%s: tunnel device: %s", n.name, out)
			}
		}
	}

	// Pods on both nodes, and their SigilEndpoints (as the operator
	// publishes them) once their identities exist.
	ipA, ipB := n1.podCIDR.Addr().Next().Next(), n2.podCIDR.Addr().Next().Next()
	podA := n1.addPod(t, admin, ipA, ns, "a", map[string]string{"app": "a"})
	podB := n2.addPod(t, admin, ipB, ns, "b", map[string]string{"app": "b"})
	for _, p := range []struct {
		name, app, node string
		ip              netip.Addr
	}{{"a", "a", n1.name, ipA}, {"b", "b", n2.name, ipB}} {
		lbls := fl.SecurityLabels(ns, map[string]string{"app": p.app}, nsLabels(t, admin, ns))
		var id datapath.Identity
		eventually(t, "identity of "+p.name, func() (err error) {
			id, err = identityOf(t, admin, lbls)
			return err
		})
		sep := &sigilv1.SigilEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.name},
			Status: sigilv1.SigilEndpointStatus{Identity: int64(id), NodeName: p.node, IPs: []string{p.ip.String()}}}
		mustCreate(t, admin, sep)
		t.Cleanup(func() { admin.Delete(context.Background(), sep) })
	}
	eventually(t, "remote endpoints in the ipcaches", func() error {
		for _, c := range []struct {
			n  *ovNode
			ip netip.Addr
		}{{n1, ipB}, {n2, ipA}} {
			e, ok, err := c.n.dp.IPCache.Lookup(c.ip)
			if err != nil || !ok || e.Identity < datapath.Identity(256) {
				return fmt.Errorf("%s: ipcache %s: %+v %v %v", c.n.name, c.ip, e, ok, err)
			}
		}
		return nil
	})
	podB.NS.Serve(t, ipB.String()+":8080")
	podB.NS.Serve(t, ipB.String()+":9090")
	podA.NS.Serve(t, ipA.String()+":8080")
	addrB := func(port int) string { return fmt.Sprintf("%s:%d", ipB, port) }
	if err := podA.NS.TCP(addrB(8080), 3*time.Second); err != nil {
		t.Fatalf("a (node 1) -> b (node 2) over %s: %v", mode, err)
	}
	if err := podB.NS.TCP(ipA.String()+":8080", 3*time.Second); err != nil {
		t.Fatalf("b (node 2) -> a (node 1) over %s: %v", mode, err)
	}

	// A NetworkPolicy on node 2's pod: TCP 8080 from app=a only.
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(8080)
	mustCreate(t, admin, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b-from-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		}})
	eventually(t, "cross-node policy: a -> b:9090 denied", func() error {
		if err := podA.NS.TCP(addrB(9090), 300*time.Millisecond); err == nil {
			return fmt.Errorf("a -> b:9090 still connects")
		}
		return nil
	})
	if err := podA.NS.TCP(addrB(8080), 3*time.Second); err != nil {
		t.Errorf("a -> b:8080 allowed by the policy: %v", err)
	}
	if err := n1.tn.NS.TCP(addrB(8080), 500*time.Millisecond); err == nil {
		t.Errorf("node 1 (remote-node) -> b:8080 connects; the policy allows only app=a")
	}

	if mode == datapath.RoutingTunnel {
		// Prefilter on node 1's underlay: the static list, then a
		// clusterwide deny of node 2's address drops everything from it
		// (the tunnel included) before the stack; removing it reopens.
		eventually(t, "static prefilter list", func() error {
			return prefilterHas(n1.pf, "198.19.55.0/24", true)
		})
		scnp := &sigilv1.SigilClusterwideNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "ovl-deny-node2"},
			Spec: sigilv1.PolicySpec{IngressDeny: []sigilv1.IngressRule{{From: []sigilv1.Peer{{CIDR: n2.underlay.String() + "/32"}}}}}}
		mustCreate(t, admin, scnp)
		t.Cleanup(func() { admin.Delete(context.Background(), scnp) })
		eventually(t, "prefilter list from the clusterwide policy", func() error {
			return prefilterHas(n1.pf, n2.underlay.String()+"/32", true)
		})
		if err := podA.NS.TCP(addrB(8080), 500*time.Millisecond); err == nil {
			t.Errorf("a -> b:8080 connects while node 1 drops node 2's underlay traffic in XDP")
		}
		if err := admin.Delete(ctx, scnp); err != nil {
			t.Fatal(err)
		}
		eventually(t, "prefilter entry removed with the policy", func() error {
			return prefilterHas(n1.pf, n2.underlay.String()+"/32", false)
		})
		if err := prefilterHas(n1.pf, "198.19.55.0/24", true); err != nil {
			t.Error(err)
		}
		if att, err := datapath.PrefilterAttachments(n1.pinDir); err != nil || att["ul0"] == "" {
			t.Errorf("prefilter attachments %v %v, want ul0", att, err)
		}
		if err := podA.NS.TCP(addrB(8080), 3*time.Second); err != nil {
			t.Errorf("a -> b:8080 after the deny policy is gone: %v", err)
		}
	}

	// SigilNode changes: node 2 gains a pod CIDR; then goes away.
	var sn2 sigilv1.SigilNode
	if err := admin.Get(ctx, client.ObjectKey{Name: n2.name}, &sn2); err != nil {
		t.Fatal(err)
	}
	extra := netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", base+5))
	sn2.Spec.PodCIDRs = append(sn2.Spec.PodCIDRs, extra.String())
	if err := admin.Update(ctx, &sn2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node 1 follows node 2's new pod CIDR", func() error {
		out, err := n1.tn.NS.Run("ip", "-4", "route", "show", "proto", "0xa7")
		if err != nil || !strings.Contains(out, extra.String()) {
			return fmt.Errorf("routes %q %v, want %s", out, err, extra)
		}
		if mode == datapath.RoutingTunnel {
			got, err := n1.dp.Tunnel.List()
			if err != nil || got[extra] != n2.underlay {
				return fmt.Errorf("tunnel map %v %v, want %s -> %s", got, err, extra, n2.underlay)
			}
		}
		return nil
	})
	// An agent restart converges to the same state and leaves traffic up
	// (nothing is removed on shutdown).
	n1.stop()
	if err := podA.NS.TCP(addrB(8080), 3*time.Second); err != nil {
		t.Errorf("a -> b:8080 while node 1's agent is down: %v", err)
	}
	n1.start(t, cfg, mode, prefilterDevs)
	if err := admin.Delete(ctx, &sn2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node 2's SigilNode deleted: its routes and tunnel entries go", func() error {
		out, err := n1.tn.NS.Run("ip", "-4", "route", "show", "proto", "0xa7")
		if err != nil || strings.Contains(out, n2.podCIDR.String()) || strings.Contains(out, extra.String()) {
			return fmt.Errorf("routes %q %v", out, err)
		}
		got, err := n1.dp.Tunnel.List()
		if err != nil {
			return err
		}
		for p, via := range got {
			if via == n2.underlay {
				return fmt.Errorf("tunnel map still has %s -> %s", p, via)
			}
		}
		return nil
	})

	// Uninstall (sigil-agent --cleanup), once the controller has stopped.
	n1.cancel()
	n1.ctrl.Wait()
	if err := agent.CleanupOverlay(n1.dp, ""); err != nil {
		t.Fatal(err)
	}
	if out := n1.tn.NS.MustRun(t, "iptables", "-t", "nat", "-S"); strings.Contains(out, "SIGIL-MASQ") {
		t.Errorf("nat table after cleanup:\n%s", out)
	}
	if _, err := n1.tn.NS.InterfaceIndex(datapath.DefaultTunnelDevice); err == nil {
		t.Errorf("tunnel device still there after cleanup")
	}
}

// sameSubset checks that got holds want and nothing else for the test's
// nodes (other tests' SigilNodes may add entries: the API server is
// shared), and never an entry for the node's own prefixes.
func sameSubset(got, want map[netip.Prefix]netip.Addr, nodes []*ovNode, self *ovNode) error {
	for p, v := range want {
		if got[p] != v {
			return fmt.Errorf("tunnel map %v: want %s -> %s", got, p, v)
		}
	}
	for p, v := range got {
		if p == self.podCIDR || p == netip.PrefixFrom(self.underlay, 32) {
			return fmt.Errorf("tunnel map %v has the own prefix %s", got, p)
		}
		for _, n := range nodes {
			if _, ok := want[p]; !ok && (v == n.underlay || p == n.podCIDR) {
				return fmt.Errorf("tunnel map %v has unexpected %s", got, p)
			}
		}
	}
	return nil
}

func prefilterHas(pf *agent.NodePrefilter, prefix string, want bool) error {
	list, err := pf.List()
	if err != nil {
		return err
	}
	p := netip.MustParsePrefix(prefix)
	has := slices.ContainsFunc(list, func(e datapath.PrefilterEntry) bool { return e.Prefix == p && !e.Except })
	if has != want {
		return fmt.Errorf("prefilter list %+v: has %s = %v, want %v", list, p, has, want)
	}
	return nil
}

package datapath_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// kubeProxyDNAT adds the rules kube-proxy (iptables mode) would, reduced to
// their effect: vip:port/tcp and /udp DNATed to backend:8080 in PREROUTING.
func kubeProxyDNAT(t *testing.T, ns *testnet.NS, vip netip.Addr, port int, backend netip.Addr) {
	t.Helper()
	for _, proto := range []string{"tcp", "udp"} {
		ns.MustRun(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", vip.String()+"/32", "-p", proto,
			"--dport", fmt.Sprint(port), "-j", "DNAT", "--to-destination", backend.String()+":8080")
	}
}

// deferServices turns ConfigServiceDefer on for the service CIDR,
// keeping the rest of the runtime configuration.
func deferServices(t *testing.T, h *dt.Harness, cidr string) {
	t.Helper()
	rc, err := h.Config.Get()
	if err != nil {
		t.Fatal(err)
	}
	rc.Flags |= datapath.ConfigServiceDefer
	rc.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix(cidr)}
	if err := h.SetRuntimeConfig(rc); err != nil {
		t.Fatal(err)
	}
}

// TestKubeProxySameNode: kube-proxy's DNAT (iptables in the node namespace)
// with Sigil deferring egress. The client's egress allows only pod b: it
// reaches b through b's ClusterIP, not c through c's, and the replies (from
// a backend on the same node, whose MACs Sigil knows) come back through the
// stack's reverse NAT, from the ClusterIP.
func TestKubeProxySameNode(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	tn, err := testnet.CreateNode(netip.MustParseAddr("198.18.31.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Delete() })
	h := dt.New(t, datapath.Config{NetNS: tn.NS.Path})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows}))
	must(h.IPCache.Upsert(netip.MustParsePrefix("198.18.31.1/32"), datapath.IPCacheEntry{Identity: datapath.IdentityHost}))
	var pods []*testnet.Pod
	for i := 0; i < 3; i++ {
		p, err := tn.AddPod(netip.MustParseAddr(fmt.Sprintf("198.18.31.%d", 10+i)), fmt.Sprintf("lxc%d", i))
		must(err)
		pods = append(pods, p)
		hostMAC, err := tn.NS.HardwareAddr(p.HostIf)
		must(err)
		must(h.Endpoints.Upsert(p.IP, datapath.EndpointInfo{ID: uint32(i + 1), IfIndex: uint32(p.IfIndex),
			Identity: datapath.Identity(3000 + i), MAC: p.MAC, NodeMAC: hostMAC}))
		must(h.IPCache.Upsert(netip.PrefixFrom(p.IP, 32), datapath.IPCacheEntry{Identity: datapath.Identity(3000 + i), LocalEndpoint: true}))
		must(h.AttachEndpoint(p.HostIf, p.IfIndex))
		if i > 0 {
			p.NS.Serve(t, p.IP.String()+":8080")
		}
	}
	a, b, c := pods[0], pods[1], pods[2]
	vipB, vipC := netip.MustParseAddr("198.18.251.1"), netip.MustParseAddr("198.18.251.2")
	kubeProxyDNAT(t, tn.NS, vipB, 80, b.IP)
	kubeProxyDNAT(t, tn.NS, vipC, 80, c.IP)

	// a's egress: b on TCP and UDP 8080 only.
	_, err = h.Policy.Sync(1, datapath.PolicyMapEntries{
		{Identity: 3001, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
		{Identity: 3001, Direction: datapath.Egress, Protocol: datapath.ProtoUDP, Port: 8080, PortPrefixLen: 16}: {Cookie: 2},
	})
	must(err)
	hostMAC, err := tn.NS.HardwareAddr(a.HostIf)
	must(err)
	must(h.Endpoints.Upsert(a.IP, datapath.EndpointInfo{ID: 1, IfIndex: uint32(a.IfIndex), Identity: 3000,
		Flags: datapath.EndpointEnforceEgress | datapath.EndpointEnforceIngress, MAC: a.MAC, NodeMAC: hostMAC}))

	// Without deferral: the policy sees the ClusterIP (world) and denies
	// even b — the limitation this closes.
	expect(t, "before deferral: a -> vipB", a.NS.TCP(vipB.String()+":80", dropTimeout), false)

	deferServices(t, h, "198.18.251.0/24")
	h.Conntrack.Flush(nil)
	expect(t, "a -> b directly", a.NS.TCP(b.IP.String()+":8080", okTimeout), true)
	expect(t, "a -> vipB:80 (b)", a.NS.TCP(vipB.String()+":80", okTimeout), true)
	expect(t, "a -> vipB:80 udp (b)", a.NS.UDP(vipB.String()+":80", okTimeout), true)
	conn, err := a.NS.DialTCP(vipB.String()+":80", okTimeout)
	must(err)
	if got := conn.RemoteAddr().String(); got != vipB.String()+":80" {
		t.Errorf("connection peer %s, want the ClusterIP", got)
	}
	must(testnet.Echo(conn, okTimeout))
	conn.Close()
	expect(t, "a -> vipC:80 (c, denied)", a.NS.TCP(vipC.String()+":80", dropTimeout), false)
	ev := waitEvent(t, h, func(e datapath.FlowEvent) bool {
		return e.Verdict == datapath.VerdictDropped && e.Dst == c.IP
	})
	if ev.Reason != datapath.DropPolicyDefault || ev.EndpointID != 1 || ev.Direction != datapath.Egress ||
		ev.Src != a.IP || ev.DstPort != 8080 || ev.DstIdentity != 3002 {
		t.Errorf("drop event %+v: want a's egress default deny on c:8080", ev)
	}
	// Pods without egress policy use services as before.
	expect(t, "b -> vipC:80 (b unenforced)", b.NS.TCP(vipC.String()+":80", okTimeout), true)

	// A ClusterIP whose backend is the node itself (host network): the
	// packet is delivered locally, past every tc hook; local_ingress on the
	// cgroup root judges it. a's egress does not allow the host.
	vipHost := netip.MustParseAddr("198.18.251.3")
	tn.NS.Serve(t, "198.18.31.1:8080")
	kubeProxyDNAT(t, tn.NS, vipHost, 80, netip.MustParseAddr("198.18.31.1"))
	must(h.AttachLocalIngress(datapath.DefaultCgroup2))
	t.Cleanup(func() { h.DetachLocalIngress() })
	expect(t, "a -> vipHost:80 (the node, denied)", a.NS.TCP(vipHost.String()+":80", dropTimeout), false)
	ev = waitEvent(t, h, func(e datapath.FlowEvent) bool {
		return e.Verdict == datapath.VerdictDropped && e.Dst.String() == "198.18.31.1"
	})
	if ev.Reason != datapath.DropPolicyDefault || ev.EndpointID != 1 || ev.DstIdentity != datapath.IdentityHost {
		t.Errorf("drop event %+v: want a's egress default deny on the host", ev)
	}
	expect(t, "b -> vipHost:80 (b unenforced)", b.NS.TCP(vipHost.String()+":80", okTimeout), true)
	_, err = h.Policy.Sync(1, datapath.PolicyMapEntries{
		{Identity: 3001, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}:                  {Cookie: 1},
		{Identity: datapath.IdentityHost, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 3},
	})
	must(err)
	expect(t, "a -> vipHost:80 once the host is allowed", a.NS.TCP(vipHost.String()+":80", okTimeout), true)
}

// TestTCServiceTranslation: with the socket programs not attached, the tc
// path load-balances: a client reaches the service's virtual IP, its
// connections spread over three backends, replies come from the virtual IP
// (a TCP handshake would fail otherwise), with and without known MACs
// (same-node redirect or the host stack), and policy judges the backend.
func TestTCServiceTranslation(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	tn, err := testnet.CreateNode(netip.MustParseAddr("198.18.32.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Delete() })
	h := dt.New(t, datapath.Config{NetNS: tn.NS.Path})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | datapath.ConfigLBTC | datapath.ConfigTraceNewFlows}))
	var pods []*testnet.Pod
	var macs []datapath.EndpointInfo
	for i := 0; i < 4; i++ {
		p, err := tn.AddPod(netip.MustParseAddr(fmt.Sprintf("198.18.32.%d", 10+i)), fmt.Sprintf("lxc%d", i))
		must(err)
		pods = append(pods, p)
		hostMAC, err := tn.NS.HardwareAddr(p.HostIf)
		must(err)
		info := datapath.EndpointInfo{ID: uint32(i + 1), IfIndex: uint32(p.IfIndex), Identity: datapath.Identity(4000 + i),
			MAC: p.MAC, NodeMAC: hostMAC}
		macs = append(macs, info)
		must(h.Endpoints.Upsert(p.IP, info))
		must(h.IPCache.Upsert(netip.PrefixFrom(p.IP, 32), datapath.IPCacheEntry{Identity: info.Identity, LocalEndpoint: true}))
		must(h.AttachEndpoint(p.HostIf, p.IfIndex))
		if i > 0 {
			whoami(t, p.NS, p.IP, 8080)
		}
	}
	client, b1, b2, b3 := pods[0], pods[1], pods[2], pods[3]
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: h.PinDir()})
	must(err)
	t.Cleanup(func() { lb.Close() }) // never attached: only tc translates
	be := func(ps ...*testnet.Pod) []datapath.Backend {
		var out []datapath.Backend
		for _, p := range ps {
			out = append(out, datapath.Backend{Address: p.IP, Port: 8080})
		}
		return out
	}
	vip := netip.MustParseAddr("198.18.252.1")
	must(lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: vip, Port: 80, Proto: datapath.ProtoTCP}, Backends: be(b1, b2, b3)}))
	must(lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: vip, Port: 53, Proto: datapath.ProtoUDP}, Backends: be(b1)}))
	vipOnly2 := netip.MustParseAddr("198.18.252.2")
	must(lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: vipOnly2, Port: 80, Proto: datapath.ProtoTCP}, Backends: be(b2)}))
	empty := netip.MustParseAddr("198.18.252.3")
	must(lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: empty, Port: 80, Proto: datapath.ProtoTCP}}))

	spread := func(what string) {
		t.Helper()
		seen := map[string]int{}
		for i := 0; i < 45; i++ {
			who, peer, c, err := reach(client.NS, vip.String()+":80")
			if err != nil {
				t.Fatalf("%s: connection %d to the VIP: %v", what, i, err)
			}
			c.Close()
			if peer != vip.String()+":80" {
				t.Errorf("%s: peer %s, want the VIP", what, peer)
			}
			seen[who]++
		}
		if len(seen) != 3 {
			t.Errorf("%s: 45 connections spread %v, want all three backends", what, seen)
		}
	}
	// Same-node redirect (MACs known): replies reverse-NATed in the
	// backend's from_container.
	spread("redirected")
	// Through the host stack (MACs unknown): replies reverse-NATed in the
	// client's to_container.
	for i, p := range pods {
		info := macs[i]
		info.MAC, info.NodeMAC = nil, nil
		must(h.Endpoints.Upsert(p.IP, info))
	}
	spread("via the stack")
	// UDP: the reply comes from the VIP (a connected socket accepts nothing
	// else).
	must(client.NS.Do(func() error {
		c, err := net.Dial("udp4", vip.String()+":53")
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(okTimeout))
		if _, err := c.Write([]byte("?")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("udp reply from the VIP: %w", err)
		}
		if string(buf[:n]) != b1.IP.String() {
			return fmt.Errorf("udp answer %q, want b1's", buf[:n])
		}
		return nil
	}))

	// Policy judges the backend: the client may reach b1 only.
	_, err = h.Policy.Sync(1, datapath.PolicyMapEntries{
		{Identity: 4001, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
	})
	must(err)
	info := macs[0]
	info.Flags = datapath.EndpointEnforceEgress
	must(h.Endpoints.Upsert(client.IP, info))
	if _, _, _, err := reach(client.NS, vipOnly2.String()+":80"); err == nil {
		t.Errorf("b2 reached through its VIP although policy allows only b1")
	}
	start := time.Now()
	if _, err := client.NS.DialTCP(empty.String()+":80", 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to a service without backends: %v, want refused (a RST from the datapath)", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("the refusal took %s", time.Since(start))
	}
	waitEvent(t, h, func(e datapath.FlowEvent) bool {
		return e.Reason == datapath.DropNoServiceBackend && e.Dst == empty && e.Src == client.IP
	})
}

// TestMultiNodeServices: services whose backends are on another node, in
// tunnel and native routing. With kube-proxy's DNAT on node 1 and deferral,
// node 1 judges a's egress on the remote backend (to_overlay, or to_netdev
// on the underlay device); replies return through node 1's stack to be
// reverse-NATed (in native mode with the fast path on and kube-proxy's
// INVALID drop: such flows stay on the stack both ways). With Sigil's tc
// translation, replies are reverse-NATed where a's ingress is judged
// (from_overlay, or from_netdev on the fast path).
func TestMultiNodeServices(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	for _, mode := range []datapath.RoutingMode{datapath.RoutingTunnel, datapath.RoutingNative} {
		t.Run(string(mode), func(t *testing.T) { testMultiNodeServices(t, mode) })
	}
}

func testMultiNodeServices(t *testing.T, mode datapath.RoutingMode) {
	c := newMCluster(t, mode)
	n1 := c.nodes[0]
	a, cc, cd := n1.pods[0], c.nodes[1].pods[0], c.nodes[1].pods[1]
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*mpod{cc, cd} {
		p.NS.Serve(t, p.IP.String()+":8080")
	}
	// a's egress: cc on TCP 8080 only.
	_, err := n1.h.Policy.Sync(a.epID, datapath.PolicyMapEntries{
		{Identity: cc.identity, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
	})
	must(err)
	c.installEndpoint(t, a, datapath.EndpointEnforceEgress)

	// kube-proxy on node 1.
	vipCC, vipCD := netip.MustParseAddr("198.18.253.1"), netip.MustParseAddr("198.18.253.2")
	kubeProxyDNAT(t, n1.tn.NS, vipCC, 80, cc.IP)
	kubeProxyDNAT(t, n1.tn.NS, vipCD, 80, cd.IP)
	deferServices(t, n1.h, "198.18.253.0/24")
	// As the agent's overlay does: to_netdev on the devices towards the
	// other nodes (not the tunnel device).
	devs, err := n1.h.RouteDevices([]netip.Addr{c.nodes[1].underlay}, datapath.DefaultTunnelDevice)
	must(err)
	if len(devs) != 1 || devs["ul0"] == 0 {
		t.Fatalf("devices towards node 2: %v, want ul0", devs)
	}
	must(n1.h.AttachNativeDevice("ul0", devs["ul0"]))
	t.Cleanup(func() { n1.h.DetachNativeDevice("ul0") })
	expect(t, "kube-proxy: a -> vipCC (cc on node 2)", a.NS.TCP(vipCC.String()+":80", okTimeout), true)
	expect(t, "kube-proxy: a -> vipCD (cd, denied)", a.NS.TCP(vipCD.String()+":80", dropTimeout), false)
	ev := waitEvent(t, n1.h, func(e datapath.FlowEvent) bool { return e.Verdict == datapath.VerdictDropped && e.Dst == cd.IP })
	if ev.Reason != datapath.DropPolicyDefault || ev.EndpointID != a.epID || ev.Direction != datapath.Egress {
		t.Errorf("node 1 drop event %+v: want a's egress default deny on cd", ev)
	}
	if mode == datapath.RoutingTunnel {
		// The deferred packet carries a's identity to node 2.
		ev := waitEvent(t, c.nodes[1].h, func(e datapath.FlowEvent) bool {
			return e.Type == datapath.EventPolicyVerdict && e.Dst == cc.IP && e.Direction == datapath.Ingress
		})
		if ev.SrcIdentity != a.identity {
			t.Errorf("node 2 judged the deferred packet as identity %d, want a's %d", ev.SrcIdentity, a.identity)
		}
	}
	// A host-network backend on node 2 (its underlay address): leaves
	// node 1 through the underlay in either mode, judged by to_netdev.
	vipNode := netip.MustParseAddr("198.18.253.3")
	c.nodes[1].tn.NS.Serve(t, c.nodes[1].underlay.String()+":8080")
	kubeProxyDNAT(t, n1.tn.NS, vipNode, 80, c.nodes[1].underlay)
	expect(t, "kube-proxy: a -> vipNode (node 2 itself, denied)", a.NS.TCP(vipNode.String()+":80", dropTimeout), false)
	_, err = n1.h.Policy.Sync(a.epID, datapath.PolicyMapEntries{
		{Identity: cc.identity, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}:                 {Cookie: 1},
		{Identity: datapath.IdentityRemoteNode, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 2},
	})
	must(err)
	expect(t, "kube-proxy: a -> vipNode once remote-node is allowed", a.NS.TCP(vipNode.String()+":80", okTimeout), true)
	n1.tn.NS.MustRun(t, "iptables", "-t", "nat", "-F", "PREROUTING")
	rc, err := n1.h.Config.Get()
	must(err)
	rc.Flags &^= datapath.ConfigServiceDefer
	rc.ServiceCIDRs = nil

	// Sigil's tc translation on node 1 (socket programs not attached).
	rc.Flags |= datapath.ConfigLBTC
	must(n1.h.SetRuntimeConfig(rc))
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: n1.h.PinDir()})
	must(err)
	t.Cleanup(func() { lb.Close() })
	vipTC, vipTD := netip.MustParseAddr("198.18.254.1"), netip.MustParseAddr("198.18.254.2")
	must(lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: vipTC, Port: 80, Proto: datapath.ProtoTCP},
		Backends: []datapath.Backend{{Address: cc.IP, Port: 8080}}}))
	must(lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: vipTD, Port: 80, Proto: datapath.ProtoTCP},
		Backends: []datapath.Backend{{Address: cd.IP, Port: 8080}}}))
	conn, err := a.NS.DialTCP(vipTC.String()+":80", okTimeout)
	if err != nil {
		t.Fatalf("tc translation: a -> vipTC (cc on node 2): %v", err)
	}
	must(testnet.Echo(conn, okTimeout))
	conn.Close()
	expect(t, "tc translation: a -> vipTD (cd, denied)", a.NS.TCP(vipTD.String()+":80", dropTimeout), false)
}

package datapath_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// A cluster of two nodes on an underlay (198.19.0.0/24), two pods each
// (198.18.<node>.0/24), and an outside host behind node 1 (198.19.9.2).
type mcluster struct {
	mode  datapath.RoutingMode
	nodes []*mnode
	ext   *testnet.NS
}

type mnode struct {
	tn       *testnet.Node
	h        *dt.Harness
	underlay netip.Addr
	podCIDR  netip.Prefix
	pods     []*mpod
}

type mpod struct {
	*testnet.Pod
	node     *mnode
	identity datapath.Identity
	epID     uint32
	hostMAC  net.HardwareAddr
}

func newMCluster(t *testing.T, mode datapath.RoutingMode) *mcluster {
	t.Helper()
	return newMClusterAttach(t, mode, datapath.AttachAuto)
}

// newMClusterAttach is newMCluster with the programs attached as attach
// says (TCX or tc).
func newMClusterAttach(t *testing.T, mode datapath.RoutingMode, attach datapath.AttachMode) *mcluster {
	t.Helper()
	c := &mcluster{mode: mode}
	for i := 1; i <= 2; i++ {
		tn, err := testnet.CreateNode(netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tn.Delete() })
		n := &mnode{tn: tn, underlay: netip.MustParseAddr(fmt.Sprintf("198.19.0.%d", i)),
			podCIDR: netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i))}
		for j := 0; j < 2; j++ {
			tp, err := tn.AddPod(netip.MustParseAddr(fmt.Sprintf("198.18.%d.%d", i, 10+j)), fmt.Sprintf("lxc%d", j))
			if err != nil {
				t.Fatal(err)
			}
			mac, err := tn.NS.HardwareAddr(tp.HostIf)
			if err != nil {
				t.Fatal(err)
			}
			n.pods = append(n.pods, &mpod{Pod: tp, node: n, identity: datapath.Identity(1000 + 10*i + j),
				epID: uint32(j + 1), hostMAC: mac})
		}
		c.nodes = append(c.nodes, n)
	}
	n1, n2 := c.nodes[0], c.nodes[1]
	testnet.Veth(t, n1.tn.NS, "ul0", n2.tn.NS, "ul0")
	n1.tn.NS.MustRun(t, "ip", "addr", "add", "198.19.0.1/24", "dev", "ul0")
	n2.tn.NS.MustRun(t, "ip", "addr", "add", "198.19.0.2/24", "dev", "ul0")
	c.ext = testnet.NewNS(t, "sgext")
	testnet.Veth(t, n1.tn.NS, "ext0", c.ext, "eth0")
	n1.tn.NS.MustRun(t, "ip", "addr", "add", "198.19.9.1/24", "dev", "ext0")
	c.ext.MustRun(t, "ip", "addr", "add", "198.19.9.2/24", "dev", "eth0")
	for _, n := range c.nodes {
		n.h = dt.New(t, datapath.Config{NetNS: n.tn.NS.Path, AttachMode: attach})
		c.install(t, n)
	}
	return c
}

func (c *mcluster) other(n *mnode) *mnode {
	if n == c.nodes[0] {
		return c.nodes[1]
	}
	return c.nodes[0]
}

// install programs what an agent would for node n: its endpoints and their
// programs, the ipcache, the tunnel or routes, and masquerading.
func (c *mcluster) install(t *testing.T, n *mnode) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	rc := datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows}
	remote := c.other(n)
	if c.mode == datapath.RoutingTunnel {
		ifIndex, err := n.h.EnsureTunnel(datapath.DefaultTunnelDevice, datapath.DefaultTunnelPort, 1500-datapath.VXLANOverhead)
		must(err)
		rc.Flags |= datapath.ConfigTunnel
		rc.TunnelIfIndex = uint32(ifIndex)
		must(n.h.SyncRoutes([]datapath.PodRoute{{Dst: remote.podCIDR, Device: datapath.DefaultTunnelDevice}}))
		// The tunnel map, as the agent fills it from SigilNode objects.
		must(n.h.Tunnel.Sync(map[netip.Prefix]netip.Addr{remote.podCIDR: remote.underlay,
			netip.PrefixFrom(remote.underlay, 32): remote.underlay}))
	} else {
		must(n.h.SyncRoutes([]datapath.PodRoute{{Dst: remote.podCIDR, Via: remote.underlay}}))
		// As the agent's overlay does: from_netdev on the device the
		// other node's pod traffic arrives on, then the fast path on.
		must(n.h.AttachNativeIngress("ul0", n.tn.NS.IfIndex(t, "ul0")))
		rc.Flags |= datapath.ConfigNativeFast
		// kube-proxy's rule (iptables mode, without
		// --conntrack-tcp-be-liberal): the stack drops what its conntrack
		// calls INVALID, such as the half of a flow whose other half
		// skipped the stack. Flows must take one path both ways.
		n.tn.NS.MustRun(t, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	must(n.h.SetRuntimeConfig(rc))
	for _, p := range n.pods {
		c.installEndpoint(t, p, 0)
		must(n.h.AttachEndpoint(p.HostIf, p.IfIndex))
	}
	for _, p := range remote.pods {
		must(n.h.IPCache.Upsert(netip.PrefixFrom(p.IP, 32), datapath.IPCacheEntry{Identity: p.identity}))
	}
	must(n.h.IPCache.Upsert(netip.PrefixFrom(remote.underlay, 32), datapath.IPCacheEntry{Identity: datapath.IdentityRemoteNode}))
	for _, own := range []netip.Addr{n.underlay, n.tn.Gateway} {
		must(n.h.IPCache.Upsert(netip.PrefixFrom(own, 32), datapath.IPCacheEntry{Identity: datapath.IdentityHost}))
	}
	must(n.h.SyncMasquerade(datapath.MasqueradeConfig{PodCIDRs: []netip.Prefix{n.podCIDR},
		NonMasquerade: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("198.19.0.0/24")}}))
}

func (c *mcluster) installEndpoint(t *testing.T, p *mpod, flags datapath.EndpointFlags) {
	t.Helper()
	if err := p.node.h.Endpoints.Upsert(p.IP, datapath.EndpointInfo{ID: p.epID, IfIndex: uint32(p.IfIndex),
		Identity: p.identity, Flags: flags, MAC: p.MAC, NodeMAC: p.hostMAC}); err != nil {
		t.Fatal(err)
	}
	if err := p.node.h.IPCache.Upsert(netip.PrefixFrom(p.IP, 32), datapath.IPCacheEntry{Identity: p.identity, LocalEndpoint: true}); err != nil {
		t.Fatal(err)
	}
}

// allowIngress enforces p's ingress with the given entries.
func (c *mcluster) allowIngress(t *testing.T, p *mpod, entries datapath.PolicyMapEntries) {
	t.Helper()
	if _, err := p.node.h.Policy.Sync(p.epID, entries); err != nil {
		t.Fatal(err)
	}
	c.installEndpoint(t, p, datapath.EndpointEnforceIngress)
}

func TestMultiNode(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	for _, mode := range []datapath.RoutingMode{datapath.RoutingTunnel, datapath.RoutingNative} {
		t.Run(string(mode), func(t *testing.T) { testMultiNode(t, mode, datapath.AttachAuto) })
	}
	// from_netdev and the endpoints' programs as legacy tc filters.
	t.Run("native-tc", func(t *testing.T) { testMultiNode(t, datapath.RoutingNative, datapath.AttachTC) })
}

func testMultiNode(t *testing.T, mode datapath.RoutingMode, attach datapath.AttachMode) {
	c := newMClusterAttach(t, mode, attach)
	n1, n2 := c.nodes[0], c.nodes[1]
	a, b, cc := n1.pods[0], n1.pods[1], n2.pods[0]
	for _, p := range []*mpod{a, b, cc} {
		p.NS.Serve(t, p.IP.String()+":8080")
		p.NS.Serve(t, p.IP.String()+":9090")
	}
	at := func(p *mpod, port int) string { return fmt.Sprintf("%s:%d", p.IP, port) }

	// Open cluster: cross-node and same-node, TCP, UDP, ICMP.
	expect(t, "cross-node tcp", a.NS.TCP(at(cc, 8080), okTimeout), true)
	expect(t, "cross-node udp", a.NS.UDP(at(cc, 8080), okTimeout), true)
	expect(t, "cross-node icmp", a.NS.Ping(cc.IP.String()), true)
	// An ICMP error takes its flow's path: a's UDP to a closed port on cc
	// is refused (cc's port unreachable reaches a's socket).
	expect(t, "cross-node udp to a closed port refused", udpRefused(a, at(cc, 7777)), true)
	expect(t, "same-node tcp", a.NS.TCP(at(b, 8080), okTimeout), true)
	expect(t, "same-node icmp", a.NS.Ping(b.IP.String()), true)

	// Policy on the far node: cc accepts only a, on TCP 8080; b (same
	// node as a) gets nothing. Same-node: b accepts only cc.
	c.allowIngress(t, cc, datapath.PolicyMapEntries{
		{Identity: a.identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 7},
	})
	c.allowIngress(t, b, datapath.PolicyMapEntries{
		{Identity: cc.identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 8},
	})
	for _, n := range c.nodes {
		n.h.Conntrack.Flush(nil)
	}
	if mode == datapath.RoutingNative {
		// Count what node 2's stack forwards to and from cc: with the
		// fast path nothing of a's flows with cc (from_netdev redirects
		// into cc, from_container out of ul0).
		n2.tn.NS.MustRun(t, "iptables", "-I", "FORWARD", "-d", cc.IP.String()+"/32", "-m", "comment", "--comment", "sigil-test-to")
		n2.tn.NS.MustRun(t, "iptables", "-I", "FORWARD", "-s", cc.IP.String()+"/32", "-m", "comment", "--comment", "sigil-test-from")
	}
	expect(t, "a -> cc:8080 allowed", a.NS.TCP(at(cc, 8080), okTimeout), true)
	expect(t, "a -> cc:9090 denied", a.NS.TCP(at(cc, 9090), dropTimeout), false)
	if mode == datapath.RoutingNative {
		// Judged on node 2's underlay device, not on cc's host veth.
		ul0 := uint32(n2.tn.NS.IfIndex(t, "ul0"))
		ev := waitEvent(t, n2.h, func(e datapath.FlowEvent) bool {
			return e.Verdict == datapath.VerdictDropped && e.DstPort == 9090 && e.Src == a.IP
		})
		if ev.IfIndex != ul0 || ev.SrcIdentity != a.identity || ev.EndpointID != cc.epID || ev.Reason != datapath.DropPolicyDefault {
			t.Errorf("drop event %+v: want cc's ingress judged on ul0 (ifindex %d) with a's identity", ev, ul0)
		}
		if to, from := forwarded(t, n2, "sigil-test-to"), forwarded(t, n2, "sigil-test-from"); to != 0 || from != 0 {
			t.Errorf("node 2's stack forwarded %d packets to cc, %d from cc: want none (the fast path carries a's flows)", to, from)
		}
	}
	expect(t, "a -> cc udp denied", a.NS.UDP(at(cc, 8080), dropTimeout), false)
	expect(t, "b -> cc:8080 denied", b.NS.TCP(at(cc, 8080), dropTimeout), false)
	expect(t, "a -> b denied on the same node", a.NS.TCP(at(b, 8080), dropTimeout), false)
	expect(t, "cc -> b:8080 allowed across nodes", cc.NS.TCP(at(b, 8080), okTimeout), true)

	// Where the source identity comes from: forget a on node 2.
	if err := n2.h.IPCache.Delete(netip.PrefixFrom(a.IP, 32)); err != nil {
		t.Fatal(err)
	}
	n2.h.Conntrack.Flush(nil)
	if mode == datapath.RoutingTunnel {
		// The VNI carries a's identity: still allowed, and node 2 reports it.
		expect(t, "tunnel: identity from the VNI", a.NS.TCP(at(cc, 8080), okTimeout), true)
		expect(t, "tunnel: a -> cc:9090 still denied", a.NS.TCP(at(cc, 9090), dropTimeout), false)
		ev := waitEvent(t, n2.h, func(e datapath.FlowEvent) bool {
			return e.Verdict == datapath.VerdictDropped && e.DstPort == 9090 && e.Src == a.IP
		})
		if ev.SrcIdentity != a.identity {
			t.Errorf("node 2 judged a as identity %d, want %d from the VNI", ev.SrcIdentity, a.identity)
		}
	} else {
		// Natively routed, node 2 resolves the source from its ipcache:
		// a is now "world" there and denied.
		expect(t, "native: unknown source is world", a.NS.TCP(at(cc, 8080), dropTimeout), false)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(n2.h.IPCache.Upsert(netip.PrefixFrom(a.IP, 32), datapath.IPCacheEntry{Identity: a.identity}))

	// Out of the cluster: masqueraded to node 1's address, replies restored.
	var seen string
	must(c.ext.Do(func() error {
		l, err := net.Listen("tcp4", "198.19.9.2:7000")
		if err != nil {
			return err
		}
		go func() {
			defer l.Close()
			conn, err := l.Accept()
			if err != nil {
				return
			}
			seen = conn.RemoteAddr().(*net.TCPAddr).IP.String()
			conn.Write([]byte("hello\n"))
			conn.Close()
		}()
		return nil
	}))
	conn, err := a.NS.DialTCP("198.19.9.2:7000", okTimeout)
	if err != nil {
		t.Fatalf("pod to outside host: %v", err)
	}
	buf := make([]byte, 6)
	conn.SetDeadline(time.Now().Add(okTimeout))
	if _, err := conn.Read(buf); err != nil || string(buf) != "hello\n" {
		t.Errorf("reply from outside: %q, %v", buf, err)
	}
	conn.Close()
	if seen != "198.19.9.1" {
		t.Errorf("outside host saw source %q, want node 1's address 198.19.9.1 (masquerade)", seen)
	}

	// Node-to-pod: the own node is host (allowed by default), the other
	// node is remote-node (subject to policy).
	expect(t, "node 2 probes cc", n2.tn.NS.TCP(at(cc, 9090), okTimeout), true)
	expect(t, "node 1 probes cc: remote-node denied", n1.tn.NS.TCP(at(cc, 9090), dropTimeout), false)
	c.allowIngress(t, cc, datapath.PolicyMapEntries{
		{Identity: a.identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 7},
		{Identity: datapath.IdentityRemoteNode, Direction: datapath.Ingress}:                                            {Cookie: 9},
	})
	expect(t, "node 1 probes cc once remote-node is allowed", n1.tn.NS.TCP(at(cc, 9090), okTimeout), true)

	// Reloading node 2's datapath (an agent restart) keeps an established
	// cross-node connection.
	est, err := a.NS.DialTCP(at(cc, 8080), okTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer est.Close()
	must(testnet.Echo(est, okTimeout))
	dp, err := datapath.Load(datapath.Config{PinDir: n2.h.PinDir(), NetNS: n2.tn.NS.Path, AttachMode: attach})
	must(err)
	defer dp.Close()
	for _, p := range n2.pods {
		must(dp.AttachEndpoint(p.HostIf, p.IfIndex))
	}
	if mode == datapath.RoutingTunnel {
		_, err := dp.EnsureTunnel(datapath.DefaultTunnelDevice, datapath.DefaultTunnelPort, 1500-datapath.VXLANOverhead)
		must(err)
	} else {
		must(dp.AttachNativeIngress("ul0", n2.tn.NS.IfIndex(t, "ul0")))
	}
	if err := testnet.Echo(est, okTimeout); err != nil {
		t.Errorf("established connection broken by node 2's reload: %v", err)
	}
	expect(t, "policy still enforced after reload", a.NS.TCP(at(cc, 9090), dropTimeout), false)

	// A changed pod CIDR replaces its masquerade rule; removal leaves none.
	for _, n := range c.nodes {
		must(n.h.SyncMasquerade(datapath.MasqueradeConfig{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.99.0/24")}}))
		rules := n.tn.NS.MustRun(t, "iptables", "-t", "nat", "-S", "POSTROUTING")
		if strings.Contains(rules, n.podCIDR.String()) || !strings.Contains(rules, "198.18.99.0/24") {
			t.Errorf("masquerade rules after a pod CIDR change:\n%s", rules)
		}
		must(n.h.RemoveMasquerade())
		if rules := n.tn.NS.MustRun(t, "iptables-save", "-t", "nat"); strings.Contains(rules, "SIGIL") {
			t.Errorf("masquerade left behind:\n%s", rules)
		}
		must(n.h.SyncRoutes(nil))
	}
}

// forwarded is how many packets node n's stack counted in the FORWARD rule
// with comment, which testMultiNode put there.
func forwarded(t *testing.T, n *mnode, comment string) int {
	t.Helper()
	out := n.tn.NS.MustRun(t, "iptables", "-L", "FORWARD", "-v", "-n", "-x")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.Contains(line, "/* "+comment+" */") {
			var pkts int
			fmt.Sscan(f[0], &pkts)
			return pkts
		}
	}
	t.Fatalf("no counting rule in FORWARD:\n%s", out)
	return 0
}

// udpRefused sends a datagram from p to addr and reports nil when the
// answer is an ICMP port unreachable (ECONNREFUSED on the socket).
func udpRefused(p *mpod, addr string) error {
	return p.NS.Do(func() error {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(okTimeout))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		if _, err = c.Read(make([]byte, 8)); errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return fmt.Errorf("read: %v, want connection refused", err)
	})
}

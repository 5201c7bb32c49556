package datapath_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// node is a testnet.Node with the identities and endpoint IDs of its pods.
type node struct {
	ns   *testnet.NS
	pods []*pod
}

type pod struct {
	ns       *testnet.NS
	ip       netip.Addr
	hostIf   string
	ifIndex  int
	identity datapath.Identity
	epID     uint32
}

const gateway = "198.18.10.1"

func newNode(t *testing.T, n int) *node {
	t.Helper()
	tn, err := testnet.CreateNode(netip.MustParseAddr(gateway))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Delete() })
	nd := &node{ns: tn.NS}
	for i := 1; i <= n; i++ {
		tp, err := tn.AddPod(netip.MustParseAddr(fmt.Sprintf("198.18.10.%d", 10+i)), fmt.Sprintf("lxc%d", i))
		if err != nil {
			t.Fatal(err)
		}
		nd.pods = append(nd.pods, &pod{ns: tp.NS, ip: tp.IP, hostIf: tp.HostIf, ifIndex: tp.IfIndex,
			identity: datapath.Identity(1000 + i), epID: uint32(i)})
	}
	return nd
}

// install writes the node's endpoints and ipcache and attaches the programs.
func (nd *node) install(dp *datapath.Datapath) error {
	if err := dp.IPCache.Upsert(netip.MustParsePrefix(gateway+"/32"), datapath.IPCacheEntry{Identity: datapath.IdentityHost}); err != nil {
		return err
	}
	for _, p := range nd.pods {
		if err := dp.Endpoints.Upsert(p.ip, datapath.EndpointInfo{ID: p.epID, IfIndex: uint32(p.ifIndex), Identity: p.identity}); err != nil {
			return err
		}
		if err := dp.IPCache.Upsert(netip.PrefixFrom(p.ip, 32), datapath.IPCacheEntry{Identity: p.identity, LocalEndpoint: true}); err != nil {
			return err
		}
		if err := dp.AttachEndpoint(p.hostIf, p.ifIndex); err != nil {
			return err
		}
	}
	return nil
}

// enforceIngress makes pod's ingress default-deny with the given entries.
func enforceIngress(t *testing.T, dp *datapath.Datapath, p *pod, entries datapath.PolicyMapEntries) {
	t.Helper()
	if _, err := dp.Policy.Sync(p.epID, entries); err != nil {
		t.Fatal(err)
	}
	if err := dp.Endpoints.Upsert(p.ip, datapath.EndpointInfo{ID: p.epID, IfIndex: uint32(p.ifIndex),
		Identity: p.identity, Flags: datapath.EndpointEnforceIngress}); err != nil {
		t.Fatal(err)
	}
}

const (
	okTimeout   = 2 * time.Second
	dropTimeout = 300 * time.Millisecond
)

func expect(t *testing.T, what string, err error, delivered bool) {
	t.Helper()
	if delivered && err != nil {
		t.Errorf("%s: want delivered, got %v", what, err)
	}
	if !delivered && err == nil {
		t.Errorf("%s: want dropped, but it was delivered", what)
	}
}

func TestTrafficInNamespaces(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	for _, mode := range []datapath.AttachMode{datapath.AttachTCX, datapath.AttachTC} {
		t.Run(string(mode), func(t *testing.T) { testTraffic(t, mode) })
	}
}

func testTraffic(t *testing.T, mode datapath.AttachMode) {
	nd := newNode(t, 2)
	p1, p2 := nd.pods[0], nd.pods[1]
	dp := dt.New(t, datapath.Config{NetNS: nd.ns.Path, AttachMode: mode})
	if err := dp.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows}); err != nil {
		t.Fatal(err)
	}
	if err := nd.install(dp.Datapath); err != nil {
		t.Fatal(err)
	}
	srv := p2.ip.String()
	p2.ns.Serve(t, srv+":8080")
	p2.ns.Serve(t, srv+":9090")

	// No policy selects p2: everything is delivered.
	expect(t, "tcp 8080", p1.ns.TCP(srv+":8080", okTimeout), true)
	expect(t, "udp 8080", p1.ns.UDP(srv+":8080", okTimeout), true)
	expect(t, "icmp", p1.ns.Ping(srv), true)

	// p2 ingress allows only p1 on TCP 8080.
	enforceIngress(t, dp.Datapath, p2, datapath.PolicyMapEntries{
		{Identity: p1.identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 42},
	})
	if _, err := dp.Conntrack.FlushAddr(p2.ip); err != nil {
		t.Fatal(err)
	}
	expect(t, "tcp 8080 allowed", p1.ns.TCP(srv+":8080", okTimeout), true)
	expect(t, "tcp 9090 denied", p1.ns.TCP(srv+":9090", dropTimeout), false)
	expect(t, "udp 8080 denied", p1.ns.UDP(srv+":8080", dropTimeout), false)
	expect(t, "icmp denied", p1.ns.Ping(srv), false)
	expect(t, "host probe allowed", nd.ns.TCP(srv+":9090", okTimeout), true)
	// p1 itself is not selected: p2 can still reach it.
	p1.ns.Serve(t, p1.ip.String()+":7070")
	expect(t, "p2 -> p1 open", p2.ns.TCP(p1.ip.String()+":7070", okTimeout), true)

	// A live map update changes behaviour.
	if _, err := dp.Policy.Sync(p2.epID, datapath.PolicyMapEntries{
		{Identity: p1.identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 42},
		{Identity: p1.identity, Direction: datapath.Ingress, Protocol: datapath.ProtoUDP}:                                {Cookie: 43},
	}); err != nil {
		t.Fatal(err)
	}
	expect(t, "udp 8080 now allowed", p1.ns.UDP(srv+":8080", okTimeout), true)

	// Events: the allowed flow, then the denied TCP 9090 attempt, in order.
	allowed := waitEvent(t, dp, func(e datapath.FlowEvent) bool {
		return e.Type == datapath.EventPolicyVerdict && e.DstPort == 8080 && e.Proto == datapath.ProtoTCP && e.Cookie == 42
	})
	if allowed.Verdict != datapath.VerdictForwarded {
		t.Errorf("policy verdict event %+v", allowed)
	}
	ev := waitEvent(t, dp, func(e datapath.FlowEvent) bool {
		return e.Verdict == datapath.VerdictDropped && e.DstPort == 9090
	})
	if ev.Reason != datapath.DropPolicyDefault || ev.SrcIdentity != p1.identity || ev.DstIdentity != p2.identity ||
		ev.EndpointID != p2.epID || ev.Direction != datapath.Ingress || ev.Src != p1.ip {
		t.Errorf("drop event %+v: want default deny p1 -> p2 ingress", ev)
	}
}

// waitEvent reads events until match, failing after a few seconds.
func waitEvent(t *testing.T, h *dt.Harness, match func(datapath.FlowEvent) bool) datapath.FlowEvent {
	t.Helper()
	rd, err := h.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		rd.SetDeadline(deadline)
		e, err := rd.Read()
		if err != nil {
			break
		}
		if match(e) {
			return e
		}
	}
	t.Fatal("no matching flow event")
	return datapath.FlowEvent{}
}

// TestSurvivesLoaderExit loads and attaches the datapath from a child
// process that then exits; enforcement must go on, and a new loader must
// reuse the pinned maps and take over the attachments.
func TestSurvivesLoaderExit(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	nd := newNode(t, 2)
	p1, p2 := nd.pods[0], nd.pods[1]
	pinDir := dt.PinDir(t)
	srv := p2.ip.String()
	p2.ns.Serve(t, srv+":8080")
	p2.ns.Serve(t, srv+":9090")

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLoader$", "-test.v")
	cmd.Env = append(os.Environ(), "SIGIL_HELPER_PINDIR="+pinDir, "SIGIL_HELPER_NETNS="+nd.ns.Path,
		fmt.Sprintf("SIGIL_HELPER_IFS=%s:%d,%s:%d", p1.hostIf, p1.ifIndex, p2.hostIf, p2.ifIndex))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("loader process: %v\n%s", err, out)
	}

	// The loader is gone; its pinned maps and links still enforce.
	expect(t, "tcp 8080 allowed after loader exit", p1.ns.TCP(srv+":8080", okTimeout), true)
	expect(t, "tcp 9090 denied after loader exit", p1.ns.TCP(srv+":9090", dropTimeout), false)
	established, err := p1.ns.DialTCP(srv+":8080", okTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if err := testnet.Echo(established, okTimeout); err != nil {
		t.Fatal(err)
	}

	// A new loader reuses the pinned maps and swaps in its programs.
	dp, err := datapath.Load(datapath.Config{PinDir: pinDir, NetNS: nd.ns.Path})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	eps, err := dp.Endpoints.List()
	if err != nil || len(eps) != 2 {
		t.Fatalf("endpoints after reload: %v, %v; want the 2 from the first loader", eps, err)
	}
	for _, p := range nd.pods {
		if err := dp.AttachEndpoint(p.hostIf, p.ifIndex); err != nil {
			t.Fatal(err)
		}
	}
	if err := testnet.Echo(established, okTimeout); err != nil {
		t.Errorf("established connection broken by the reload: %v", err)
	}
	expect(t, "tcp 9090 still denied after reload", p1.ns.TCP(srv+":9090", dropTimeout), false)
	ifs, err := dp.AttachedInterfaces()
	if err != nil || len(ifs) != 2 {
		t.Errorf("attached interfaces %v, %v", ifs, err)
	}
	for _, p := range nd.pods {
		if err := dp.DetachEndpoint(p.hostIf); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, "tcp 9090 open once detached", p1.ns.TCP(srv+":9090", okTimeout), true)
}

// TestHelperLoader is the child process of TestSurvivesLoaderExit.
func TestHelperLoader(t *testing.T) {
	pinDir := os.Getenv("SIGIL_HELPER_PINDIR")
	if pinDir == "" {
		t.Skip("helper process only")
	}
	dp, err := datapath.Load(datapath.Config{PinDir: pinDir, NetNS: os.Getenv("SIGIL_HELPER_NETNS")})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	var if1, if2 string
	var idx1, idx2 int
	if _, err := fmt.Sscanf(os.Getenv("SIGIL_HELPER_IFS"), "lxc1:%d,lxc2:%d", &idx1, &idx2); err != nil {
		t.Fatal(err)
	}
	if1, if2 = "lxc1", "lxc2"
	ip1, ip2 := netip.MustParseAddr("198.18.10.11"), netip.MustParseAddr("198.18.10.12")
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dp.Endpoints.Upsert(ip1, datapath.EndpointInfo{ID: 1, IfIndex: uint32(idx1), Identity: 1001}))
	must(dp.Endpoints.Upsert(ip2, datapath.EndpointInfo{ID: 2, IfIndex: uint32(idx2), Identity: 1002, Flags: datapath.EndpointEnforceIngress}))
	must(dp.IPCache.Upsert(netip.PrefixFrom(ip1, 32), datapath.IPCacheEntry{Identity: 1001}))
	must(dp.IPCache.Upsert(netip.PrefixFrom(ip2, 32), datapath.IPCacheEntry{Identity: 1002}))
	_, err = dp.Policy.Sync(2, datapath.PolicyMapEntries{
		{Identity: 1001, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
	})
	must(err)
	must(dp.AttachEndpoint(if1, idx1))
	must(dp.AttachEndpoint(if2, idx2))
}

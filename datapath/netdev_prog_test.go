package datapath_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// toNode is p as it arrives on the node's underlay device: addressed to the
// device's MAC. BPF_PROG_TEST_RUN runs on loopback, whose address is all
// zeros, so such a frame is PACKET_HOST there.
func toNode(p dt.Packet) []byte {
	b := p.Bytes()
	copy(b[0:6], make([]byte, 6))
	return b
}

// TestFromNetdev: from_netdev, on a native-routing device's ingress, judges
// a packet from a remote pod for a local pod by the pod's ingress policy
// and redirects it into the pod with the pod's and its host veth's MACs;
// denied packets are dropped with an event; everything it does not handle
// goes up the stack untouched. Flows are fast (CTFast) or not as a whole.
func TestFromNetdev(t *testing.T) {
	dt.RequireBPF(t)
	h := setup(t, datapath.EndpointEnforceIngress|datapath.EndpointEnforceEgress,
		datapath.RuntimeConfig{Flags: datapath.ConfigTraceNewFlows | datapath.ConfigAllowHostIngress | datapath.ConfigNativeFast})
	// A is on loopback (ifindex 1) so that from_container runs for it too.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	enforced := datapath.EndpointEnforceIngress | datapath.EndpointEnforceEgress
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 1, Identity: idA, Flags: enforced, MAC: macA, NodeMAC: macGw}))
	// D: a local pod whose MACs are not known (yet): left to the stack.
	must(h.Endpoints.Upsert(ipD, datapath.EndpointInfo{ID: 14, IfIndex: 1, Identity: idC, Flags: enforced}))
	// A accepts B (a pod on another node, in the ipcache) on TCP 8080 and
	// UDP 53; A's egress allows nothing, so only conntrack lets replies out.
	h.SetPolicy(epA, entries(allow(idB, datapath.Ingress, tcp, 8080, 16), allow(idB, datapath.Ingress, udp, 53, 16)))
	fromNetdev := h.NetdevIngressProgram()

	type tcase struct {
		name   string
		frame  []byte
		action int32
		reason datapath.Reason // of the event; ReasonForwarded: a verdict event or none
		event  bool
	}
	arp := toNode(tcpSyn(ipB, ipA, 8080))
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	frag := tcpSyn(ipB, ipA, 8080)
	frag.MoreFragments = true
	frag.IPID = 7
	laterFrag := dt.Packet{Src: ipB, Dst: ipA, Proto: 6, FragOffset: 3, IPID: 8, Payload: make([]byte, 16)}
	otherHost := tcpSyn(ipB, ipA, 8080).Bytes() // addressed to another MAC
	for _, tc := range []tcase{
		{"denied port: dropped", toNode(tcpSyn(ipB, ipA, 9090)), dt.ActShot, datapath.DropPolicyDefault, true},
		{"from outside the cluster (world): up the stack", toNode(tcpSyn(ipOut, ipA, 8080)), dt.ActNext, 0, false},
		{"from the node itself (host): up the stack", toNode(tcpSyn(ipHost, ipA, 8080)), dt.ActNext, 0, false},
		{"unknown destination: up the stack", toNode(tcpSyn(ipB, ipC, 8080)), dt.ActNext, 0, false},
		{"the node's own address: up the stack", toNode(tcpSyn(ipB, ipHost, 22)), dt.ActNext, 0, false},
		{"local pod without known MACs: up the stack", toNode(tcpSyn(ipB, ipD, 8080)), dt.ActNext, 0, false},
		{"not IPv4 (ARP): up the stack", arp, dt.ActNext, 0, false},
		{"first fragment: up the stack", toNode(frag), dt.ActNext, 0, false},
		{"later fragment: up the stack", toNode(laterFrag), dt.ActNext, 0, false},
		{"another host's MAC: up the stack", otherHost, dt.ActNext, 0, false},
	} {
		in := bytes.Clone(tc.frame)
		r := h.RunProg(fromNetdev, tc.frame, 0)
		if r.Action != tc.action || (r.Event != nil) != tc.event || r.Reason() != tc.reason {
			t.Errorf("%s: action %d event %+v; want action %d, event %v reason %s", tc.name, r.Action, r.Event, tc.action, tc.event, tc.reason)
			continue
		}
		if tc.action == dt.ActNext && !bytes.Equal(r.Data, in) {
			t.Errorf("%s: passed frame was changed", tc.name)
		}
		if tc.event && (r.Event.Direction != datapath.Ingress || r.Event.EndpointID != epA || r.Event.DstIdentity != idA) {
			t.Errorf("%s: event %+v, want A's ingress verdict", tc.name, r.Event)
		}
	}
	if r := h.RunProg(fromNetdev, toNode(tcpSyn(ipB, ipA, 9090)), 0); r.Event == nil || r.Event.SrcIdentity != idB {
		t.Errorf("denied B: event %+v, want B's identity from the ipcache", r.Event)
	}

	// Allowed: redirected into A with A's MAC as destination and its host
	// veth's as source; the IP packet itself (TTL included) is unchanged.
	syn := tcpSyn(ipB, ipA, 8080)
	in := toNode(syn)
	r := h.RunProg(fromNetdev, in, 0)
	if r.Action != dt.ActRedirect {
		t.Fatalf("B -> A:8080: action %d (%s), want a redirect into A", r.Action, r.Reason())
	}
	if dst, src := net.HardwareAddr(r.Data[0:6]), net.HardwareAddr(r.Data[6:12]); dst.String() != macA.String() || src.String() != macGw.String() {
		t.Errorf("redirected frame %s -> %s, want %s -> %s", src, dst, macGw, macA)
	}
	if !bytes.Equal(r.Data[12:len(in)], in[12:]) {
		t.Errorf("redirected frame's IP packet changed")
	}
	if p := decode(t, "redirected", r); p.Src != ipB || p.Dst != ipA || p.DstPort != 8080 {
		t.Errorf("redirected %s -> %s:%d", p.Src, p.Dst, p.DstPort)
	}
	if r.Event == nil || r.Event.Type != datapath.EventPolicyVerdict || r.Event.SrcIdentity != idB || r.Event.Direction != datapath.Ingress {
		t.Errorf("allowed new flow: event %+v, want B's policy verdict on A's ingress", r.Event)
	}
	// Established: redirected, no second verdict.
	ack := syn
	ack.TCPFlags = dt.ACK
	if r := h.RunProg(fromNetdev, toNode(ack), 0); r.Action != dt.ActRedirect || r.Event != nil {
		t.Errorf("established B -> A: action %d event %+v, want redirected quietly", r.Action, r.Event)
	}
	// The conntrack entry is the one to_container creates for the same
	// packet (another source port: a flow of its own), but for CTFast.
	other := syn
	other.SrcPort = 40001
	if r := h.Run(datapath.Ingress, other); !r.Allowed() {
		t.Fatalf("to_container, B -> A:8080: %s", r.Reason())
	}
	viaNetdev, ok1 := ctEntry(t, h, func(e datapath.CTEntry) bool { return e.Tuple.Dst == ipA && e.Tuple.SrcPort == 40000 })
	viaStack, ok2 := ctEntry(t, h, func(e datapath.CTEntry) bool { return e.Tuple.Dst == ipA && e.Tuple.SrcPort == 40001 })
	if !ok1 || !ok2 {
		t.Fatalf("conntrack entries: from_netdev's found %v, to_container's found %v", ok1, ok2)
	}
	if viaNetdev.Tuple.Direction != viaStack.Tuple.Direction || viaNetdev.Flags&^datapath.CTFast != viaStack.Flags ||
		viaNetdev.SrcIdentity != viaStack.SrcIdentity || viaNetdev.DstIdentity != viaStack.DstIdentity ||
		viaNetdev.Cookie != viaStack.Cookie || viaNetdev.Packets != 2 {
		t.Errorf("from_netdev's entry %+v differs from to_container's %+v", viaNetdev, viaStack)
	}
	if viaNetdev.Flags&datapath.CTFast == 0 || viaStack.Flags&datapath.CTFast != 0 {
		t.Errorf("fast flag: from_netdev's entry %#x, to_container's %#x; want only from_netdev's", viaNetdev.Flags, viaStack.Flags)
	}
	// A's reply leaves through from_container: conntrack lets it out
	// although A's egress allows nothing. (Here the FIB has no answer,
	// forwarding being off in this namespace: it goes to the stack.)
	if r := h.Run(datapath.Egress, syn.Reply()); !r.Allowed() {
		t.Errorf("A's reply to B: %s, want allowed as a reply", r.Reason())
	}
	// A flow the stack carried so far (to_container's) stays there: its
	// next packet from B goes up the stack, not into A.
	ack2 := other
	ack2.TCPFlags = dt.ACK
	if r := h.RunProg(fromNetdev, toNode(ack2), 0); r.Action != dt.ActNext || r.Event != nil {
		t.Errorf("B -> A on a flow the stack carried: action %d event %+v, want up the stack", r.Action, r.Event)
	}
	// A's own new flow to B is tracked as fast (so B's replies come
	// through from_netdev); one to the world is not.
	h.SetPolicy(epA, entries(allow(idB, datapath.Ingress, tcp, 8080, 16), allow(idB, datapath.Ingress, udp, 53, 16),
		allow(datapath.IdentityAny, datapath.Egress, tcp, 443, 16)))
	for _, dst := range []netip.Addr{ipB, ipOut} {
		if r := h.Run(datapath.Egress, tcpSyn(ipA, dst, 443)); !r.Allowed() {
			t.Fatalf("A -> %s:443: %s", dst, r.Reason())
		}
		e, ok := ctEntry(t, h, func(e datapath.CTEntry) bool { return e.Tuple.Dst == dst && e.Tuple.DstPort == 443 })
		if want := dst == ipB; !ok || (e.Flags&datapath.CTFast != 0) != want {
			t.Errorf("A -> %s:443: entry %+v (found %v), want fast %v", dst, e, ok, want)
		}
	}
	// D, whose MACs from_netdev would not know, keeps its flows on the
	// stack both ways.
	h.SetPolicy(14, entries(allow(datapath.IdentityAny, datapath.Egress, tcp, 443, 16)))
	if r := h.Run(datapath.Egress, tcpSyn(ipD, ipB, 443)); !r.Allowed() {
		t.Fatalf("D -> B:443: %s", r.Reason())
	}
	if e, ok := ctEntry(t, h, func(e datapath.CTEntry) bool { return e.Tuple.Src == ipD }); !ok || e.Flags&datapath.CTFast != 0 {
		t.Errorf("D -> B:443: entry %+v (found %v), want not fast", e, ok)
	}
	if r := h.RunProg(fromNetdev, toNode(tcpSyn(ipA, ipB, 443).Reply()), 0); r.Action != dt.ActRedirect {
		t.Errorf("B's reply to A's fast flow: action %d (%s), want redirected into A", r.Action, r.Reason())
	}
	// An ICMP error takes the path of the flow it is about, whoever sends
	// it (here a router in the world): into A for the fast flow, up the
	// stack for the one to the world.
	for _, dst := range []netip.Addr{ipB, ipOut} {
		about := tcpSyn(ipA, dst, 443)
		unreach := dt.Packet{Src: ipOut, Dst: ipA, Proto: 1, ICMPType: 3, ICMPCode: 1, ICMPInner: &about}
		want := dt.ActNext
		if dst == ipB {
			want = dt.ActRedirect
		}
		if r := h.RunProg(fromNetdev, toNode(unreach), 0); r.Action != want || r.Event != nil {
			t.Errorf("ICMP error about A -> %s:443: action %d event %+v, want action %d", dst, r.Action, r.Event, want)
		}
	}
	// UDP too.
	dns := dt.Packet{Src: ipB, Dst: ipA, Proto: 17, SrcPort: 5353, DstPort: 53, Payload: []byte("q")}
	if r := h.RunProg(fromNetdev, toNode(dns), 0); r.Action != dt.ActRedirect {
		t.Errorf("B -> A:53/udp: action %d (%s), want redirected", r.Action, r.Reason())
	}

	// Without ConfigNativeFast, or in tunnel mode (from_overlay judges
	// there), the program passes everything.
	for _, rc := range []datapath.RuntimeConfig{{}, {Flags: datapath.ConfigNativeFast | datapath.ConfigTunnel, TunnelIfIndex: 1}} {
		must(h.SetRuntimeConfig(rc))
		if r := h.RunProg(fromNetdev, toNode(tcpSyn(ipB, ipA, 9090)), 0); r.Action != dt.ActNext || r.Event != nil {
			t.Errorf("flags %#x: action %d event %+v, want passed", rc.Flags, r.Action, r.Event)
		}
	}
}

// TestFromNetdevViaStack: a reply of a flow the host stack translated
// (kube-proxy, deferred) goes up the stack for its reverse NAT, not into
// the pod.
func TestFromNetdevViaStack(t *testing.T) {
	dt.RequireBPF(t)
	h := setup(t, datapath.EndpointEnforceEgress|datapath.EndpointEnforceIngress,
		datapath.RuntimeConfig{Flags: datapath.ConfigServiceDefer | datapath.ConfigNativeFast, ServiceCIDRs: []netip.Prefix{svcNet}})
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 8080, 16)))
	if err := h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 1, Identity: idA, MAC: macA, NodeMAC: macGw,
		Flags: datapath.EndpointEnforceEgress | datapath.EndpointEnforceIngress}); err != nil {
		t.Fatal(err)
	}
	_, _, toNetdev := h.OverlayPrograms()
	// kube-proxy sent A's SYN for a ClusterIP to B on another node:
	// to_netdev judged it (via-stack entry).
	toB := tcpSyn(ipA, ipB, 8080)
	if r := h.RunProg(toNetdev, toB.Bytes(), datapath.MarkDeferred|datapath.MarkDeferredEnforced); !r.Allowed() {
		t.Fatalf("deferred SYN to B: %s", r.Reason())
	}
	r := h.RunProg(h.NetdevIngressProgram(), toNode(toB.Reply()), 0)
	if r.Action != dt.ActNext || r.Event != nil {
		t.Errorf("B's reply: action %d event %+v, want up the stack", r.Action, r.Event)
	}
}

package datapath_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

var (
	vip1   = netip.MustParseAddr("198.18.250.1") // three backends
	vip2   = netip.MustParseAddr("198.18.250.2") // C only
	vip3   = netip.MustParseAddr("198.18.250.3") // no backends
	ipD    = netip.MustParseAddr("198.18.0.40")
	macA   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa}
	macGw  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xf}
	epB    = uint32(12)
	svcNet = netip.MustParsePrefix("198.18.250.0/24")
)

// lbHarness is setup plus the load-balancer's maps (the socket programs
// loaded, not attached) holding vip1:80 -> B, C, D :8080 (TCP and UDP),
// vip2:80 -> C:8080 and vip3:80 with no backend.
func lbHarness(t *testing.T, flags datapath.EndpointFlags, rc datapath.RuntimeConfig) *dt.Harness {
	t.Helper()
	h := setup(t, flags, rc)
	h.Peer(ipD.String()+"/32", idC)
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: h.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	be := func(ips ...netip.Addr) []datapath.Backend {
		var out []datapath.Backend
		for _, ip := range ips {
			out = append(out, datapath.Backend{Address: ip, Port: 8080})
		}
		return out
	}
	for _, s := range []datapath.Service{
		{Frontend: datapath.Frontend{Address: vip1, Port: 80, Proto: tcp}, Backends: be(ipB, ipC, ipD)},
		{Frontend: datapath.Frontend{Address: vip1, Port: 53, Proto: udp}, Backends: be(ipB)},
		{Frontend: datapath.Frontend{Address: vip2, Port: 80, Proto: tcp}, Backends: be(ipC)},
		{Frontend: datapath.Frontend{Address: vip3, Port: 80, Proto: tcp}},
	} {
		if err := lb.UpsertService(s); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func decode(t *testing.T, what string, r dt.Result) dt.Packet {
	t.Helper()
	p, err := dt.Decode(r.Data)
	if err != nil {
		t.Fatalf("%s: output frame: %v", what, err)
	}
	return p
}

func ctEntry(t *testing.T, h *dt.Harness, match func(datapath.CTEntry) bool) (datapath.CTEntry, bool) {
	t.Helper()
	es, err := h.Conntrack.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if match(e) {
			return e, true
		}
	}
	return datapath.CTEntry{}, false
}

// TestServiceTranslation: from_container translates packets for a service
// frontend (ConfigLBTC), tracks the backend, judges policy on it, and the
// client's ingress restores the frontend as the replies' source.
func TestServiceTranslation(t *testing.T) {
	dt.RequireBPF(t)
	h := lbHarness(t, datapath.EndpointEnforceEgress|datapath.EndpointEnforceIngress,
		datapath.RuntimeConfig{Flags: datapath.ConfigLBTC | datapath.ConfigTraceNewFlows})
	// A may reach identities B (B) and C (C and D) on 8080.
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 8080, 16), allow(idB, datapath.Egress, udp, 8080, 16),
		allow(idC, datapath.Egress, tcp, 8080, 16)))

	// DNAT: the destination becomes a backend, checksums stay valid.
	syn := tcpSyn(ipA, vip1, 80)
	r := h.Run(datapath.Egress, syn)
	if !r.Allowed() {
		t.Fatalf("SYN to vip1:80: %+v (reason %s)", r.Action, r.Reason())
	}
	out := decode(t, "SYN to vip1", r)
	backend := netip.AddrPortFrom(out.Dst, out.DstPort)
	if out.Src != ipA || out.SrcPort != 40000 || out.DstPort != 8080 || (out.Dst != ipB && out.Dst != ipC && out.Dst != ipD) {
		t.Fatalf("translated SYN %s:%d -> %s, want A:40000 -> a backend :8080", out.Src, out.SrcPort, backend)
	}
	if r.Event == nil || r.Event.Dst != out.Dst || r.Event.DstPort != 8080 {
		t.Errorf("policy verdict event %+v: want it to name the backend", r.Event)
	}
	svc, ok := ctEntry(t, h, func(e datapath.CTEntry) bool { return e.Flags&datapath.CTService != 0 && e.Tuple.Dst == vip1 })
	if !ok || svc.Backend != backend || svc.RevNATIndex == 0 || svc.Tuple.Src != ipA || svc.Tuple.DstPort != 80 {
		t.Fatalf("service conntrack entry %+v (found %v): want A -> vip1:80 translated to %s", svc, ok, backend)
	}
	fwd, ok := ctEntry(t, h, func(e datapath.CTEntry) bool {
		return e.Flags&datapath.CTService == 0 && e.Tuple.Dst == out.Dst && e.Tuple.Direction == datapath.Egress
	})
	if !ok || fwd.RevNATIndex != svc.RevNATIndex {
		t.Errorf("egress entry on the backend %+v: want rev NAT index %d", fwd, svc.RevNATIndex)
	}

	// The flow sticks to its backend.
	ack := syn
	ack.TCPFlags = dt.ACK
	for i := 0; i < 10; i++ {
		if p := decode(t, "ACK", h.Run(datapath.Egress, ack)); netip.AddrPortFrom(p.Dst, p.DstPort) != backend {
			t.Fatalf("packet %d of the flow went to %s:%d, not %s", i, p.Dst, p.DstPort, backend)
		}
	}
	// Policy flushes keep the translation (no verdict in it).
	if _, err := h.Conntrack.FlushAddr(ipA); err != nil {
		t.Fatal(err)
	}
	if p := decode(t, "ACK after flush", h.Run(datapath.Egress, ack)); netip.AddrPortFrom(p.Dst, p.DstPort) != backend {
		t.Errorf("after a policy flush the flow moved to %s:%d", p.Dst, p.DstPort)
	}

	// Reverse NAT: the reply enters A from the backend and leaves with the
	// frontend as its source (A's ingress allows nothing: conntrack does).
	reply := dt.Packet{Src: out.Dst, Dst: ipA, Proto: 6, SrcPort: 8080, DstPort: 40000, TCPFlags: dt.SYN | dt.ACK}
	r = h.Run(datapath.Ingress, reply)
	if !r.Allowed() {
		t.Fatalf("reply from the backend dropped: %s", r.Reason())
	}
	if p := decode(t, "reply", r); p.Src != vip1 || p.SrcPort != 80 || p.Dst != ipA || p.DstPort != 40000 {
		t.Errorf("reply reaches A as %s:%d -> %s:%d, want from vip1:80", p.Src, p.SrcPort, p.Dst, p.DstPort)
	}
	// The reply is accounted to the service entry: it lives as long as
	// the connection (not the 60 s of an unanswered SYN).
	if e, ok := ctEntry(t, h, func(e datapath.CTEntry) bool {
		return e.Flags&datapath.CTService != 0 && e.Tuple.Dst == vip1 && e.Tuple.SrcPort == 40000
	}); !ok || e.Flags&datapath.CTSeenReply == 0 || e.Expires < datapath.CTLifetimeTCPSyn {
		t.Errorf("service entry after the reply %+v (found %v): want seen-reply, established lifetime", e, ok)
	}

	// Spread: new flows use all three backends.
	seen := map[netip.Addr]int{}
	for i := 0; i < 60; i++ {
		s := tcpSyn(ipA, vip1, 80)
		s.SrcPort = uint16(41000 + i)
		r := h.Run(datapath.Egress, s)
		if !r.Allowed() {
			t.Fatalf("flow %d dropped: %s", i, r.Reason())
		}
		seen[decode(t, "spread", r).Dst]++
	}
	if len(seen) != 3 {
		t.Errorf("60 flows went to %v, want all three backends", seen)
	}

	// UDP, whose checksum is optional, keeps a valid one.
	dns := dt.Packet{Src: ipA, Dst: vip1, Proto: 17, SrcPort: 5353, DstPort: 53, Payload: []byte("query")}
	r = h.Run(datapath.Egress, dns)
	if p := decode(t, "udp", r); !r.Allowed() || p.Dst != ipB || p.DstPort != 8080 {
		t.Errorf("udp to vip1:53: allowed %v, now to %s:%d; want B:8080", r.Allowed(), p.Dst, p.DstPort)
	}
	r = h.Run(datapath.Ingress, dt.Packet{Src: ipB, Dst: ipA, Proto: 17, SrcPort: 8080, DstPort: 5353, Payload: []byte("answer")})
	if p := decode(t, "udp reply", r); !r.Allowed() || p.Src != vip1 || p.SrcPort != 53 {
		t.Errorf("udp reply: allowed %v, from %s:%d; want vip1:53", r.Allowed(), p.Src, p.SrcPort)
	}

	// Policy judges the backend: vip2's only backend is C, which A may no
	// longer reach.
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 8080, 16)))
	toVip2 := tcpSyn(ipA, vip2, 80)
	toVip2.SrcPort = 39000 // a flow of its own (A:40000 may be tracked to C already)
	r = h.Run(datapath.Egress, toVip2)
	if r.Allowed() || r.Reason() != datapath.DropPolicyDefault || r.Event.Dst != ipC || r.Event.DstIdentity != idC {
		t.Errorf("A -> vip2 (backend C, denied): %+v, want a default-deny drop naming C", r.Event)
	}

	// No ready backend: dropped, and said why; a TCP SYN is answered with
	// a RST from the frontend, redirected back into A.
	r = h.Run(datapath.Egress, tcpSyn(ipA, vip3, 80))
	if r.Allowed() || r.Reason() != datapath.DropNoServiceBackend || r.Event.Dst != vip3 {
		t.Errorf("A -> vip3 (no backend): allowed %v, event %+v; want a 'no service backend' drop", r.Allowed(), r.Event)
	}
	if r.Action != dt.ActRedirect || len(r.Data) != 14+40 {
		t.Errorf("A -> vip3: action %d, %d bytes; want a 54-byte RST redirected", r.Action, len(r.Data))
	} else if p := decode(t, "RST", r); p.Src != vip3 || p.SrcPort != 80 || p.Dst != ipA || p.DstPort != 40000 ||
		p.TCPFlags != dt.RST|dt.ACK || binary.BigEndian.Uint32(r.Data[14+28:]) != 1 {
		t.Errorf("answer %s:%d -> %s:%d flags %#x ack %d, want RST|ACK from vip3:80 acknowledging the SYN",
			p.Src, p.SrcPort, p.Dst, p.DstPort, p.TCPFlags, binary.BigEndian.Uint32(r.Data[14+28:]))
	}
	// UDP to vip1:80 is no frontend: judged untranslated (and denied).
	if r := h.Run(datapath.Egress, dt.Packet{Src: ipA, Dst: vip1, Proto: 17, SrcPort: 5353, DstPort: 80}); r.Action != dt.ActShot ||
		r.Reason() != datapath.DropPolicyDefault || r.Event.Dst != vip1 {
		t.Errorf("udp to vip1:80 (no UDP frontend there): action %d event %+v, want a policy drop on vip1", r.Action, r.Event)
	}
	// Not a frontend (other port): untouched.
	r = h.Run(datapath.Egress, tcpSyn(ipA, vip1, 81))
	if p := decode(t, "vip1:81", r); p.Dst != vip1 || p.DstPort != 81 {
		t.Errorf("vip1:81 is no frontend but went to %s:%d", p.Dst, p.DstPort)
	}
}

// TestServiceTranslationSameNodeReply: a reply from a backend on the same
// node is redirected into the client with the frontend as its source.
func TestServiceTranslationSameNodeReply(t *testing.T) {
	dt.RequireBPF(t)
	h := lbHarness(t, 0, datapath.RuntimeConfig{Flags: datapath.ConfigLBTC})
	r := h.Run(datapath.Egress, tcpSyn(ipA, vip2, 80)) // to C
	if p := decode(t, "SYN", r); !r.Allowed() || p.Dst != ipC {
		t.Fatalf("SYN to vip2: allowed %v, to %s", r.Allowed(), p.Dst)
	}
	// C is now the endpoint behind this interface, A a local pod elsewhere
	// with known MACs: the reply is redirected into A, reverse-NATed.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.Endpoints.Upsert(ipC, datapath.EndpointInfo{ID: 13, IfIndex: 1, Identity: idC}))
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 99, Identity: idA, MAC: macA, NodeMAC: macGw}))
	reply := dt.Packet{Src: ipC, Dst: ipA, Proto: 6, SrcPort: 8080, DstPort: 40000, TCPFlags: dt.SYN | dt.ACK}
	r = h.Run(datapath.Egress, reply)
	if r.Action != dt.ActRedirect {
		t.Fatalf("reply from C: action %d (%s), want a redirect into A", r.Action, r.Reason())
	}
	p := decode(t, "redirected reply", r)
	if p.Src != vip2 || p.SrcPort != 80 || p.Dst != ipA || net.HardwareAddr(r.Data[0:6]).String() != macA.String() {
		t.Errorf("redirected reply %s:%d -> %s (dst MAC %s), want vip2:80 -> A at A's MAC", p.Src, p.SrcPort, p.Dst, net.HardwareAddr(r.Data[0:6]))
	}
}

// TestDeferredEgress: with ConfigServiceDefer (kube-proxy translates),
// from_container marks packets to the service CIDR instead of judging them,
// the hooks after the stack's DNAT judge the pod's egress on the backend,
// replies of such flows are not redirected past the stack, and the client
// accepts them from the ClusterIP.
func TestDeferredEgress(t *testing.T) {
	dt.RequireBPF(t)
	h := setup(t, datapath.EndpointEnforceEgress|datapath.EndpointEnforceIngress,
		datapath.RuntimeConfig{Flags: datapath.ConfigServiceDefer, ServiceCIDRs: []netip.Prefix{svcNet}})
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 8080, 16)))
	if rc, err := h.Config.Get(); err != nil || len(rc.ServiceCIDRs) != 1 || rc.ServiceCIDRs[0] != svcNet {
		t.Fatalf("runtime config service CIDRs %v, %v", rc.ServiceCIDRs, err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	deferred := datapath.MarkDeferred | datapath.MarkDeferredEnforced

	// A's SYN to a ClusterIP: not judged (A may not reach "world"), marked,
	// passed to the stack unchanged; kube-proxy's own mark bits survive.
	syn := tcpSyn(ipA, vip1, 80)
	r := h.RunMarked(datapath.Egress, syn, 0x4000)
	if !r.Allowed() || r.Mark != 0x4000|deferred || r.Event != nil {
		t.Fatalf("SYN to the ClusterIP: action %d mark %#x event %+v; want passed, mark %#x, no verdict", r.Action, r.Mark, r.Event, 0x4000|deferred)
	}
	if p := decode(t, "deferred SYN", r); p.Dst != vip1 || p.DstPort != 80 {
		t.Errorf("deferred packet changed: to %s:%d", p.Dst, p.DstPort)
	}
	if e, ok := ctEntry(t, h, func(e datapath.CTEntry) bool { return e.Tuple.Dst == vip1 }); !ok || e.Flags&datapath.CTViaStack == 0 {
		t.Errorf("client -> ClusterIP entry %+v (found %v), want via-stack", e, ok)
	}
	// Outside the service CIDR nothing changes: judged at once.
	if r := h.Run(datapath.Egress, tcpSyn(ipA, ipOut, 80)); r.Allowed() || r.Mark != 0 {
		t.Errorf("A -> world: allowed %v mark %#x, want judged and denied", r.Allowed(), r.Mark)
	}

	// After DNAT to B (a local pod behind this interface): A's egress is
	// judged on B and allowed; the mark is cleared.
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 99, Identity: idA, MAC: macA, NodeMAC: macGw,
		Flags: datapath.EndpointEnforceEgress | datapath.EndpointEnforceIngress}))
	must(h.Endpoints.Upsert(ipB, datapath.EndpointInfo{ID: epB, IfIndex: 1, Identity: idB}))
	toB := tcpSyn(ipA, ipB, 8080)
	r = h.RunMarked(datapath.Ingress, toB, deferred)
	if !r.Allowed() || r.Mark != 0 {
		t.Fatalf("DNATed SYN into B: action %d (%s) mark %#x; want allowed, mark cleared", r.Action, r.Reason(), r.Mark)
	}
	if e, ok := ctEntry(t, h, func(e datapath.CTEntry) bool {
		return e.Tuple.Dst == ipB && e.Tuple.Direction == datapath.Egress
	}); !ok || e.Flags&datapath.CTViaStack == 0 || e.DstIdentity != idB {
		t.Errorf("A's egress entry on B %+v (found %v): want via-stack, identity B", e, ok)
	}
	// B's reply is not redirected into A (the stack must reverse its NAT).
	r = h.Run(datapath.Egress, toB.Reply())
	if r.Action != dt.ActNext {
		t.Errorf("B's reply: action %d, want passed to the stack, not redirected", r.Action)
	}
	// The same flow unmarked would be redirected: a plain B -> A flow is.
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 99, Identity: idA, MAC: macA, NodeMAC: macGw}))
	if r := h.Run(datapath.Egress, tcpSyn(ipB, ipA, 9000)); r.Action != dt.ActRedirect {
		t.Errorf("plain B -> A: action %d, want redirected", r.Action)
	}

	// After DNAT to C, which A's egress does not allow: dropped, and the
	// event names A's egress verdict on C.
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 99, Identity: idA,
		Flags: datapath.EndpointEnforceEgress | datapath.EndpointEnforceIngress}))
	must(h.Endpoints.Upsert(ipC, datapath.EndpointInfo{ID: 13, IfIndex: 1, Identity: idC}))
	r = h.RunMarked(datapath.Ingress, tcpSyn(ipA, ipC, 8080), deferred)
	if r.Allowed() || r.Event == nil || r.Reason() != datapath.DropPolicyDefault || r.Event.EndpointID != epA ||
		r.Event.Direction != datapath.Egress || r.Event.DstIdentity != idC {
		t.Errorf("DNATed SYN into C: allowed %v event %+v; want A's egress default deny on C", r.Allowed(), r.Event)
	}

	// A source the stack rewrote (SNAT) cannot be judged: dropped when the
	// sender's egress was enforced, passed when it was not.
	snat := tcpSyn(ipHost, ipC, 8080)
	if r := h.RunMarked(datapath.Ingress, snat, deferred); r.Allowed() || r.Reason() != datapath.DropInvalidSource {
		t.Errorf("SNATed enforced packet: allowed %v reason %s, want an invalid-source drop", r.Allowed(), r.Reason())
	}
	if r := h.RunMarked(datapath.Ingress, snat, datapath.MarkDeferred); !r.Allowed() || r.Mark != 0 {
		t.Errorf("SNATed unenforced packet: allowed %v (%s) mark %#x, want passed", r.Allowed(), r.Reason(), r.Mark)
	}

	// The reply, reverse-NATed by the stack, reaches A from the ClusterIP:
	// A's ingress (which allows nothing) accepts it as a reply.
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 1, Identity: idA,
		Flags: datapath.EndpointEnforceEgress | datapath.EndpointEnforceIngress}))
	if r := h.Run(datapath.Ingress, syn.Reply()); !r.Allowed() {
		t.Errorf("reply from the ClusterIP into A: %s, want accepted", r.Reason())
	}
	if r := h.Run(datapath.Ingress, tcpSyn(vip2, ipA, 80)); r.Allowed() {
		t.Errorf("unsolicited packet from a ClusterIP into A accepted")
	}

	// A backend on the node itself: local_ingress (cgroup) judges it.
	// cgroup_skb verdicts: 1 deliver, 0 drop.
	local := h.LocalIngressProgram()
	toHost := tcpSyn(ipA, ipHost, 8080)
	must(h.Endpoints.Upsert(ipA, datapath.EndpointInfo{ID: epA, IfIndex: 99, Identity: idA,
		Flags: datapath.EndpointEnforceEgress | datapath.EndpointEnforceIngress}))
	if r := h.RunProg(local, toHost.Bytes(), 0); r.Action != 1 || r.Event != nil {
		t.Errorf("local_ingress, unmarked: verdict %d event %+v, want delivered untouched", r.Action, r.Event)
	}
	if r := h.RunProg(local, toHost.Bytes(), deferred); r.Action != 0 || r.Reason() != datapath.DropPolicyDefault ||
		r.Event.DstIdentity != datapath.IdentityHost {
		t.Errorf("local_ingress, deferred to the host (denied): verdict %d event %+v", r.Action, r.Event)
	}

	// Native routing: to_netdev judges deferred packets leaving the node
	// and passes everything else at once.
	_, _, toNetdev := h.OverlayPrograms()
	remote := tcpSyn(ipA, ipD, 8080)
	h.Peer(ipD.String()+"/32", idC)
	if r := h.RunProg(toNetdev, remote.Bytes(), 0); r.Action != dt.ActNext || r.Event != nil {
		t.Errorf("to_netdev, unmarked: action %d event %+v, want passed untouched", r.Action, r.Event)
	}
	if r := h.RunProg(toNetdev, remote.Bytes(), deferred); r.Allowed() || r.Reason() != datapath.DropPolicyDefault {
		t.Errorf("to_netdev, deferred to a denied backend: allowed %v reason %s", r.Allowed(), r.Reason())
	}
	h.Peer(ipD.String()+"/32", idB)
	if r := h.RunProg(toNetdev, remote.Bytes(), deferred); !r.Allowed() || r.Mark != 0 {
		t.Errorf("to_netdev, deferred to an allowed backend: action %d (%s) mark %#x", r.Action, r.Reason(), r.Mark)
	}
}

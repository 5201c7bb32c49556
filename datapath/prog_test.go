package datapath_test

import (
	"net/netip"
	"testing"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

const (
	idA      datapath.Identity = 1000
	idB      datapath.Identity = 1001
	idC      datapath.Identity = 1002
	epA      uint32            = 11
	tcp, udp                   = datapath.ProtoTCP, datapath.ProtoUDP
)

var (
	ipA    = netip.MustParseAddr("198.18.0.10")
	ipB    = netip.MustParseAddr("198.18.0.20")
	ipC    = netip.MustParseAddr("198.18.0.30")
	ipHost = netip.MustParseAddr("198.18.0.1")
	ipOut  = netip.MustParseAddr("198.19.255.1")
)

type kv struct {
	k datapath.PolicyKey
	e datapath.PolicyEntry
}

func allow(id datapath.Identity, dir datapath.Direction, proto uint8, port uint16, plen uint8) kv {
	return kv{datapath.PolicyKey{Identity: id, Direction: dir, Protocol: proto, Port: port, PortPrefixLen: plen},
		datapath.PolicyEntry{Cookie: uint32(id)<<16 | uint32(port)}}
}

func entries(kvs ...kv) datapath.PolicyMapEntries {
	m := datapath.PolicyMapEntries{}
	for _, x := range kvs {
		m[x.k] = x.e
	}
	return m
}

func deny(x kv) kv {
	x.e.Deny = true
	return x
}

// setup makes endpoint A (enforced as flags say) with peers B, C and host.
func setup(t *testing.T, flags datapath.EndpointFlags, rc datapath.RuntimeConfig) *dt.Harness {
	h := dt.New(t, datapath.Config{})
	if err := h.SetRuntimeConfig(rc); err != nil {
		t.Fatal(err)
	}
	h.Endpoint(ipA.String(), epA, idA, flags)
	h.Peer("198.18.0.20/32", idB)
	h.Peer("198.18.0.30/32", idC)
	h.Peer("198.18.0.1/32", datapath.IdentityHost)
	return h
}

func tcpSyn(src, dst netip.Addr, dport uint16) dt.Packet {
	return dt.Packet{Src: src, Dst: dst, Proto: 6, SrcPort: 40000, DstPort: dport, TCPFlags: dt.SYN}
}

func TestPolicyVerdicts(t *testing.T) {
	dt.RequireBPF(t)
	enforceBoth := datapath.EndpointEnforceIngress | datapath.EndpointEnforceEgress
	trace := datapath.RuntimeConfig{Flags: datapath.ConfigTraceNewFlows | datapath.ConfigAllowHostIngress}

	type flow struct {
		name   string
		dir    datapath.Direction
		pkt    dt.Packet
		allow  bool
		reason datapath.Reason
	}
	egress := func(dst netip.Addr, proto uint8, port uint16) dt.Packet {
		return dt.Packet{Src: ipA, Dst: dst, Proto: proto, SrcPort: 40000, DstPort: port, TCPFlags: dt.SYN}
	}
	ingress := func(src netip.Addr, proto uint8, port uint16) dt.Packet {
		return dt.Packet{Src: src, Dst: ipA, Proto: proto, SrcPort: 40000, DstPort: port, TCPFlags: dt.SYN}
	}
	ranges := datapath.PolicyMapEntries{}
	for _, pp := range datapath.PortRangePrefixes(8000, 8080) {
		x := allow(idB, datapath.Egress, tcp, pp.Port, pp.PrefixLen)
		ranges[x.k] = x.e
	}

	for _, tc := range []struct {
		name    string
		flags   datapath.EndpointFlags
		rc      datapath.RuntimeConfig
		entries datapath.PolicyMapEntries // nil: no policy map
		flows   []flow
	}{
		{
			name: "allow by identity and port", flags: enforceBoth, rc: trace,
			entries: entries(allow(idB, datapath.Egress, tcp, 80, 16)),
			flows: []flow{
				{"B:80/tcp allowed", datapath.Egress, egress(ipB, 6, 80), true, datapath.ReasonForwarded},
				{"B:81/tcp default deny", datapath.Egress, egress(ipB, 6, 81), false, datapath.DropPolicyDefault},
				{"B:80/udp default deny", datapath.Egress, egress(ipB, 17, 80), false, datapath.DropPolicyDefault},
				{"C:80/tcp default deny", datapath.Egress, egress(ipC, 6, 80), false, datapath.DropPolicyDefault},
				{"world:80 default deny", datapath.Egress, egress(ipOut, 6, 80), false, datapath.DropPolicyDefault},
			},
		},
		{
			name: "deny beats allow", flags: enforceBoth, rc: trace,
			entries: entries(
				allow(datapath.IdentityAny, datapath.Egress, datapath.ProtoAny, 0, 0),
				deny(allow(idB, datapath.Egress, tcp, 80, 16)),
				allow(idC, datapath.Egress, tcp, 443, 16),
				deny(allow(datapath.IdentityAny, datapath.Egress, tcp, 443, 16)),
			),
			flows: []flow{
				{"B:80 denied over any-allow", datapath.Egress, egress(ipB, 6, 80), false, datapath.DropPolicyDeny},
				{"B:81 allowed by any", datapath.Egress, egress(ipB, 6, 81), true, datapath.ReasonForwarded},
				{"C:443 any-deny beats exact allow", datapath.Egress, egress(ipC, 6, 443), false, datapath.DropPolicyDeny},
				{"world udp allowed", datapath.Egress, egress(ipOut, 17, 53), true, datapath.ReasonForwarded},
			},
		},
		{
			name: "port ranges", flags: enforceBoth, rc: trace, entries: ranges,
			flows: []flow{
				{"7999", datapath.Egress, egress(ipB, 6, 7999), false, datapath.DropPolicyDefault},
				{"8000", datapath.Egress, egress(ipB, 6, 8000), true, datapath.ReasonForwarded},
				{"8063", datapath.Egress, egress(ipB, 6, 8063), true, datapath.ReasonForwarded},
				{"8080", datapath.Egress, egress(ipB, 6, 8080), true, datapath.ReasonForwarded},
				{"8081", datapath.Egress, egress(ipB, 6, 8081), false, datapath.DropPolicyDefault},
			},
		},
		{
			name: "wildcard identity on ingress", flags: enforceBoth, rc: trace,
			entries: entries(allow(datapath.IdentityAny, datapath.Ingress, tcp, 80, 16)),
			flows: []flow{
				{"B->A:80", datapath.Ingress, ingress(ipB, 6, 80), true, datapath.ReasonForwarded},
				{"world->A:80", datapath.Ingress, ingress(ipOut, 6, 80), true, datapath.ReasonForwarded},
				{"C->A:22", datapath.Ingress, ingress(ipC, 6, 22), false, datapath.DropPolicyDefault},
			},
		},
		{
			name: "unenforced directions allow", flags: datapath.EndpointEnforceIngress, rc: trace,
			entries: entries(),
			flows: []flow{
				{"egress open", datapath.Egress, egress(ipB, 6, 5000), true, datapath.ReasonForwarded},
				{"ingress closed", datapath.Ingress, ingress(ipB, 6, 5000), false, datapath.DropPolicyDefault},
				{"host may probe", datapath.Ingress, ingress(ipHost, 6, 8080), true, datapath.ReasonForwarded},
			},
		},
		{
			name: "host ingress exception off", flags: enforceBoth, rc: datapath.RuntimeConfig{},
			entries: entries(),
			flows: []flow{
				{"host denied", datapath.Ingress, ingress(ipHost, 6, 8080), false, datapath.DropPolicyDefault},
			},
		},
		{
			name: "mode always enforces unselected endpoints", flags: 0,
			rc:      datapath.RuntimeConfig{Enforcement: datapath.EnforceAlways},
			entries: entries(allow(idB, datapath.Egress, udp, 53, 16)),
			flows: []flow{
				{"B:53/udp allowed", datapath.Egress, egress(ipB, 17, 53), true, datapath.ReasonForwarded},
				{"B:80 denied", datapath.Egress, egress(ipB, 6, 80), false, datapath.DropPolicyDefault},
				{"ingress denied", datapath.Ingress, ingress(ipB, 6, 80), false, datapath.DropPolicyDefault},
			},
		},
		{
			name: "mode never ignores policy", flags: enforceBoth,
			rc:      datapath.RuntimeConfig{Enforcement: datapath.EnforceNever},
			entries: entries(deny(allow(idB, datapath.Egress, datapath.ProtoAny, 0, 0))),
			flows: []flow{
				{"denied peer passes", datapath.Egress, egress(ipB, 6, 80), true, datapath.ReasonForwarded},
			},
		},
		{
			name: "enforced without a policy map fails closed", flags: datapath.EndpointEnforceEgress, rc: trace,
			entries: nil,
			flows: []flow{
				{"no map", datapath.Egress, egress(ipB, 6, 80), false, datapath.DropNoPolicyMap},
				{"ingress unenforced", datapath.Ingress, ingress(ipB, 6, 80), true, datapath.ReasonForwarded},
			},
		},
		{
			name: "icmp type rules", flags: enforceBoth, rc: trace,
			entries: entries(allow(idB, datapath.Egress, datapath.ProtoICMP, 8<<8, 8)),
			flows: []flow{
				{"echo request allowed", datapath.Egress, dt.Packet{Src: ipA, Dst: ipB, Proto: 1, ICMPType: 8, ICMPID: 7}, true, datapath.ReasonForwarded},
				{"timestamp denied", datapath.Egress, dt.Packet{Src: ipA, Dst: ipB, Proto: 1, ICMPType: 13, ICMPID: 7}, false, datapath.DropPolicyDefault},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := setup(t, tc.flags, tc.rc)
			if tc.entries != nil {
				h.SetPolicy(epA, tc.entries)
			}
			for _, f := range tc.flows {
				res := h.Run(f.dir, f.pkt)
				if res.Allowed() != f.allow {
					t.Errorf("%s: allowed=%v (action %d), want %v", f.name, res.Allowed(), res.Action, f.allow)
				}
				if !f.allow && res.Event == nil {
					t.Errorf("%s: drop reported no event", f.name)
				}
				if got := res.Reason(); got != f.reason {
					t.Errorf("%s: reason %q, want %q", f.name, got, f.reason)
				}
				// The pure-Go mirror must agree with the program.
				goReason, _ := datapath.EvaluatePolicy(tc.rc, tc.flags, tc.entries, f.dir,
					peerOf(h, f), f.pkt.Proto, policyPort(f.pkt))
				if goReason != f.reason {
					t.Errorf("%s: EvaluatePolicy says %q, the program %q", f.name, goReason, f.reason)
				}
			}
		})
	}
}

func peerOf(h *dt.Harness, f struct {
	name   string
	dir    datapath.Direction
	pkt    dt.Packet
	allow  bool
	reason datapath.Reason
}) datapath.Identity {
	ip := f.pkt.Dst
	if f.dir == datapath.Ingress {
		ip = f.pkt.Src
	}
	e, ok, err := h.IPCache.Lookup(ip)
	if err != nil || !ok {
		return datapath.IdentityWorld
	}
	return e.Identity
}

func policyPort(p dt.Packet) uint16 {
	if p.Proto == 1 {
		return uint16(p.ICMPType)<<8 | uint16(p.ICMPCode)
	}
	return p.DstPort
}

func TestConntrack(t *testing.T) {
	dt.RequireBPF(t)
	enforceBoth := datapath.EndpointEnforceIngress | datapath.EndpointEnforceEgress
	h := setup(t, enforceBoth, datapath.RuntimeConfig{Flags: datapath.ConfigTraceNewFlows})
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 80, 16), allow(idB, datapath.Egress, datapath.ProtoICMP, 8<<8, 8)))

	syn := tcpSyn(ipA, ipB, 80)
	if r := h.Run(datapath.Egress, syn); !r.Allowed() || r.Event == nil || r.Event.Type != datapath.EventPolicyVerdict {
		t.Fatalf("SYN: %+v, want allowed with a policy-verdict event", r)
	}
	// The reply enters A, whose ingress allows nothing: conntrack passes it,
	// and no event is emitted for an established flow.
	if r := h.Run(datapath.Ingress, syn.Reply()); !r.Allowed() || r.Event != nil {
		t.Errorf("SYN-ACK reply: %+v, want allowed without an event", r)
	}
	ack := syn
	ack.TCPFlags = dt.ACK
	if r := h.Run(datapath.Egress, ack); !r.Allowed() || r.Event != nil {
		t.Errorf("established ACK: %+v, want allowed, no event", r)
	}
	// An unsolicited packet from B to A is still judged.
	if r := h.Run(datapath.Ingress, tcpSyn(ipB, ipA, 80)); r.Allowed() {
		t.Errorf("unsolicited B->A: allowed")
	}
	// ICMP echo: the request is allowed by type, its reply by conntrack.
	ping := dt.Packet{Src: ipA, Dst: ipB, Proto: 1, ICMPType: 8, ICMPID: 99}
	if r := h.Run(datapath.Egress, ping); !r.Allowed() {
		t.Fatalf("echo request denied: %+v", r)
	}
	if r := h.Run(datapath.Ingress, ping.Reply()); !r.Allowed() {
		t.Errorf("echo reply denied: %+v", r)
	}
	// An ICMP error about the tracked TCP flow is related and passes.
	unreach := dt.Packet{Src: ipB, Dst: ipA, Proto: 1, ICMPType: 3, ICMPCode: 3, ICMPInner: &syn}
	if r := h.Run(datapath.Ingress, unreach); !r.Allowed() {
		t.Errorf("related ICMP error denied: %+v", r)
	}
	other := tcpSyn(ipA, ipC, 80)
	unrelated := dt.Packet{Src: ipC, Dst: ipA, Proto: 1, ICMPType: 3, ICMPCode: 3, ICMPInner: &other}
	if r := h.Run(datapath.Ingress, unrelated); r.Allowed() {
		t.Errorf("unrelated ICMP error allowed")
	}

	entries, err := h.Conntrack.List()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, e := range entries {
		if e.Tuple.Src == ipA && e.Tuple.Dst == ipB && e.Tuple.DstPort == 80 && e.Tuple.Direction == datapath.Egress {
			found = true
			if e.Packets != 3 || e.Flags&datapath.CTSeenReply == 0 || e.DstIdentity != idB || e.Expires <= 0 {
				t.Errorf("ct entry %+v: want 3 packets, seen reply, dst identity %d, live", e, idB)
			}
		}
	}
	if !found {
		t.Fatalf("no egress ct entry for A->B:80 in %+v", entries)
	}

	// A policy change that now denies the flow cuts it once its entries are
	// flushed: the next packet is judged as new.
	h.SetPolicy(epA, entries0())
	if n, err := h.Conntrack.FlushAddr(ipA); err != nil || n == 0 {
		t.Fatalf("flush: %d, %v", n, err)
	}
	if r := h.Run(datapath.Egress, ack); r.Allowed() || r.Reason() != datapath.DropPolicyDefault {
		t.Errorf("after policy change and flush: %+v, want default deny", r)
	}
}

func TestMapPressure(t *testing.T) {
	dt.RequireBPF(t)
	h := setup(t, datapath.EndpointEnforceEgress, datapath.RuntimeConfig{})
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 80, 16)))
	p, err := h.Pressure()
	if err != nil {
		t.Fatal(err)
	}
	// One endpoint; its own /32 plus B, C and the host in the ipcache; one
	// endpoint with a policy map.
	for name, want := range map[string]int{datapath.MapEndpoints: 1, datapath.MapIPCache: 4, datapath.MapPolicy: 1, datapath.MapCT4: 0} {
		if p[name][0] != want || p[name][1] == 0 {
			t.Errorf("%s: %d of %d entries, want %d", name, p[name][0], p[name][1], want)
		}
	}
}

func entries0() datapath.PolicyMapEntries { return datapath.PolicyMapEntries{} }

func TestMalformedAndSpecialPackets(t *testing.T) {
	dt.RequireBPF(t)
	h := setup(t, datapath.EndpointEnforceEgress, datapath.RuntimeConfig{})
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, udp, 53, 16)))

	good := dt.Packet{Src: ipA, Dst: ipB, Proto: 17, SrcPort: 5353, DstPort: 53}
	frame := good.Bytes()
	ipOpts := good
	ipOpts.IPOptions = 2
	firstFrag := good
	firstFrag.MoreFragments, firstFrag.IPID = true, 4242
	laterFrag := dt.Packet{Src: ipA, Dst: ipB, Proto: 17, FragOffset: 185, IPID: 4242, Payload: make([]byte, 64)}
	strayFrag := laterFrag
	strayFrag.IPID = 777
	badIHL := append([]byte(nil), frame...)
	badIHL[14] = 0x44
	// BPF_PROG_TEST_RUN refuses IPv4 frames shorter than Ethernet + 20 bytes,
	// so truncation is expressed through lengths that point past the data.
	ihlPastEnd := append([]byte(nil), frame[:14+20]...)
	ihlPastEnd[14] = 0x4f
	totLenPastEnd := append([]byte(nil), frame...)
	totLenPastEnd[16], totLenPastEnd[17] = 0x05, 0xdc
	totLenShort := append([]byte(nil), frame...)
	totLenShort[16], totLenShort[17] = 0, 16
	arp := append(append([]byte(nil), frame[:12]...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)
	ipv6 := append(append([]byte(nil), frame[:12]...), 0x86, 0xdd)
	ipv6 = append(ipv6, make([]byte, 48)...)
	spoofed := good
	spoofed.Src = ipC

	for _, tc := range []struct {
		name   string
		frame  []byte
		allow  bool
		reason datapath.Reason
	}{
		{"valid", frame, true, datapath.ReasonForwarded},
		{"ip options honoured", ipOpts.Bytes(), true, datapath.ReasonForwarded},
		{"ihl past the end", ihlPastEnd, false, datapath.DropMalformed},
		{"total length past the frame", totLenPastEnd, false, datapath.DropMalformed},
		{"total length below header", totLenShort, false, datapath.DropMalformed},
		{"ihl below 5", badIHL, false, datapath.DropMalformed},
		{"truncated udp header", frame[:14+20+2], false, datapath.DropMalformed},
		{"truncated tcp header", tcpSyn(ipA, ipB, 53).Bytes()[:14+20+10], false, datapath.DropMalformed},
		{"first fragment judged by ports", firstFrag.Bytes(), true, datapath.ReasonForwarded},
		{"later fragment inherits ports", laterFrag.Bytes(), true, datapath.ReasonForwarded},
		{"fragment without first", strayFrag.Bytes(), false, datapath.DropFragUnknown},
		{"arp passes", arp, true, datapath.ReasonForwarded},
		{"ipv6 fails closed", ipv6, false, datapath.DropUnsupportedL3},
		{"spoofed source", spoofed.Bytes(), false, datapath.DropInvalidSource},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.RunRaw(datapath.Egress, tc.frame)
			if r.Allowed() != tc.allow || r.Reason() != tc.reason {
				t.Errorf("allowed=%v reason=%q, want %v %q", r.Allowed(), r.Reason(), tc.allow, tc.reason)
			}
		})
	}
	// Unknown destination on the way in.
	if r := h.Run(datapath.Ingress, dt.Packet{Src: ipB, Dst: ipC, Proto: 17, SrcPort: 1, DstPort: 2}); r.Allowed() || r.Reason() != datapath.DropUnknownEndpoint {
		t.Errorf("unknown destination endpoint: %+v", r)
	}

	samples, err := h.Metrics.Read()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[datapath.Reason]uint64{}
	for _, s := range samples {
		counts[s.Reason] += s.Packets
	}
	if counts[datapath.DropMalformed] != 6 || counts[datapath.ReasonForwarded] != 4 {
		t.Errorf("metrics %v: want 6 malformed, 4 forwarded (ARP passes uncounted)", counts)
	}
}

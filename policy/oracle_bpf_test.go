package policy

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// bpfEvaluator judges flows with the real tc programs through
// BPF_PROG_TEST_RUN: each evaluation installs the endpoint's compiled entries
// and flags in real maps (writing only what changed) and runs a new flow's
// first packet through from_container (egress) or to_container (ingress).
type bpfEvaluator struct {
	t       testing.TB
	h       *dt.Harness
	slots   [2]EndpointPolicy // what is installed for endpoint 1 (egress) and 2 (ingress)
	loaded  [2]bool
	peerIPs map[datapath.Identity]netip.Addr
	nextIP  uint32
	sport   uint16
}

var bpfEndpointIPs = [2]netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")}

func newBPFEvaluator(t testing.TB) *bpfEvaluator {
	h := dt.New(t, datapath.Config{CTMax: 1 << 20})
	if err := h.SetRuntimeConfig(datapath.RuntimeConfig{}); err != nil {
		t.Fatal(err)
	}
	return &bpfEvaluator{t: t, h: h, peerIPs: map[datapath.Identity]netip.Addr{}, sport: 1024}
}

// peerIP returns an address that resolves to id in the ipcache; world is
// any address the ipcache does not know.
func (b *bpfEvaluator) peerIP(id datapath.Identity) netip.Addr {
	if id == datapath.IdentityWorld {
		return netip.MustParseAddr("198.19.255.254")
	}
	if ip, ok := b.peerIPs[id]; ok {
		return ip
	}
	b.nextIP++
	ip := netip.AddrFrom4([4]byte{198, 18, 128 + byte(b.nextIP>>8), byte(b.nextIP)})
	if err := b.h.IPCache.Upsert(netip.PrefixFrom(ip, 32), datapath.IPCacheEntry{Identity: id}); err != nil {
		b.t.Fatal(err)
	}
	b.peerIPs[id] = ip
	return ip
}

func (b *bpfEvaluator) install(slot int, ep EndpointPolicy) {
	if b.loaded[slot] && b.slots[slot].Flags == ep.Flags && maps.Equal(b.slots[slot].Entries, ep.Entries) {
		return
	}
	id := uint32(slot + 1)
	entries := ep.Entries
	if entries == nil {
		entries = datapath.PolicyMapEntries{}
	}
	if _, err := b.h.Policy.Sync(id, entries); err != nil {
		b.t.Fatal(err)
	}
	if err := b.h.Endpoints.Upsert(bpfEndpointIPs[slot], datapath.EndpointInfo{ID: id, IfIndex: 1, Identity: 100, Flags: ep.Flags}); err != nil {
		b.t.Fatal(err)
	}
	b.slots[slot], b.loaded[slot] = EndpointPolicy{Flags: ep.Flags, Entries: maps.Clone(ep.Entries)}, true
}

func (b *bpfEvaluator) eval(ep EndpointPolicy, dir datapath.Direction, peer datapath.Identity, proto uint8, port uint16) datapath.Reason {
	slot := 0
	if dir == datapath.Ingress {
		slot = 1
	}
	b.install(slot, ep)
	// A fresh source port makes every evaluation a new flow: conntrack
	// never answers for policy here.
	b.sport++
	if b.sport == 0 {
		// Ports wrapped: forget the flows of earlier evaluations.
		if _, err := b.h.Conntrack.Flush(nil); err != nil {
			b.t.Fatal(err)
		}
		b.sport = 1024
	}
	pkt := dt.Packet{Src: bpfEndpointIPs[slot], Dst: b.peerIP(peer), Proto: proto, SrcPort: b.sport, DstPort: port, TCPFlags: dt.SYN}
	if dir == datapath.Ingress {
		pkt.Src, pkt.Dst = pkt.Dst, pkt.Src
	}
	from, to := b.h.Programs()
	prog := from
	if dir == datapath.Ingress {
		prog = to
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt.Bytes()})
	if err != nil {
		b.t.Fatal(err)
	}
	if int32(ret) == dt.ActNext {
		return datapath.ReasonForwarded
	}
	return datapath.DropPolicyDefault
}

// TestCyclonusOracleBPF runs every cyclonus case through the real BPF
// programs: each (source, destination, port, protocol) must get the oracle's
// verdict from the kernel, not just from the Go mirror.
func TestCyclonusOracleBPF(t *testing.T) {
	dt.RequireBPF(t)
	b := newBPFEvaluator(t)
	runOracle(t, b.eval, 1)
}

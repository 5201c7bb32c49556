package datapath_test

import (
	"testing"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// BenchmarkFromContainer measures from_container per packet with
// BPF_PROG_TEST_RUN (prog.Benchmark): an established flow (a conntrack hit)
// and a denied one (policy lookups and a drop event every time), with the
// service flags off; then the established flow with tc service translation
// on (one more lookup, in sigil_lb4_svc) and an established flow to a
// service frontend (translated every packet). Compare runs on the same
// machine only; no test asserts on timing.
func BenchmarkFromContainer(b *testing.B) {
	dt.RequireBPF(b)
	h := dt.New(b, datapath.Config{})
	if err := h.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress}); err != nil {
		b.Fatal(err)
	}
	h.Endpoint(ipA.String(), epA, idA, datapath.EndpointEnforceEgress)
	h.Peer("198.18.0.20/32", idB)
	h.SetPolicy(epA, entries(allow(idB, datapath.Egress, tcp, 80, 16), allow(idB, datapath.Egress, tcp, 8080, 16)))
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: h.PinDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer lb.Close()
	if err := lb.UpsertService(datapath.Service{Frontend: datapath.Frontend{Address: vip1, Port: 80, Proto: tcp},
		Backends: []datapath.Backend{{Address: ipB, Port: 8080}}}); err != nil {
		b.Fatal(err)
	}
	from, _ := h.Programs()
	for _, bc := range []struct {
		name  string
		flags uint32
		pkt   dt.Packet
	}{
		{"established", 0, dt.Packet{Src: ipA, Dst: ipB, Proto: 6, SrcPort: 40000, DstPort: 80, TCPFlags: dt.ACK}},
		{"denied", 0, dt.Packet{Src: ipA, Dst: ipB, Proto: 6, SrcPort: 40001, DstPort: 81, TCPFlags: dt.SYN}},
		{"established/lb-on", datapath.ConfigLBTC, dt.Packet{Src: ipA, Dst: ipB, Proto: 6, SrcPort: 40000, DstPort: 80, TCPFlags: dt.ACK}},
		{"service-established", datapath.ConfigLBTC, dt.Packet{Src: ipA, Dst: vip1, Proto: 6, SrcPort: 40002, DstPort: 80, TCPFlags: dt.ACK}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if err := h.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | bc.flags}); err != nil {
				b.Fatal(err)
			}
			frame := bc.pkt.Bytes()
			if _, _, err := from.Benchmark(frame, 1, nil); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			_, per, err := from.Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
		})
	}
}

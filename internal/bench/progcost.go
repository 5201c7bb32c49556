package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/datapath/datapathtest"
)

// CostRow is the per-packet cost of the to_container program with pod2's
// ingress policy at one size (0: no policy selects pod2).
type CostRow struct {
	Size int
	// Established is a packet of a tracked flow: parse, endpoint lookup,
	// conntrack hit. Mean over a BPF_PROG_TEST_RUN repeat.
	Established time.Duration
	// NewFlow is the first packet of a flow: conntrack miss, ipcache and
	// policy lookups, conntrack create and the flow event.
	NewFlow time.Duration
	// PolicyPart is NewFlow minus NewFlow with no policy, taken within
	// each round: what the policy lookups add.
	PolicyPart time.Duration
	// Single-run medians the NewFlow estimate is derived from (diagnostics).
	NewSingle, EstSingle time.Duration
	Samples, Rounds      int
}

// CostOptions sets how many samples the per-packet measurement takes.
type CostOptions struct {
	NewFlows int // distinct new-flow packets per size and round, each run once
	Repeat   int // repeat count of the established-packet run per size and round
	Rounds   int // rounds over all sizes; each figure is the median over rounds
}

// DefaultCostOptions take about a second per policy size.
var DefaultCostOptions = CostOptions{NewFlows: 10000, Repeat: 200000, Rounds: 5}

// TC verdicts of the programs, as BPF_PROG_TEST_RUN returns them.
const (
	retPass = uint32(0xffffffff) // TC_ACT_UNSPEC
	retDrop = uint32(2)          // TC_ACT_SHOT
)

var (
	costPod1    = netip.MustParseAddr("198.18.21.11")
	costPod2    = netip.MustParseAddr("198.18.21.12")
	costGateway = netip.MustParseAddr("198.18.21.1")
)

// MeasureProgCost loads a second, unattached copy of the datapath in its own
// pin directory, configured as the traffic node is, and times to_container
// with BPF_PROG_TEST_RUN at each policy size (0 first, for no policy).
func MeasureProgCost(ctx context.Context, sizes []int, rc datapath.RuntimeConfig, o CostOptions, cl *Cleanup) ([]CostRow, error) {
	b := make([]byte, 4)
	rand.Read(b)
	pinDir := filepath.Join(datapathtest.BPFFSRoot, "sigil-bench-cost-"+hex.EncodeToString(b))
	cl.Add("unpin "+pinDir, func() error { return datapath.Unpin(pinDir) })
	// Explicit TCX skips the attach-mode probe; nothing is attached here.
	dp, err := datapath.Load(datapath.Config{PinDir: pinDir, AttachMode: datapath.AttachTCX})
	if err != nil {
		return nil, err
	}
	defer dp.Close()
	ev, err := dp.NewEventReader()
	if err != nil {
		return nil, err
	}
	defer ev.Close()

	const ep1, ep2 = datapath.Identity(1001), datapath.Identity(1002)
	maxSize := slices.Max(append([]int{1}, sizes...))
	// BPF_PROG_TEST_RUN's skb comes from loopback: pod2's endpoint is on
	// ifindex 1 here.
	if err := installNode(dp, rc, costGateway, []nodePod{{IP: costPod1, EpID: 1, IfIndex: 0, Identity: ep1}, {IP: costPod2, EpID: 2, IfIndex: 1, Identity: ep2}}, maxSize); err != nil {
		return nil, err
	}
	_, to := dp.Programs()

	// The benchmark's RR packet (1-byte payload) and CRR SYNs.
	est := datapathtest.Packet{Src: costPod1, Dst: costPod2, Proto: 6, SrcPort: 40000, DstPort: PortRR,
		TCPFlags: datapathtest.ACK | datapathtest.PSH, Payload: []byte{'x'}}.Bytes()
	news := make([][]byte, o.NewFlows)
	for i := range news {
		news[i] = datapathtest.Packet{Src: costPod1, Dst: costPod2, Proto: 6, SrcPort: uint16(10000 + i),
			DstPort: PortCRRFirst + uint16(i%CRRPorts), TCPFlags: datapathtest.SYN}.Bytes()
	}
	denied := datapathtest.Packet{Src: costPod1, Dst: costPod2, Proto: 6, SrcPort: 40001, DstPort: PortClosed,
		TCPFlags: datapathtest.SYN}.Bytes()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	all := append([]int{0}, sizes...)
	for _, size := range all {
		if err := setPolicy(dp, nodePod{IP: costPod2, EpID: 2, IfIndex: 1, Identity: ep2}, size, ep1); err != nil {
			return nil, err
		}
		if _, err := dp.Conntrack.Flush(nil); err != nil {
			return nil, err
		}
		// The policy is real: a port it does not allow is dropped.
		if ret, _, err := to.Benchmark(denied, 1, nil); err != nil {
			return nil, err
		} else if want := map[bool]uint32{true: retDrop, false: retPass}[size > 0]; ret != want {
			return nil, fmt.Errorf("policy of %d entries: packet to port %d got verdict %d, want %d", size, PortClosed, int32(ret), int32(want))
		}
	}
	// One pass to warm up: conntrack entries are then always recycled ones
	// (after the flush before every pass), whose memory is scattered,
	// instead of fresh ones in allocation order for the first size only.
	if _, err := singleRuns(to, news); err != nil {
		return nil, err
	}
	drainEvents(ev)

	// Rounds go over every size in turn, so slow drift on a busy machine
	// touches all sizes alike; each figure is the median over rounds.
	type sample struct{ est, newSingle, estSingle, newFlow time.Duration }
	samples := make([][]sample, len(all))
	for r := 0; r < o.Rounds; r++ {
		for i, size := range all {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := setPolicy(dp, nodePod{IP: costPod2, EpID: 2, IfIndex: 1, Identity: ep2}, size, ep1); err != nil {
				return nil, err
			}
			if _, err := dp.Conntrack.Flush(nil); err != nil {
				return nil, err
			}
			newT, err := singleRuns(to, news)
			if err != nil {
				return nil, fmt.Errorf("new flows, policy of %d: %w", size, err)
			}
			estT, err := singleRuns(to, news) // the same packets, now tracked
			if err != nil {
				return nil, fmt.Errorf("tracked flows, policy of %d: %w", size, err)
			}
			if _, _, err := to.Benchmark(est, 1, nil); err != nil { // track it
				return nil, err
			}
			ret, d, err := to.Benchmark(est, o.Repeat, nil)
			if err != nil {
				return nil, err
			}
			if ret != retPass {
				return nil, fmt.Errorf("policy of %d: established packet got verdict %d", size, int32(ret))
			}
			sm := sample{est: d, newSingle: median(newT), estSingle: median(estT)}
			// Single runs carry the test-run timer's own overhead; it
			// is the same for both passes, so their difference is what
			// a new flow costs over a tracked packet.
			sm.newFlow = sm.est + sm.newSingle - sm.estSingle
			samples[i] = append(samples[i], sm)
			drainEvents(ev)
		}
	}
	var rows []CostRow
	for i, size := range all {
		pick := func(f func(sample) time.Duration) time.Duration {
			var v []time.Duration
			for _, sm := range samples[i] {
				v = append(v, f(sm))
			}
			return median(v)
		}
		row := CostRow{Size: size, Samples: len(news), Rounds: o.Rounds,
			Established: pick(func(s sample) time.Duration { return s.est }),
			NewFlow:     pick(func(s sample) time.Duration { return s.newFlow }),
			NewSingle:   pick(func(s sample) time.Duration { return s.newSingle }),
			EstSingle:   pick(func(s sample) time.Duration { return s.estSingle }),
		}
		if size > 0 {
			var parts []time.Duration
			for r := range samples[i] {
				parts = append(parts, samples[i][r].newFlow-samples[0][r].newFlow)
			}
			row.PolicyPart = median(parts)
		}
		rows = append(rows, row)
	}
	st, err := dp.Metrics.Events()
	if err == nil && st.Lost > 0 {
		return nil, fmt.Errorf("%d flow events lost during the per-packet measurement; its figures would be off", st.Lost)
	}
	return rows, nil
}

func singleRuns(p *ebpf.Program, pkts [][]byte) ([]time.Duration, error) {
	out := make([]time.Duration, 0, len(pkts))
	for _, pkt := range pkts {
		ret, d, err := p.Benchmark(pkt, 1, nil)
		if err != nil {
			return nil, err
		}
		if ret != retPass {
			return nil, fmt.Errorf("allowed packet got verdict %d", int32(ret))
		}
		out = append(out, d)
	}
	return out, nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func drainEvents(ev *datapath.EventReader) int {
	n := 0
	for {
		ev.SetDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := ev.Read(); err != nil {
			return n
		}
		n++
	}
}

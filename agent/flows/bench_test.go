package flows_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// benchResolver is the agent's FlowResolver over a manager with n
// endpoints on an in-memory datapath, as enrichment runs in the agent.
func benchResolver(tb testing.TB, n int) flows.Resolver {
	tb.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := agent.NewManager(agent.Config{StateDir: tb.TempDir(), PodCIDR: netip.MustParsePrefix("198.18.70.0/24"),
		Datapath: agent.NewMemDatapath(), LinkExists: func(string, int) bool { return true }, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	if err := m.Restore(); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := m.Create(apitypes.EndpointRequest{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0",
			HostIfName: fmt.Sprintf("lxc%d", i), HostIfIndex: 100 + i, HostMAC: "02:00:00:00:00:01",
			MAC: fmt.Sprintf("02:00:00:00:01:%02x", i), PodNamespace: "bench", PodName: fmt.Sprintf("pod-%d", i),
			Labels: map[string]string{"app": fmt.Sprintf("app%d", i%10)}}); err != nil {
			tb.Fatal(err)
		}
	}
	return agent.NewFlowResolver(m, func() agent.PolicyView { return nil })
}

// drain counts what a follow subscriber receives, as a client would.
func drain(sub *flows.Subscription, got *atomic.Uint64) {
	for rec := range sub.C {
		if rec.Flow != nil {
			got.Add(1)
		}
	}
}

// BenchmarkPipeline measures the flow pipeline. ingest: enrichment, the
// ring and fan-out to one subscriber, fed in process. ringbuf (root): the
// whole path from the BPF ring buffer, events produced by running the
// datapath program on a dropped packet with BPF_PROG_TEST_RUN; it reports
// the consumer's CPU per 10k events.
func BenchmarkPipeline(b *testing.B) {
	b.Run("ingest", func(b *testing.B) {
		p := flows.New(flows.Config{Resolver: benchResolver(b, 50)})
		_, sub := p.Subscribe(flows.Query{Follow: true})
		var got atomic.Uint64
		go drain(sub, &got)
		ev := datapath.FlowEvent{Time: time.Now(), EndpointID: 2, SrcIdentity: 256, DstIdentity: 257,
			Src: netip.MustParseAddr("198.18.70.2"), Dst: netip.MustParseAddr("198.18.70.3"), SrcPort: 40000, DstPort: 5432,
			Proto: datapath.ProtoTCP, Type: datapath.EventDrop, Verdict: datapath.VerdictDropped, Reason: datapath.DropPolicyDefault}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			ev.SrcPort = uint16(i)
			p.Ingest(ev)
		}
		b.StopTimer()
		sub.Close()
	})
	b.Run("ringbuf", func(b *testing.B) {
		r := newRingBench(b)
		b.ResetTimer()
		res := r.run(b.N, 0)
		b.StopTimer()
		if res.lost > 0 {
			b.Logf("lost %d of %d", res.lost, b.N)
		}
		b.ReportMetric(float64(res.consumerCPU.Microseconds())/float64(max(res.seen, 1))*10000/1000, "ms-cpu/10k-events")
	})
}

type ringBench struct {
	tb     testing.TB
	h      *dt.Harness
	prog   *ebpf.Program
	frame  []byte
	pipe   *flows.Pipeline
	got    atomic.Uint64
	cancel func()
}

// newRingBench loads the datapath with an endpoint whose egress is enforced
// without a policy map, so every packet from it is dropped with an event
// (drops are never rate-limited), and runs a pipeline on the ring buffer
// with one follow subscriber.
func newRingBench(tb testing.TB) *ringBench {
	h := dt.New(tb, datapath.Config{EventsBytes: 4 << 20}) // the default ring size
	if err := h.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigTraceNewFlows}); err != nil {
		tb.Fatal(err)
	}
	src := h.Endpoint("198.18.70.2", 1, 256, datapath.EndpointEnforceEgress)
	h.Endpoint("198.18.70.3", 2, 257, 0)
	from, _ := h.Programs()
	r := &ringBench{tb: tb, h: h, prog: from, frame: dt.Packet{Src: src, Dst: netip.MustParseAddr("198.18.70.3"),
		Proto: datapath.ProtoTCP, SrcPort: 40000, DstPort: 5432, TCPFlags: dt.SYN}.Bytes()}
	rd, err := h.NewEventReader()
	if err != nil {
		tb.Fatal(err)
	}
	r.pipe = flows.New(flows.Config{Resolver: benchResolver(tb, 50)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.pipe.Run(ctx, rd); close(done) }()
	_, sub := r.pipe.Subscribe(flows.Query{Follow: true})
	go drain(sub, &r.got)
	r.cancel = func() { cancel(); <-done; sub.Close() }
	tb.Cleanup(r.cancel)
	return r
}

type ringResult struct {
	// sent events were produced; seen reached the pipeline (read, decoded,
	// enriched, buffered, offered to the subscriber); got reached the
	// subscriber; lost the datapath could not write (ring buffer full).
	sent, seen, got, lost uint64
	// elapsed runs from the first event produced to the last one seen.
	elapsed     time.Duration
	consumerCPU time.Duration
}

func cpuTime(who int) time.Duration {
	var ru unix.Rusage
	unix.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run produces n events, at rate per second (0: as fast as the program
// runs), waits for the pipeline to catch up, and returns what arrived,
// what the datapath lost, and the CPU the process spent outside the
// producer's thread.
func (r *ringBench) run(n int, rate int) ringResult {
	ev0, _ := r.h.Metrics.Events()
	got0, seen0 := r.got.Load(), r.pipe.Stats().Seen
	proc0 := cpuTime(unix.RUSAGE_SELF)
	var prodCPU time.Duration
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t0 := cpuTime(unix.RUSAGE_THREAD)
		sent := 0
		for sent < n {
			batch := 1000
			if rate > 0 {
				want := int(float64(rate) * time.Since(start).Seconds())
				if want <= sent {
					time.Sleep(200 * time.Microsecond)
					continue
				}
				batch = min(want-sent, 1000)
			}
			batch = min(batch, n-sent)
			if _, _, err := r.prog.Benchmark(r.frame, batch, nil); err != nil {
				r.tb.Error(err)
				return
			}
			sent += batch
		}
		prodCPU = cpuTime(unix.RUSAGE_THREAD) - t0
	}()
	<-done
	// Wait until every event the datapath wrote has reached the pipeline.
	deadline := time.Now().Add(10 * time.Second)
	var ev datapath.EventStats
	last, lastSeen := time.Now(), r.pipe.Stats().Seen
	for time.Now().Before(deadline) {
		ev, _ = r.h.Metrics.Events()
		seen := r.pipe.Stats().Seen
		if seen != lastSeen {
			last, lastSeen = time.Now(), seen
		}
		if seen-seen0+(ev.Lost-ev0.Lost) >= uint64(n) || time.Since(last) > 500*time.Millisecond {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the subscriber drain
	return ringResult{sent: uint64(n), seen: lastSeen - seen0, got: r.got.Load() - got0, lost: ev.Lost - ev0.Lost,
		elapsed: last.Sub(start), consumerCPU: cpuTime(unix.RUSAGE_SELF) - proc0 - prodCPU}
}

// TestPipelineThroughputReport is the benchmark helper behind the figures
// in docs/performance.md: a sweep of event rates through the real ring
// buffer, each for a second, with the loss and the consumer's CPU per 10k
// events at each. It runs only with SIGIL_BENCH=1 (and root).
func TestPipelineThroughputReport(t *testing.T) {
	if os.Getenv("SIGIL_BENCH") == "" {
		t.Skip("set SIGIL_BENCH=1 to run the flow pipeline throughput sweep")
	}
	r := newRingBench(t)
	r.run(20000, 0) // warm up
	t.Logf("%-12s %-9s %-9s %-9s %-8s %-10s %s", "offered/s", "seen", "to client", "lost", "loss", "seen/s", "consumer CPU per 10k events")
	for _, rate := range []int{50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000, 0} {
		n := rate
		if rate == 0 {
			n = 2_000_000
		}
		res := r.run(n, rate)
		offered := fmt.Sprint(rate)
		if rate == 0 {
			offered = fmt.Sprintf("max (%.0f)", float64(n)/res.elapsed.Seconds())
		}
		t.Logf("%-12s %-9d %-9d %-9d %-8s %-10.0f %s", offered, res.seen, res.got, res.lost,
			fmt.Sprintf("%.2f%%", 100*float64(res.lost)/float64(res.sent)), float64(res.seen)/res.elapsed.Seconds(),
			(res.consumerCPU * 10000 / time.Duration(max(res.seen, 1))).Round(time.Microsecond))
	}
}

// BenchmarkDatapathEvents is the per-packet cost of the datapath program
// (BPF_PROG_TEST_RUN, kernel-measured) for a new allowed flow with
// policy-verdict events on and off, and for a drop (always reported).
func BenchmarkDatapathEvents(b *testing.B) {
	for _, c := range []struct {
		name  string
		flags uint32
		drop  bool
	}{
		{"new-flow/events-on", datapath.ConfigTraceNewFlows, false},
		{"new-flow/events-off", 0, false},
		{"drop/event", 0, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := dt.New(b, datapath.Config{EventsBytes: 4 << 20})
			if err := h.SetRuntimeConfig(datapath.RuntimeConfig{Flags: c.flags}); err != nil {
				b.Fatal(err)
			}
			var flags datapath.EndpointFlags
			if c.drop {
				flags = datapath.EndpointEnforceEgress
			}
			src := h.Endpoint("198.18.71.2", 1, 256, flags)
			h.Endpoint("198.18.71.3", 2, 257, 0)
			rd, err := h.NewEventReader()
			if err != nil {
				b.Fatal(err)
			}
			defer rd.Close()
			go func() { // keep the ring from filling
				for {
					if _, err := rd.Read(); err == datapath.ErrClosed {
						return
					}
				}
			}()
			from, _ := h.Programs()
			frames := make([][]byte, 0, 1<<16)
			for i := 0; i < 1<<16; i++ {
				frames = append(frames, dt.Packet{Src: src, Dst: netip.MustParseAddr("198.18.71.3"), Proto: datapath.ProtoTCP,
					SrcPort: uint16(i), DstPort: 8080 + uint16(i>>16), TCPFlags: dt.SYN}.Bytes())
			}
			var total time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i > 0 && i%len(frames) == 0 && !c.drop {
					b.StopTimer()
					h.Conntrack.Flush(nil) // the next round's packets are new flows again
					b.StartTimer()
				}
				_, d, err := from.Benchmark(frames[i%len(frames)], 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				total += d
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt-in-kernel")
		})
	}
}

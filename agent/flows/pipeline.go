// Package flows is the agent's flow pipeline: it reads the datapath's event
// ring buffer continuously, decodes and enriches each event (endpoint, pod,
// labels, identities, and the policy rule that decided), keeps the last N
// flows in memory and streams them, filtered, to subscribers.
//
// Events that do not reach a subscriber are counted and reported in the
// stream as lost-event records, never silently hidden: events the datapath
// could not write (ring buffer full) or rate-limited, events the agent could
// not decode, and events a slow subscriber did not keep up with.
package flows

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
)

// DefaultCapacity is the default number of flows kept in memory.
const DefaultCapacity = 4096

// subscriberBuffer is how many records a subscriber may lag behind before
// the pipeline drops records for it (and reports them as lost).
const subscriberBuffer = 4096

// Source yields datapath events; *datapath.EventReader is one.
type Source interface {
	// Read blocks for the next event. It returns datapath.ErrClosed after
	// Close; other errors concern one event.
	Read() (datapath.FlowEvent, error)
	Close() error
}

// LostCounter returns the datapath's counters of events user space did not
// get; (*datapath.Metrics).Events is one.
type LostCounter func() (datapath.EventStats, error)

// Config configures a Pipeline.
type Config struct {
	// Capacity is the number of flows kept for replay (DefaultCapacity if 0).
	Capacity int
	// Resolver enriches events; nil leaves flows with what the event says.
	Resolver Resolver
	// Lost, if set, is polled every LostInterval (default 1s); increases are
	// reported in the stream.
	Lost         LostCounter
	LostInterval time.Duration
	Logger       *slog.Logger
}

type entry struct {
	rec apitypes.FlowRecord
	raw datapath.FlowEvent
}

// Pipeline decodes, enriches, buffers and fans out flow events. Ingest is
// called from one goroutine (Run); Subscribe from any.
type Pipeline struct {
	cfg Config
	log *slog.Logger
	enr enricher

	mu    sync.Mutex
	ring  []entry
	head  int // next write position
	count int
	subs  map[*Subscription]struct{}

	seen    atomic.Uint64
	lost    [4]atomic.Uint64 // by lostIndex
	verdict [2][2]atomic.Uint64
	reasons [256]atomic.Uint64
	lastDP  datapath.EventStats
	haveDP  bool
}

var lostSources = [...]string{apitypes.LostRingBufferFull, apitypes.LostRateLimited, apitypes.LostDecode, apitypes.LostSlowClient}

const (
	lostRingFull = iota
	lostRateLimited
	lostDecode
	lostSlowClient
)

// New returns a pipeline; start it with Run.
func New(cfg Config) *Pipeline {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.LostInterval <= 0 {
		cfg.LostInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Pipeline{cfg: cfg, log: cfg.Logger, ring: make([]entry, cfg.Capacity), subs: map[*Subscription]struct{}{}}
	p.enr = enricher{r: cfg.Resolver}
	return p
}

// Run reads src until ctx is done or src is closed, and polls the lost
// counters. It closes src before returning.
func (p *Pipeline) Run(ctx context.Context, src Source) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		src.Close()
	}()
	if p.cfg.Lost != nil {
		p.PollLost() // the baseline: what was lost before the agent started is not reported
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(p.cfg.LostInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					p.PollLost()
				}
			}
		}()
	}
	defer wg.Wait()
	errs := 0
	for {
		ev, err := src.Read()
		if err != nil {
			if errors.Is(err, datapath.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			p.ReportLost(apitypes.LostDecode, 1)
			if errs++; errs%1000 == 1 {
				p.log.Warn("flow event read failed", "err", err, "failures", errs)
			}
			continue
		}
		p.Ingest(ev)
	}
}

// PollLost reads the datapath's lost counters and reports what increased
// since the last poll. The first poll only sets the baseline.
func (p *Pipeline) PollLost() {
	st, err := p.cfg.Lost()
	if err != nil {
		p.log.Warn("read flow event counters", "err", err)
		return
	}
	p.mu.Lock()
	prev, have := p.lastDP, p.haveDP
	p.lastDP, p.haveDP = st, true
	p.mu.Unlock()
	if !have {
		return
	}
	if st.Lost > prev.Lost {
		p.ReportLost(apitypes.LostRingBufferFull, st.Lost-prev.Lost)
	}
	if st.RateLimited > prev.RateLimited {
		p.ReportLost(apitypes.LostRateLimited, st.RateLimited-prev.RateLimited)
	}
}

func lostIndex(source string) int {
	for i, s := range lostSources {
		if s == source {
			return i
		}
	}
	return lostDecode
}

// ReportLost records n lost events from source: counted, kept in the ring
// and sent to every subscriber.
func (p *Pipeline) ReportLost(source string, n uint64) {
	p.lost[lostIndex(source)].Add(n)
	rec := apitypes.FlowRecord{Lost: &apitypes.LostEvents{Time: time.Now(), Source: source, Count: n}}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.push(entry{rec: rec})
	for s := range p.subs {
		s.send(rec, nil)
	}
}

// Ingest enriches one event, stores it and sends it to the subscribers
// whose filters match.
func (p *Pipeline) Ingest(ev datapath.FlowEvent) {
	fl := p.enr.enrich(&ev)
	p.seen.Add(1)
	if ev.Direction <= datapath.Egress {
		v := 0
		if ev.Verdict == datapath.VerdictDropped {
			v = 1
		}
		p.verdict[ev.Direction][v].Add(1)
	}
	p.reasons[ev.Reason].Add(1)
	rec := apitypes.FlowRecord{Flow: fl}
	p.mu.Lock()
	p.push(entry{rec: rec, raw: ev})
	for s := range p.subs {
		if s.q.Filter.Match(fl) {
			s.send(rec, &ev)
		}
	}
	p.mu.Unlock()
}

func (p *Pipeline) push(e entry) {
	p.ring[p.head] = e
	p.head = (p.head + 1) % len(p.ring)
	if p.count < len(p.ring) {
		p.count++
	}
}

// Subscription is a subscriber's stream. Records arrive on C; C is closed
// by Close.
type Subscription struct {
	C <-chan apitypes.FlowRecord
	c chan apitypes.FlowRecord
	p *Pipeline
	q Query
	// lost counts records dropped because C was full and not yet
	// reported; guarded, with closed, by the pipeline's mutex.
	lost   uint64
	closed bool
}

func rawRecord(ev *datapath.FlowEvent) apitypes.FlowRecord {
	return apitypes.FlowRecord{Raw: &apitypes.RawEvent{Time: ev.Time, Type: uint8(ev.Type), Verdict: uint8(ev.Verdict),
		Reason: uint8(ev.Reason), Direction: uint8(ev.Direction), EndpointID: ev.EndpointID, IfIndex: ev.IfIndex,
		SrcIdentity: uint32(ev.SrcIdentity), DstIdentity: uint32(ev.DstIdentity), Src: ev.Src, Dst: ev.Dst,
		SrcPort: ev.SrcPort, DstPort: ev.DstPort, Proto: ev.Proto, TCPFlags: ev.TCPFlags, Cookie: ev.Cookie, Length: ev.Length}}
}

// send delivers rec without blocking; called with p.mu held.
func (s *Subscription) send(rec apitypes.FlowRecord, raw *datapath.FlowEvent) {
	if s.q.Raw && raw != nil {
		rec = rawRecord(raw)
	}
	if s.lost > 0 {
		lr := apitypes.FlowRecord{Lost: &apitypes.LostEvents{Time: time.Now(), Source: apitypes.LostSlowClient, Count: s.lost}}
		select {
		case s.c <- lr:
			s.p.lost[lostSlowClient].Add(s.lost)
			s.lost = 0
		default:
			s.lost++
			return
		}
	}
	select {
	case s.c <- rec:
	default:
		s.lost++
	}
}

// Subscribe returns the buffered records q replays and, when q.Follow, a
// subscription for what comes next, with no gap or overlap between the two.
// The caller must Close the subscription.
func (p *Pipeline) Subscribe(q Query) ([]apitypes.FlowRecord, *Subscription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var backlog []apitypes.FlowRecord
	if q.Last != 0 {
		start := (p.head - p.count + len(p.ring)) % len(p.ring)
		for i := p.count - 1; i >= 0; i-- {
			e := &p.ring[(start+i)%len(p.ring)]
			if !q.Since.IsZero() && recordTime(&e.rec).Before(q.Since) {
				break
			}
			if e.rec.Flow != nil && !q.Filter.Match(e.rec.Flow) {
				continue
			}
			rec := e.rec
			if q.Raw && rec.Flow != nil {
				rec = rawRecord(&e.raw)
			}
			backlog = append(backlog, rec)
			if q.Last > 0 && len(backlog) == q.Last {
				break
			}
		}
		for i, j := 0, len(backlog)-1; i < j; i, j = i+1, j-1 {
			backlog[i], backlog[j] = backlog[j], backlog[i]
		}
	}
	if !q.Follow {
		return backlog, nil
	}
	c := make(chan apitypes.FlowRecord, subscriberBuffer)
	s := &Subscription{C: c, c: c, p: p, q: q}
	p.subs[s] = struct{}{}
	return backlog, s
}

func recordTime(r *apitypes.FlowRecord) time.Time {
	if r.Flow != nil {
		return r.Flow.Time
	}
	if r.Lost != nil {
		return r.Lost.Time
	}
	return time.Time{}
}

// Close ends the subscription and closes C. Records dropped for it and not
// yet reported are counted as lost to a slow client.
func (s *Subscription) Close() {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	delete(s.p.subs, s)
	s.p.lost[lostSlowClient].Add(s.lost)
	close(s.c)
}

// Stats describes the pipeline.
func (p *Pipeline) Stats() apitypes.FlowStats {
	p.mu.Lock()
	st := apitypes.FlowStats{Enabled: true, Capacity: len(p.ring), Buffered: p.count, Subscribers: len(p.subs)}
	p.mu.Unlock()
	st.Seen = p.seen.Load()
	st.Lost = map[string]uint64{}
	for i, s := range lostSources {
		st.Lost[s] = p.lost[i].Load()
	}
	return st
}

// VerdictCount is the number of flow events of one direction and verdict.
type VerdictCount struct {
	Direction datapath.Direction
	Verdict   datapath.Verdict
	Count     uint64
}

// Verdicts returns the flow events seen by direction and verdict.
func (p *Pipeline) Verdicts() []VerdictCount {
	var out []VerdictCount
	for d := 0; d < 2; d++ {
		for v := 0; v < 2; v++ {
			out = append(out, VerdictCount{Direction: datapath.Direction(d),
				Verdict: datapath.Verdict(v + 1), Count: p.verdict[d][v].Load()})
		}
	}
	return out
}

// ReasonCounts returns the flow events seen by verdict reason (zero
// counts omitted).
func (p *Pipeline) ReasonCounts() map[datapath.Reason]uint64 {
	out := map[datapath.Reason]uint64{}
	for i := range p.reasons {
		if n := p.reasons[i].Load(); n > 0 {
			out[datapath.Reason(i)] = n
		}
	}
	return out
}

// Lost returns the lost-event counts by source.
func (p *Pipeline) Lost() map[string]uint64 {
	out := map[string]uint64{}
	for i, s := range lostSources {
		out[s] = p.lost[i].Load()
	}
	return out
}

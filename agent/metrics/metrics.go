// Package metrics exports the agent's Prometheus metrics: datapath counters
// and map pressure read from the BPF maps on scrape, the flow pipeline's
// counters, endpoint and identity gauges, and the local API's latency. The
// agent serves them, together with everything registered in the default
// registry (Go runtime, process, and other packages' metrics such as
// sigil_policy_implementation_delay_seconds), on --metrics-address.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/datapath"
)

// DefaultAddress is where the agent serves metrics by default (Cilium's
// agent port; Sigil has no operator metrics yet, which would take 9963).
const DefaultAddress = ":9962"

const namespace = "sigil"

// Sources are what the collector reads on each scrape. Nil fields are
// skipped.
type Sources struct {
	// Maps are the datapath's BPF maps.
	Maps *datapath.Maps
	// Flows is the flow pipeline.
	Flows *flows.Pipeline
	// Endpoints returns the number of local endpoints.
	Endpoints func() int
	// Identities returns the number of identities the agent knows.
	Identities func() int
	// PressureInterval bounds how often map entries are counted (a walk of
	// each map); between walks the last counts are reported. Default 10s.
	PressureInterval time.Duration
	Logger           *slog.Logger
}

var (
	descForwardPackets = prometheus.NewDesc(namespace+"_forward_count_total",
		"Packets forwarded by the datapath, by direction.", []string{"direction"}, nil)
	descForwardBytes = prometheus.NewDesc(namespace+"_forward_bytes_total",
		"Bytes forwarded by the datapath, by direction.", []string{"direction"}, nil)
	descDropPackets = prometheus.NewDesc(namespace+"_drop_count_total",
		"Packets dropped by the datapath, by reason and direction.", []string{"reason", "direction"}, nil)
	descDropBytes = prometheus.NewDesc(namespace+"_drop_bytes_total",
		"Bytes dropped by the datapath, by reason and direction.", []string{"reason", "direction"}, nil)
	descMapPressure = prometheus.NewDesc(namespace+"_bpf_map_pressure",
		"Fill level of a BPF map: entries / max entries.", []string{"map_name"}, nil)
	descMapEntries = prometheus.NewDesc(namespace+"_bpf_map_entries",
		"Entries in a BPF map.", []string{"map_name"}, nil)
	descMapCapacity = prometheus.NewDesc(namespace+"_bpf_map_capacity",
		"Max entries of a BPF map.", []string{"map_name"}, nil)
	descDatapathLost = prometheus.NewDesc(namespace+"_datapath_events_lost_total",
		"Flow events the datapath did not deliver to user space (ring buffer full, or over the allowed-flow event rate limit), counted in the BPF maps.",
		[]string{"source"}, nil)
	descPolicyVerdicts = prometheus.NewDesc(namespace+"_policy_verdict_total",
		"Policy verdicts seen in flow events, by direction and action. Allowed verdicts are reported once per new flow and are subject to the datapath's event rate limit.",
		[]string{"direction", "action"}, nil)
	descFlowsSeen = prometheus.NewDesc(namespace+"_flows_processed_total",
		"Flow events decoded and enriched by the agent's flow pipeline.", nil, nil)
	descFlowsLost = prometheus.NewDesc(namespace+"_flow_events_lost_total",
		"Flow events lost between the datapath and the clients, by where they were lost.", []string{"source"}, nil)
	descFlowSubscribers = prometheus.NewDesc(namespace+"_flow_subscribers",
		"Clients streaming flows.", nil, nil)
	descEndpoints = prometheus.NewDesc(namespace+"_endpoints",
		"Endpoints managed by the agent.", nil, nil)
	descIdentities = prometheus.NewDesc(namespace+"_identities",
		"Security identities known to the agent.", nil, nil)
	descPrefilterDrops = prometheus.NewDesc(namespace+"_prefilter_drop_count_total",
		"Packets dropped by the XDP prefilter, by denied CIDR.", []string{"cidr"}, nil)
	descPrefilterDropBytes = prometheus.NewDesc(namespace+"_prefilter_drop_bytes_total",
		"Bytes dropped by the XDP prefilter, by denied CIDR.", []string{"cidr"}, nil)
	descScrapeErrors = prometheus.NewDesc(namespace+"_metrics_scrape_errors_total",
		"Errors reading BPF maps while collecting metrics.", nil, nil)
)

// Collector is a prometheus.Collector reading Sources on each scrape.
type Collector struct {
	src Sources

	mu        sync.Mutex
	pressure  map[string][2]int
	pressAt   time.Time
	scrapeErr uint64
}

// NewCollector returns a collector for src.
func NewCollector(src Sources) *Collector {
	if src.PressureInterval <= 0 {
		src.PressureInterval = 10 * time.Second
	}
	if src.Logger == nil {
		src.Logger = slog.Default()
	}
	return &Collector{src: src}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descForwardPackets, descForwardBytes, descDropPackets, descDropBytes,
		descMapPressure, descMapEntries, descMapCapacity, descDatapathLost, descPolicyVerdicts, descFlowsSeen,
		descFlowsLost, descFlowSubscribers, descEndpoints, descIdentities, descScrapeErrors,
		descPrefilterDrops, descPrefilterDropBytes} {
		ch <- d
	}
}

func (c *Collector) fail(what string, err error) {
	c.scrapeErr++
	c.src.Logger.Warn("metrics: read BPF map", "what", what, "err", err)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	counter := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
	}
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	if ms := c.src.Maps; ms != nil {
		samples, err := ms.Metrics.Read()
		if err != nil {
			c.fail("metrics", err)
		}
		fwd := map[datapath.Direction][2]uint64{}
		for _, s := range samples {
			if s.Reason == datapath.ReasonForwarded {
				v := fwd[s.Direction]
				fwd[s.Direction] = [2]uint64{v[0] + s.Packets, v[1] + s.Bytes}
				continue
			}
			counter(descDropPackets, float64(s.Packets), s.Reason.String(), s.Direction.String())
			counter(descDropBytes, float64(s.Bytes), s.Reason.String(), s.Direction.String())
		}
		for _, d := range []datapath.Direction{datapath.Ingress, datapath.Egress} {
			counter(descForwardPackets, float64(fwd[d][0]), d.String())
			counter(descForwardBytes, float64(fwd[d][1]), d.String())
		}
		if ev, err := ms.Metrics.Events(); err != nil {
			c.fail("event stats", err)
		} else {
			counter(descDatapathLost, float64(ev.Lost), "ring_buffer_full")
			counter(descDatapathLost, float64(ev.RateLimited), "rate_limited")
		}
		if c.pressure == nil || time.Since(c.pressAt) >= c.src.PressureInterval {
			if p, err := ms.Pressure(); err != nil {
				c.fail("pressure", err)
			} else {
				c.pressure, c.pressAt = p, time.Now()
			}
		}
		for name, v := range c.pressure {
			gauge(descMapEntries, float64(v[0]), name)
			gauge(descMapCapacity, float64(v[1]), name)
			if v[1] > 0 {
				gauge(descMapPressure, float64(v[0])/float64(v[1]), name)
			}
		}
		c.collectPrefilter(ms.PinDir(), counter)
		counter(descScrapeErrors, float64(c.scrapeErr))
	}
	if p := c.src.Flows; p != nil {
		for _, v := range p.Verdicts() {
			action := "allowed"
			if v.Verdict == datapath.VerdictDropped {
				action = "denied"
			}
			counter(descPolicyVerdicts, float64(v.Count), v.Direction.String(), action)
		}
		st := p.Stats()
		counter(descFlowsSeen, float64(st.Seen))
		for src, n := range st.Lost {
			counter(descFlowsLost, float64(n), src)
		}
		gauge(descFlowSubscribers, float64(st.Subscribers))
	}
	if f := c.src.Endpoints; f != nil {
		gauge(descEndpoints, float64(f()))
	}
	if f := c.src.Identities; f != nil {
		gauge(descIdentities, float64(f()))
	}
}

// collectPrefilter exports the XDP prefilter's per-CIDR drop counters, when
// a prefilter is pinned beside the datapath.
func (c *Collector) collectPrefilter(pinDir string, counter func(*prometheus.Desc, float64, ...string)) {
	if pinDir == "" {
		return
	}
	if _, err := os.Stat(filepath.Join(pinDir, datapath.MapPrefilter4)); err != nil {
		return
	}
	entries, err := datapath.ListPinnedPrefilter(pinDir)
	if err != nil {
		c.fail("prefilter", err)
		return
	}
	for _, e := range entries {
		if e.Except {
			continue
		}
		counter(descPrefilterDrops, float64(e.Packets), e.Prefix.String())
		counter(descPrefilterDropBytes, float64(e.Bytes), e.Prefix.String())
	}
}

// APIRequestDuration is the latency of the local API, by method, route
// pattern and status code. Streaming requests (flows with follow) are not
// observed.
var APIRequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: namespace,
	Name:      "api_request_duration_seconds",
	Help:      "Latency of the agent's local API, by method, route and status code (streams excluded).",
	Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
}, []string{"method", "route", "code"})

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Instrument observes the latency of every request h serves (an
// http.ServeMux, whose matched pattern labels the route) in
// APIRequestDuration.
func Instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") != "" {
			h.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		APIRequestDuration.WithLabelValues(r.Method, route, strconv.Itoa(sw.code)).Observe(time.Since(start).Seconds())
	})
}

// Handler serves reg's metrics together with the default registry's.
func Handler(reg prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers{reg, prometheus.DefaultGatherer},
		promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// NewRegistry returns a registry holding a collector for src and
// APIRequestDuration.
func NewRegistry(src Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src), APIRequestDuration)
	return reg
}

// Serve serves /metrics on addr until ctx is done. It returns once the
// listener is open (or failed to open); the address actually bound (for
// ":0") is returned.
func Serve(ctx context.Context, addr string, reg prometheus.Gatherer, log *slog.Logger) (net.Addr, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", Handler(reg))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return ln.Addr(), nil
}

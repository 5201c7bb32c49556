package metrics

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"

	"github.com/cilium/ebpf"
)

func TestServeMetrics(t *testing.T) {
	h := dt.New(t, datapath.Config{})
	if err := h.Endpoints.Upsert(netip.MustParseAddr("198.18.60.2"), datapath.EndpointInfo{ID: 1, Identity: 1000}); err != nil {
		t.Fatal(err)
	}
	// A prefilter pinned beside the datapath, which dropped 3 packets.
	pf, err := datapath.LoadPrefilter(datapath.PrefilterConfig{PinDir: h.PinDir(), MaxEntries: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if err := pf.Replace([]datapath.PrefilterRule{{Prefix: netip.MustParsePrefix("198.18.66.0/24")}}); err != nil {
		t.Fatal(err)
	}
	frame := dt.Packet{Src: netip.MustParseAddr("198.18.66.7"), Dst: netip.MustParseAddr("198.18.60.2"), Proto: 17}.Bytes()
	if _, err := pf.Program().Run(&ebpf.RunOptions{Data: frame, Repeat: 3}); err != nil {
		t.Fatal(err)
	}
	pipe := flows.New(flows.Config{Capacity: 4})
	pipe.Ingest(datapath.FlowEvent{Time: time.Now(), Direction: datapath.Ingress, Type: datapath.EventDrop,
		Verdict: datapath.VerdictDropped, Reason: datapath.DropPolicyDefault})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := NewRegistry(Sources{Maps: h.Maps, Flows: pipe, Endpoints: func() int { return 1 }, Identities: func() int { return 9 }})
	addr, err := Serve(ctx, "127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One API request, so the latency histogram has a sample.
	Instrument(http.NotFoundHandler()).ServeHTTP(discardWriter{}, mustReq(t))
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`sigil_bpf_map_entries{map_name="sigil_endpoints"} 1`,
		`sigil_bpf_map_pressure{map_name="sigil_endpoints"}`,
		`sigil_bpf_map_capacity{map_name="sigil_ct4"}`,
		`sigil_forward_count_total{direction="ingress"} 0`,
		`sigil_datapath_events_lost_total{source="ring_buffer_full"} 0`,
		`sigil_policy_verdict_total{action="denied",direction="ingress"} 1`,
		`sigil_flows_processed_total 1`,
		`sigil_flow_events_lost_total{source="client-too-slow"} 0`,
		`sigil_endpoints 1`,
		`sigil_identities 9`,
		`sigil_prefilter_drop_count_total{cidr="198.18.66.0/24"} 3`,
		`sigil_api_request_duration_seconds_count{code="404",method="GET",route="unmatched"}`,
		`go_goroutines`, // the default registry is served too
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (discardWriter) WriteHeader(int)             {}

func mustReq(t *testing.T) *http.Request {
	r, err := http.NewRequest(http.MethodGet, "http://sigil-agent/v1/nothing", nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

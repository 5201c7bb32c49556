package flows

import (
	"context"
	"net/netip"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
)

type fakeResolver struct{}

var (
	ipFront = netip.MustParseAddr("198.18.30.10")
	ipBack  = netip.MustParseAddr("198.18.30.20")
)

func (fakeResolver) ResolveIP(ip netip.Addr) (Peer, bool) {
	switch ip {
	case ipFront:
		return Peer{EndpointID: 1, Namespace: "shop", PodName: "frontend-1", Labels: []string{"k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"}}, true
	case ipBack:
		return Peer{EndpointID: 2, Namespace: "shop", PodName: "backend-1", Labels: []string{"k8s:app=backend", "k8s:io.kubernetes.pod.namespace=shop"}}, true
	}
	return Peer{}, false
}

func (fakeResolver) IdentityLabels(id uint32) ([]string, bool) {
	if id == 2 {
		return []string{"reserved:world"}, true
	}
	return nil, false
}

func (fakeResolver) Rule(cookie uint32) (apitypes.PolicyRule, bool) {
	if cookie == 7 {
		return apitypes.PolicyRule{Cookie: 7, Kind: "NetworkPolicy", Namespace: "shop", Name: "deny-db", RuleList: "ingressDeny", Deny: true}, true
	}
	return apitypes.PolicyRule{}, false
}

func (fakeResolver) EnforcedBy(ep uint32, dir datapath.Direction) []string {
	if ep == 2 && dir == datapath.Ingress {
		return []string{"NetworkPolicy/shop/backend"}
	}
	return nil
}

func drop(src, dst netip.Addr, port uint16, reason datapath.Reason, cookie uint32) datapath.FlowEvent {
	return datapath.FlowEvent{Time: time.Now(), EndpointID: 2, SrcIdentity: 1001, DstIdentity: 1002, Src: src, Dst: dst,
		SrcPort: 40000, DstPort: port, Proto: datapath.ProtoTCP, Direction: datapath.Ingress, Type: datapath.EventDrop,
		Verdict: datapath.VerdictDropped, Reason: reason, TCPFlags: 0x02, Cookie: cookie, Length: 60}
}

func allow(src, dst netip.Addr, port uint16) datapath.FlowEvent {
	e := drop(src, dst, port, datapath.ReasonForwarded, 0)
	e.Type, e.Verdict = datapath.EventPolicyVerdict, datapath.VerdictForwarded
	return e
}

func TestEnrichment(t *testing.T) {
	p := New(Config{Capacity: 8, Resolver: fakeResolver{}})
	p.Ingest(drop(ipFront, ipBack, 5432, datapath.DropPolicyDeny, 7))
	p.Ingest(drop(ipFront, ipBack, 8080, datapath.DropPolicyDefault, 0))
	icmp := drop(netip.MustParseAddr("198.19.0.1"), ipBack, 8<<8, datapath.DropPolicyDefault, 0)
	icmp.Proto, icmp.SrcIdentity = datapath.ProtoICMP, 2
	p.Ingest(icmp)
	recs, sub := p.Subscribe(Query{Last: -1})
	if sub != nil || len(recs) != 3 {
		t.Fatalf("got %d records, sub %v", len(recs), sub)
	}
	f := recs[0].Flow
	if f.Source.PodName != "frontend-1" || f.Destination.PodName != "backend-1" || f.Destination.Port != 5432 ||
		f.Policy == nil || f.Policy.String() != "NetworkPolicy/shop/deny-db ingressDeny[0]" || f.TCPFlags != "SYN" ||
		f.DropReason != "policy denied" || f.Verdict != "DROPPED" || f.Type != "drop" || f.Direction != "ingress" {
		t.Errorf("flow 0: %+v", f)
	}
	if f := recs[1].Flow; len(f.EnforcedBy) != 1 || f.Policy != nil || f.DropReason != "policy default deny" {
		t.Errorf("flow 1: %+v", f)
	}
	if f := recs[2].Flow; f.ICMP == nil || f.ICMP.Type != 8 || f.Destination.Port != 0 || f.Source.IdentityName != "world" ||
		len(f.Source.Labels) != 1 || f.Source.PodName != "" {
		t.Errorf("flow 2: %+v", f)
	}
}

func TestFilters(t *testing.T) {
	p := New(Config{Capacity: 16, Resolver: fakeResolver{}})
	p.Ingest(drop(ipFront, ipBack, 5432, datapath.DropPolicyDeny, 7))
	p.Ingest(allow(ipFront, ipBack, 8080))
	p.Ingest(allow(ipBack, ipFront, 9090))
	cases := []struct {
		name string
		f    Filter
		want int
	}{
		{"all", Filter{}, 3},
		{"verdict", Filter{Verdicts: []string{"dropped"}}, 1},
		{"pod either side", Filter{Pods: []string{"shop/frontend-1"}}, 3},
		{"from pod", Filter{FromPods: []string{"shop/frontend-1"}}, 2},
		{"to pod prefix", Filter{ToPods: []string{"front*"}}, 1},
		{"namespace slash", Filter{FromPods: []string{"shop/"}}, 3},
		{"other namespace", Filter{Namespaces: []string{"kube-system"}}, 0},
		{"label bare key", Filter{Labels: []string{"app=backend"}}, 3},
		{"label conj", Filter{Labels: []string{"k8s:app=backend,k8s:io.kubernetes.pod.namespace=shop"}}, 3},
		{"label miss", Filter{Labels: []string{"app=db"}}, 0},
		{"port", Filter{Ports: []uint16{8080, 9090}}, 2},
		{"from identity", Filter{FromIdentities: []uint32{1001}}, 3},
		{"to identity none", Filter{ToIdentities: []uint32{5}}, 0},
		{"type", Filter{Types: []string{"policy-verdict"}}, 2},
		{"protocol", Filter{Protocols: []string{"udp"}}, 0},
		{"and", Filter{Verdicts: []string{"FORWARDED"}, Ports: []uint16{9090}}, 1},
		{"reason", Filter{Reasons: []string{"denied"}}, 1},
	}
	for _, c := range cases {
		q := Query{Filter: c.f, Last: -1}
		// Through the query string, as the API receives it.
		q2, err := ParseQuery(q.Values())
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		recs, _ := p.Subscribe(q2)
		if len(recs) != c.want {
			t.Errorf("%s: got %d flows, want %d", c.name, len(recs), c.want)
		}
	}
}

func TestQueryValidation(t *testing.T) {
	for _, raw := range []string{"verdict=MAYBE", "type=l7", "protocol=gre", "port=0", "port=70000",
		"from-identity=abc", "last=x", "since=yesterday", "pod=a/b/c", "follow=maybe"} {
		v, _ := parseRawQuery(raw)
		if _, err := ParseQuery(v); err == nil {
			t.Errorf("%s: accepted", raw)
		}
	}
}

func TestLastSinceAndRingWrap(t *testing.T) {
	p := New(Config{Capacity: 4, Resolver: fakeResolver{}})
	base := time.Now()
	for i := 0; i < 6; i++ {
		e := allow(ipFront, ipBack, uint16(1000+i))
		e.Time = base.Add(time.Duration(i) * time.Second)
		p.Ingest(e)
	}
	recs, _ := p.Subscribe(Query{Last: -1})
	if len(recs) != 4 || recs[0].Flow.Destination.Port != 1002 || recs[3].Flow.Destination.Port != 1005 {
		t.Fatalf("ring: %d records", len(recs))
	}
	recs, _ = p.Subscribe(Query{Last: 2})
	if len(recs) != 2 || recs[0].Flow.Destination.Port != 1004 {
		t.Fatalf("last 2: %+v", recs)
	}
	recs, _ = p.Subscribe(Query{Last: -1, Since: base.Add(3500 * time.Millisecond)})
	if len(recs) != 2 || recs[0].Flow.Destination.Port != 1004 {
		t.Fatalf("since: %d", len(recs))
	}
}

type chanSource struct {
	c      chan datapath.FlowEvent
	once   sync.Once
	closed chan struct{}
}

func (s *chanSource) Read() (datapath.FlowEvent, error) {
	select {
	case e := <-s.c:
		return e, nil
	case <-s.closed:
		return datapath.FlowEvent{}, datapath.ErrClosed
	}
}

func (s *chanSource) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func TestFollowAndLost(t *testing.T) {
	var mu sync.Mutex
	dp := datapath.EventStats{Lost: 10, RateLimited: 5}
	p := New(Config{Capacity: 64, Resolver: fakeResolver{}, LostInterval: 10 * time.Millisecond,
		Lost: func() (datapath.EventStats, error) {
			mu.Lock()
			defer mu.Unlock()
			return dp, nil
		}})
	src := &chanSource{c: make(chan datapath.FlowEvent), closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx, src) }()

	_, sub := p.Subscribe(Query{Follow: true, Filter: Filter{Verdicts: []string{"DROPPED"}}})
	defer sub.Close()
	src.c <- allow(ipFront, ipBack, 80)
	src.c <- drop(ipFront, ipBack, 5432, datapath.DropPolicyDeny, 7)
	rec := <-sub.C
	if rec.Flow == nil || rec.Flow.Verdict != "DROPPED" {
		t.Fatalf("first record %+v", rec)
	}
	// The datapath loses 3 events: the stream says so, whatever the filter.
	mu.Lock()
	dp.Lost += 3
	mu.Unlock()
	select {
	case rec = <-sub.C:
	case <-time.After(2 * time.Second):
		t.Fatal("no lost record")
	}
	if rec.Lost == nil || rec.Lost.Count != 3 || rec.Lost.Source != apitypes.LostRingBufferFull {
		t.Fatalf("lost record %+v", rec)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Lost[apitypes.LostRingBufferFull] != 3 || st.Seen != 2 || st.Lost[apitypes.LostRateLimited] != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSlowSubscriberLosesAndIsTold(t *testing.T) {
	p := New(Config{Capacity: 16, Resolver: fakeResolver{}})
	_, sub := p.Subscribe(Query{Follow: true})
	n := subscriberBuffer + 100
	for i := 0; i < n; i++ {
		p.Ingest(allow(ipFront, ipBack, 80))
	}
	// Drain; the next event after space frees is preceded by a lost record.
	got := 0
	for len(sub.C) > 0 {
		<-sub.C
		got++
	}
	p.Ingest(allow(ipFront, ipBack, 81))
	rec := <-sub.C
	if rec.Lost == nil || rec.Lost.Source != apitypes.LostSlowClient || rec.Lost.Count != 100 {
		t.Fatalf("want a lost record of 100, got %+v (drained %d)", rec, got)
	}
	if rec = <-sub.C; rec.Flow == nil || rec.Flow.Destination.Port != 81 {
		t.Fatalf("then the flow: %+v", rec)
	}
	sub.Close()
	if p.Stats().Lost[apitypes.LostSlowClient] != 100 {
		t.Fatalf("stats %+v", p.Stats())
	}
}

func TestRawSubscription(t *testing.T) {
	p := New(Config{Capacity: 4})
	p.Ingest(drop(ipFront, ipBack, 5432, datapath.DropPolicyDeny, 7))
	recs, _ := p.Subscribe(Query{Last: -1, Raw: true})
	if len(recs) != 1 || recs[0].Raw == nil || recs[0].Raw.Cookie != 7 || recs[0].Raw.Reason != 1 || recs[0].Flow != nil {
		t.Fatalf("%+v", recs)
	}
}

func parseRawQuery(s string) (map[string][]string, error) {
	v, err := url.ParseQuery(s)
	return v, err
}

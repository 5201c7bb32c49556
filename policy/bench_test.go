package policy

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// Benchmark scale from the issue: 1,000 policies, 10,000 identities and
// 5,000 endpoints, in 50 namespaces of 200 identities (20 apps x 10
// versions); namespaces carry a team label (5 teams).
const (
	benchNamespaces = 50
	benchIdentities = 10000
	benchEndpoints  = 5000
	benchPolicies   = 1000
)

func benchLabels(i int) identity.Labels {
	ns := i % benchNamespaces
	app := (i / benchNamespaces) % 20
	return identity.NewFilter().SecurityLabels(fmt.Sprint("ns", ns),
		map[string]string{"app": fmt.Sprint("app", app), "version": fmt.Sprint("v", i/(benchNamespaces*20))},
		map[string]string{"team": fmt.Sprint("team", ns%5)})
}

func sel(kv ...string) Selector {
	var reqs []Requirement
	for i := 0; i < len(kv); i += 2 {
		reqs = append(reqs, Requirement{Key: kv[i], Op: OpIn, Values: []string{kv[i+1]}})
	}
	return NewSelector(reqs...)
}

// benchPolicy: in namespace ns, app A may be reached on TCP 80 and 443 by
// app A+1 of its namespace and by app A+2 of every namespace of the next
// team; it may not be reached on TCP 22 by app A+3; it may reach
// 10.ns.0.0/16 except 10.ns.1.0/24 and the world on 443.
func benchPolicy(i int) *Policy {
	ns, app := i%benchNamespaces, (i/benchNamespaces)%20
	nsName := fmt.Sprint("ns", ns)
	web := []PortSpec{{Proto: datapath.ProtoTCP, Lo: 80, Hi: 80}, {Proto: datapath.ProtoTCP, Lo: 443, Hi: 443}}
	return &Policy{
		Ref:     PolicyRef{Kind: KindSigilNetworkPolicy, Namespace: nsName, Name: fmt.Sprint("p", i)},
		Subject: sel("k8s:app", fmt.Sprint("app", app)).And(InNamespace(nsName)),
		Enforce: [2]bool{true, true},
		Rules: []Rule{
			{Direction: datapath.Ingress, Ports: web, Peers: []Peer{
				{Kind: PeerLabels, Selector: sel("k8s:app", fmt.Sprint("app", (app+1)%20)).And(InNamespace(nsName))},
				{Kind: PeerLabels, Selector: sel("k8s:app", fmt.Sprint("app", (app+2)%20), NamespaceLabelKey("team"), fmt.Sprint("team", (ns+1)%5))},
			}},
			{Direction: datapath.Ingress, Deny: true, Ports: []PortSpec{{Proto: datapath.ProtoTCP, Lo: 22, Hi: 22}},
				Peers: []Peer{{Kind: PeerLabels, Selector: sel("k8s:app", fmt.Sprint("app", (app+3)%20)).And(InNamespace(nsName))}}},
			{Direction: datapath.Egress, Peers: []Peer{{Kind: PeerCIDR,
				CIDR:   netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", ns)),
				Except: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.1.0/24", ns))}}}},
			{Direction: datapath.Egress, Ports: web[1:], Peers: []Peer{{Kind: PeerEntity, Entity: "world"}}},
		},
	}
}

// benchEngine loads identities and endpoints (every other identity has an
// endpoint) into a new engine.
func benchEngine(b *testing.B) *Engine {
	e := NewEngine(Config{})
	for i := 0; i < benchIdentities; i++ {
		if _, err := e.UpsertIdentity(datapath.IdentityClusterMin+datapath.Identity(i), benchLabels(i)); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < benchEndpoints; i++ {
		id := datapath.IdentityClusterMin + datapath.Identity(2*i)
		ip := netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)})
		if _, err := e.UpsertEndpoint(Endpoint{ID: uint32(i + 1), Identity: id, IPs: []netip.Addr{ip}}); err != nil {
			b.Fatal(err)
		}
	}
	return e
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkCompileAll measures compiling 1,000 policies over 10,000
// identities and 5,000 endpoints (policies added one by one, as an agent
// starting up would), and the memory the engine then holds.
func BenchmarkCompileAll(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		e := benchEngine(b)
		before := heapInUse()
		b.StartTimer()
		for i := 0; i < benchPolicies; i++ {
			e.UpsertPolicy(benchPolicy(i))
		}
		b.StopTimer()
		m := e.Metrics()
		b.ReportMetric((float64(heapInUse())-float64(before))/(1<<20), "MiB-held")
		runtime.KeepAlive(e)
		b.ReportMetric(float64(m.Entries), "entries")
		b.ReportMetric(float64(m.Selectors), "selectors")
		b.StartTimer()
	}
}

// BenchmarkNewIdentity measures one new identity reaching the entry diffs
// of every endpoint it affects (and its removal, to keep the state).
func BenchmarkNewIdentity(b *testing.B) {
	e := benchEngine(b)
	for i := 0; i < benchPolicies; i++ {
		e.UpsertPolicy(benchPolicy(i))
	}
	// app2 in ns7 (team2) is a peer of app1 in ns7 and of app0 in the
	// namespaces of team1.
	lbls := benchLabels(7 + 2*benchNamespaces)
	lbls[identity.K8sKey("version")] = "new"
	id := datapath.Identity(identity.ClusterMax - 1)
	var affected int
	var spent time.Duration
	for b.Loop() {
		start := time.Now()
		ch, _ := e.UpsertIdentity(id, lbls)
		spent += time.Since(start)
		affected = len(ch.Endpoints)
		e.RemoveIdentity(id)
	}
	if affected == 0 {
		b.Fatal("no endpoint affected")
	}
	b.ReportMetric(float64(affected), "affected-endpoints")
	b.ReportMetric(float64(spent.Nanoseconds())/float64(b.N)/float64(affected), "ns/affected-endpoint")
}

// BenchmarkUnrelatedIdentity: an identity no selector matches touches no
// endpoint.
func BenchmarkUnrelatedIdentity(b *testing.B) {
	e := benchEngine(b)
	for i := 0; i < benchPolicies; i++ {
		e.UpsertPolicy(benchPolicy(i))
	}
	lbls := identity.NewFilter().SecurityLabels("elsewhere", map[string]string{"app": "other"}, nil)
	id := datapath.Identity(identity.ClusterMax - 1)
	for b.Loop() {
		if ch, _ := e.UpsertIdentity(id, lbls); len(ch.Endpoints) != 0 {
			b.Fatal("unrelated identity touched endpoints")
		}
		e.RemoveIdentity(id)
	}
}

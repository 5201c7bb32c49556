package k8s_test

// The control-plane scale benchmark (issue 5): simulated nodes, each an
// in-process agent (datapath with real BPF maps in its own bpffs pin
// directory, enforcer, endpoint manager, controller) against one real API
// server, with the operator's reconcilers running in-process too. Pods are
// Pod objects with their status set as a kubelet would; their endpoints are
// created through each agent's endpoint manager, as sigil-cni's ADD does,
// but on a dummy host interface: only attaching the tc programs is
// skipped (benchDatapath), every map write is real.
//
// Run:
//
//	SIGIL_BENCH=1 go test ./agent/k8s -run TestBenchControlPlane -count=1 -v -timeout 20m
//
// Knobs: SIGIL_BENCH_NODES (5), SIGIL_BENCH_PODS (1000),
// SIGIL_BENCH_IDENTITIES (100), SIGIL_BENCH_POLICIES (200);
// SIGIL_BENCH_CPUPROFILE=<file> profiles the all-pods phase into <file> and
// the policies phase into <file>.policies (every agent
// and the API client side are in this process; the API server is not).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/k8s"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/internal/testnet"
	"github.com/sigil-net/sigil/operator"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

// benchDatapath is the real BPF datapath without attaching programs to
// the (dummy) host interfaces of the simulated pods.
type benchDatapath struct{ *agent.BPFDatapath }

func (benchDatapath) Attach(string, int) error    { return nil }
func (benchDatapath) Detach(string) error         { return nil }
func (benchDatapath) Attached() ([]string, error) { return nil, nil }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchNode is one simulated node.
type benchNode struct {
	name   string
	pinDir string
	dp     *datapath.Datapath
	enf    *agent.Enforcer
	m      *agent.Manager
	ctrl   *k8s.Controller
	cancel context.CancelFunc
	cidr   netip.Prefix

	outer *ebpf.Map             // the poller's own handle on sigil_policy
	inner map[uint32]*ebpf.Map  // cached inner maps, by endpoint ID
	bySet map[int][]uint32      // label set -> endpoint IDs on this node
	ips   map[string]netip.Addr // pod name -> address
	ids   map[string]uint32     // pod name -> endpoint ID
	mu    sync.Mutex
}

func (n *benchNode) stop() {
	n.cancel()
	n.ctrl.Wait()
	n.m.Close()
	n.dp.Close()
	for _, m := range n.inner {
		m.Close()
	}
	if n.outer != nil {
		n.outer.Close()
	}
}

// benchKey is the datapath's policy key layout (datapath/layout.go).
type benchKey struct {
	PrefixLen uint32
	Identity  uint32
	Direction uint8
	Protocol  uint8
	Port      [2]byte
}

func ingressTCPKey(id datapath.Identity, port uint16) benchKey {
	k := benchKey{PrefixLen: 64, Identity: uint32(id), Direction: uint8(datapath.Ingress), Protocol: datapath.ProtoTCP}
	binary.BigEndian.PutUint16(k.Port[:], port)
	return k
}

// has reports whether endpoint epID's policy map holds an allow for
// every key in keys[from:]; it returns how many leading keys are present.
func (n *benchNode) has(epID uint32, keys []benchKey, from int) (int, error) {
	m := n.inner[epID]
	if m == nil {
		var inner *ebpf.Map
		if err := n.outer.Lookup(epID, &inner); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return from, nil
			}
			return from, err
		}
		n.inner[epID], m = inner, inner
	}
	var v [8]byte
	for i := from; i < len(keys); i++ {
		if err := m.Lookup(&keys[i], &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return i, nil
			}
			return i, err
		}
		if v[0]&1 != 0 {
			return i, fmt.Errorf("endpoint %d: deny entry for identity %d", epID, keys[i].Identity)
		}
	}
	return len(keys), nil
}

// target is one endpoint that must get keys.
type target struct {
	node *benchNode
	ep   uint32
	got  int
}

// maxGap is the longest time between the starts of two polling rounds
// (the resolution of the measurement).
var maxGap time.Duration

// waitEntries polls every 2 ms until every target has all keys; it returns
// the completion time per node. The enforcer writes one change's endpoints
// in ascending ID order (policy.Changes is sorted by ID), so a round checks
// each node's pending endpoints from the highest ID down and stops at the
// first incomplete one: a round costs a few lookups, not one per endpoint.
// The first endpoint checked in a round (the node's highest pending ID)
// must have every key, the lower ones the first key (they were synced
// before it, each in one PolicyMap.Sync); verifyEntries then checks every
// key of every endpoint, untimed.
func waitEntries(targets []*target, keys []benchKey, timeout time.Duration) (map[string]time.Time, error) {
	done := map[string]time.Time{}
	pending := map[*benchNode][]*target{}
	for _, t := range targets {
		pending[t.node] = append(pending[t.node], t)
	}
	for _, l := range pending {
		slices.SortFunc(l, func(a, b *target) int { return int(a.ep) - int(b.ep) })
	}
	deadline := time.Now().Add(timeout)
	lastRound := time.Now()
	for {
		for n, l := range pending {
			for gate := true; len(l) > 0; gate = false {
				t := l[len(l)-1]
				want := keys
				if !gate {
					want = keys[:1]
				}
				got, err := n.has(t.ep, want, min(t.got, len(want)))
				if err != nil {
					return done, err
				}
				if t.got = got; got < len(want) {
					break
				}
				l = l[:len(l)-1]
			}
			pending[n] = l
			if len(l) == 0 {
				done[n.name] = time.Now()
				delete(pending, n)
			}
		}
		if len(pending) == 0 {
			return done, nil
		}
		if time.Now().After(deadline) {
			var msg []string
			for n, l := range pending {
				msg = append(msg, fmt.Sprintf("%s: %d endpoints, e.g. %d has %d of %d keys", n.name, len(l), l[len(l)-1].ep, l[len(l)-1].got, len(keys)))
			}
			return done, fmt.Errorf("entries missing after %v: %s", timeout, strings.Join(msg, "; "))
		}
		time.Sleep(2 * time.Millisecond)
		maxGap = max(maxGap, time.Since(lastRound))
		lastRound = time.Now()
	}
}

// verifyEntries checks that every target has every key.
func verifyEntries(targets []*target, keys []benchKey) error {
	for _, t := range targets {
		got, err := t.node.has(t.ep, keys, 0)
		if err != nil {
			return err
		}
		if got < len(keys) {
			return fmt.Errorf("%s endpoint %d: key %d of %d missing once its node counted as done", t.node.name, t.ep, got, len(keys))
		}
	}
	return nil
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// histSnapshot reads the agents' policy implementation delay histogram
// (all simulated agents share the process's default registry).
func histSnapshot(t *testing.T) (count uint64, sum float64, buckets map[float64]uint64) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	buckets = map[float64]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "sigil_policy_implementation_delay_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			count += h.GetSampleCount()
			sum += h.GetSampleSum()
			for _, b := range h.GetBucket() {
				buckets[b.GetUpperBound()] += b.GetCumulativeCount()
			}
		}
	}
	return
}

// histQuantile is the upper bound of the bucket holding quantile q of the
// observations between two snapshots.
func histQuantile(c0, c1 uint64, b0, b1 map[float64]uint64, q float64) string {
	n := c1 - c0
	if n == 0 {
		return "n/a"
	}
	bounds := make([]float64, 0, len(b1))
	for ub := range b1 {
		bounds = append(bounds, ub)
	}
	slices.Sort(bounds)
	want := uint64(math.Ceil(q * float64(n)))
	for _, ub := range bounds {
		if b1[ub]-b0[ub] >= want {
			return "<= " + time.Duration(ub*float64(time.Second)).Round(10*time.Microsecond).String()
		}
	}
	return "> " + time.Duration(bounds[len(bounds)-1]*float64(time.Second)).String()
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ")
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first error.
func parallel(n, workers int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	ch := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		ch <- i
	}
	close(ch)
	wg.Wait()
	return first
}

// startBenchOperator runs the operator's reconcilers (identities,
// SigilEndpoints, node IPAM, policy status) in-process until ctx ends.
func startBenchOperator(t *testing.T, ctx context.Context, cfg *rest.Config) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 operator.NewScheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: new(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := operator.Setup(mgr, operator.Options{IdentityGCGrace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("operator: %v", err)
		}
	}()
}

func tcpPolicy(ns, name string, subject, peer map[string]string, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: subject},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: peer}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		}}
}

// TestBenchControlPlane measures the policy implementation delay, from a
// NetworkPolicy's Create returning to its entries being in the BPF policy
// map of every endpoint it selects on every simulated node, and the time to
// converge after one policy selecting every pod.
func TestBenchControlPlane(t *testing.T) {
	if os.Getenv("SIGIL_BENCH") == "" {
		t.Skip("benchmark: set SIGIL_BENCH=1")
	}
	testnet.RequireRoot(t)
	dt.RequireBPF(t)
	nNodes := envInt("SIGIL_BENCH_NODES", 5)
	nPods := envInt("SIGIL_BENCH_PODS", 1000)
	nSets := envInt("SIGIL_BENCH_IDENTITIES", 100)
	nPolicies := envInt("SIGIL_BENCH_POLICIES", 200)
	if nSets%10 != 0 || nPods%nNodes != 0 || nPods/nNodes > 250 || nNodes > 100 {
		t.Fatalf("identities must be a multiple of 10, pods a multiple of nodes, at most 250 pods per node")
	}
	podsPerNode := nPods / nNodes
	wall := time.Now()
	load0 := loadavg()
	log := logger()

	env := k8stest.StartEnv(t)
	admin := env.Client
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := k8stest.Namespace(t, admin)
	fl := identity.NewFilter()
	nsLbls := nsLabels(t, admin, ns)

	// Label set s: its own app, one of 10 tiers, one of 5 groups.
	setLabels := func(s int) map[string]string {
		return map[string]string{"app": fmt.Sprintf("a%03d", s), "tier": fmt.Sprintf("t%d", s%10), "grp": fmt.Sprintf("g%d", s%5)}
	}
	phase := time.Now()
	startBenchOperator(t, ctx, env.Config)

	// Identities as the operator allocates them (done up front, so the
	// timeline below is the policy's alone).
	ids := make([]datapath.Identity, nSets)
	if err := parallel(nSets, 4, func(s int) error {
		id, err := identityalloc.Allocate(ctx, admin, fl.SecurityLabels(ns, setLabels(s), nsLbls))
		ids[s] = id
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Pods: pod i on node i/podsPerNode with label set i%nSets, so every
	// identity has pods on every node.
	podName := func(i int) string { return fmt.Sprintf("p%04d", i) }
	nodeOf := func(i int) int { return i / podsPerNode }
	nodeName := func(n int) string { return fmt.Sprintf("bench-node-%d", n) }
	if err := parallel(nPods, 8, func(i int) error {
		p := pod(ns, podName(i), setLabels(i%nSets))
		p.Spec.NodeName = nodeName(nodeOf(i))
		return admin.Create(ctx, p)
	}); err != nil {
		t.Fatal(err)
	}
	tIDsPods := time.Since(phase)

	// The agents.
	phase = time.Now()
	nodes := make([]*benchNode, nNodes)
	for n := range nodes {
		bn := &benchNode{name: nodeName(n), pinDir: dt.PinDir(t), cidr: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(100 + n), 0}), 24),
			inner: map[uint32]*ebpf.Map{}, bySet: map[int][]uint32{}, ips: map[string]netip.Addr{}, ids: map[string]uint32{}}
		d, err := datapath.Load(datapath.Config{PinDir: bn.pinDir, EventsBytes: 1 << 16, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		bn.dp = d
		if err := d.SetRuntimeConfig(datapath.RuntimeConfig{Enforcement: datapath.EnforceDefault,
			Flags: datapath.ConfigAllowHostIngress}); err != nil {
			t.Fatal(err)
		}
		bn.enf, err = agent.NewEnforcer(agent.EnforcerConfig{Datapath: benchDatapath{agent.NewBPFDatapath(d)}, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		c, err := k8s.New(k8s.Config{RestConfig: rest.CopyConfig(env.Config), NodeName: bn.name, Enforcer: bn.enf,
			AllocateIdentities: true, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		bn.ctrl = c
		bn.m, err = agent.NewManager(agent.Config{StateDir: t.TempDir(), PodCIDR: bn.cidr, Datapath: bn.enf.Datapath(),
			Labels: c.LabelSource(), Identities: c.IdentityAllocator(), PolicyFlags: bn.enf.PolicyFlags,
			LinkExists: func(string, int) bool { return true }, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if err := bn.m.Restore(); err != nil {
			t.Fatal(err)
		}
		bn.enf.Attach(bn.m)
		actx, acancel := context.WithCancel(ctx)
		bn.cancel = acancel
		c.Start(actx)
		if bn.outer, err = ebpf.LoadPinnedMap(filepath.Join(bn.pinDir, datapath.MapPolicy), nil); err != nil {
			t.Fatal(err)
		}
		nodes[n] = bn
	}
	defer func() {
		for _, bn := range nodes {
			bn.stop()
		}
	}()
	eventually(t, "agents synced", func() error {
		for _, bn := range nodes {
			if h := bn.ctrl.Health(); !h.Synced {
				return fmt.Errorf("%s: %+v", bn.name, h)
			}
		}
		return nil
	})
	tAgents := time.Since(phase)

	// Endpoints, as sigil-cni's ADD creates them (dummy host interfaces),
	// then the pods' IPs in their status, as the kubelet reports them.
	phase = time.Now()
	if err := parallel(nPods, nNodes*2, func(i int) error {
		bn := nodes[nodeOf(i)]
		mac := fmt.Sprintf("02:00:%02x:%02x:%02x:01", nodeOf(i), i>>8&0xff, i&0xff)
		ep, err := bn.m.Create(apitypes.EndpointRequest{ContainerID: "cid-" + podName(i), IfName: "eth0",
			NetNS: "/proc/self/ns/net", HostIfName: fmt.Sprintf("bh%05d", i), HostIfIndex: 100000 + i,
			HostMAC: "02:00:00:00:00:01", MAC: mac, PodNamespace: ns, PodName: podName(i)})
		if err != nil {
			return fmt.Errorf("endpoint of %s: %w", podName(i), err)
		}
		bn.mu.Lock()
		bn.bySet[i%nSets] = append(bn.bySet[i%nSets], ep.ID)
		bn.ips[podName(i)] = ep.Addresses[0].IP
		bn.ids[podName(i)] = ep.ID
		bn.mu.Unlock()
		var p corev1.Pod
		if err := admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: podName(i)}, &p); err != nil {
			return err
		}
		ip := ep.Addresses[0].IP.String()
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		return admin.Status().Update(ctx, &p)
	}); err != nil {
		t.Fatal(err)
	}
	tEndpoints := time.Since(phase)
	phase = time.Now()
	// Settled: every local endpoint on its identity, and every node's
	// ipcache has the other nodes' pods (from the operator's SigilEndpoints).
	setOf := map[datapath.Identity]int{}
	for s, id := range ids {
		setOf[id] = s
	}
	ipcWant := nPods
	k8stest.Eventually(t, 3*time.Minute, func() (bool, error) {
		for _, bn := range nodes {
			for _, ep := range bn.enf.Endpoints() {
				s, ok := setOf[ep.Identity]
				if !ep.Computed || !ok {
					return false, fmt.Errorf("%s: endpoint %d (%s) on identity %d", bn.name, ep.ID, ep.PodName, ep.Identity)
				}
				if i, _ := strconv.Atoi(strings.TrimPrefix(ep.PodName, "p")); i%nSets != s {
					return false, fmt.Errorf("%s: %s on the wrong identity", bn.name, ep.PodName)
				}
			}
			all, err := bn.dp.IPCache.List()
			if err != nil {
				return false, err
			}
			if len(all) < ipcWant {
				return false, fmt.Errorf("%s: %d ipcache entries, want >= %d (local + remote pods)", bn.name, len(all), ipcWant)
			}
		}
		return true, nil
	})
	tSettle := time.Since(phase)
	t.Logf("setup: identities+pods %v, %d agents started+synced %v, %d endpoints + pod status %v, settled (identities resolved, remote pods in every ipcache) %v",
		tIDsPods.Round(time.Millisecond), nNodes, tAgents.Round(time.Millisecond), nPods, tEndpoints.Round(time.Millisecond), tSettle.Round(time.Millisecond))
	time.Sleep(2 * time.Second) // let the operator's and agents' queues drain
	load1 := loadavg()

	// Policy k: subject app=a<k> (1 identity, nPods/nSets pods) for
	// k < nSets, else tier=t<k%10> (nSets/10 identities); peers grp=g<k%5>
	// (nSets/5 identities); TCP port 10000+k. Applied one at a time; each
	// is waited for on every node before the next.
	type result struct {
		name      string
		endpoints int
		keys      int
		delay     time.Duration // Create returned -> last endpoint's entries in place
		withWrite time.Duration // Create called -> same
		spread    time.Duration // first node done -> last node done
	}
	var results []result
	c0, s0, b0 := histSnapshot(t)
	if path := os.Getenv("SIGIL_BENCH_CPUPROFILE"); path != "" { // the policies phase
		f, err := os.Create(path + ".policies")
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	for k := 0; k < nPolicies; k++ {
		var subject map[string]string
		var sets []int
		if k < nSets {
			subject = map[string]string{"app": fmt.Sprintf("a%03d", k)}
			sets = []int{k}
		} else {
			subject = map[string]string{"tier": fmt.Sprintf("t%d", k%10)}
			for s := k % 10; s < nSets; s += 10 {
				sets = append(sets, s)
			}
		}
		port := uint16(10000 + k)
		var keys []benchKey
		for s := k % 5; s < nSets; s += 5 {
			keys = append(keys, ingressTCPKey(ids[s], port))
		}
		var targets []*target
		for _, bn := range nodes {
			for _, s := range sets {
				for _, ep := range bn.bySet[s] {
					targets = append(targets, &target{node: bn, ep: ep})
				}
			}
		}
		np := tcpPolicy(ns, fmt.Sprintf("pol-%03d", k), subject, map[string]string{"grp": fmt.Sprintf("g%d", k%5)}, int32(port))
		t0 := time.Now()
		if err := admin.Create(ctx, np); err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		done, err := waitEntries(targets, keys, 30*time.Second)
		if err != nil {
			t.Fatalf("policy %s: %v", np.Name, err)
		}
		if err := verifyEntries(targets, keys); err != nil {
			t.Fatalf("policy %s: %v", np.Name, err)
		}
		first, last := time.Time{}, time.Time{}
		for _, d := range done {
			if first.IsZero() || d.Before(first) {
				first = d
			}
			if d.After(last) {
				last = d
			}
		}
		results = append(results, result{name: np.Name, endpoints: len(targets), keys: len(keys),
			delay: last.Sub(t1), withWrite: last.Sub(t0), spread: last.Sub(first)})
	}
	pprof.StopCPUProfile()
	c1, s1, b1 := histSnapshot(t)
	gapPolicies := maxGap
	maxGap = 0

	// One policy selecting every pod, from every pod of the namespace.
	var allKeys []benchKey
	for s := range nSets {
		allKeys = append(allKeys, ingressTCPKey(ids[s], 9999))
	}
	var allTargets []*target
	for _, bn := range nodes {
		for _, eps := range bn.bySet {
			for _, ep := range eps {
				allTargets = append(allTargets, &target{node: bn, ep: ep})
			}
		}
	}
	np := tcpPolicy(ns, "all-pods", map[string]string{}, map[string]string{}, 9999)
	if path := os.Getenv("SIGIL_BENCH_CPUPROFILE"); path != "" { // the all-pods phase only
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	t0 := time.Now()
	if err := admin.Create(ctx, np); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	doneAll, err := waitEntries(allTargets, allKeys, 60*time.Second)
	if err != nil {
		t.Fatalf("all-pods policy: %v", err)
	}
	pprof.StopCPUProfile()
	if err := verifyEntries(allTargets, allKeys); err != nil {
		t.Fatalf("all-pods policy: %v", err)
	}
	var nodeDone []string
	var convergence time.Duration
	for _, bn := range nodes {
		d := doneAll[bn.name].Sub(t1)
		convergence = max(convergence, d)
		nodeDone = append(nodeDone, fmt.Sprintf("%s %v", bn.name, d.Round(time.Millisecond)))
	}
	// Each agent observes its delay just after writing the maps: wait for
	// all of them.
	c2, s2, b2 := histSnapshot(t)
	for wait := time.Now(); c2-c1 < uint64(nNodes) && time.Since(wait) < 10*time.Second; {
		time.Sleep(10 * time.Millisecond)
		c2, s2, b2 = histSnapshot(t)
	}
	load2 := loadavg()

	// Cross-check through the datapath package's own reader: a sample
	// endpoint per node holds exactly what the policies put there.
	for _, bn := range nodes {
		ep := bn.bySet[0][0]
		entries, err := bn.dp.Policy.List(ep)
		if err != nil {
			t.Fatal(err)
		}
		want := map[datapath.PolicyKey]bool{}
		for k := 0; k < nPolicies; k++ {
			if (k < nSets && k == 0) || (k >= nSets && k%10 == 0) {
				for s := k % 5; s < nSets; s += 5 {
					want[datapath.PolicyKey{Identity: ids[s], Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: uint16(10000 + k), PortPrefixLen: 16}] = true
				}
			}
		}
		for s := range nSets {
			want[datapath.PolicyKey{Identity: ids[s], Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 9999, PortPrefixLen: 16}] = true
		}
		if len(entries) != len(want) {
			t.Errorf("%s endpoint %d: %d entries, want %d", bn.name, ep, len(entries), len(want))
		}
		for k := range want {
			if e, ok := entries[k]; !ok || e.Deny {
				t.Errorf("%s endpoint %d lacks %v", bn.name, ep, k)
				break
			}
		}
	}

	// Report.
	delays := make([]time.Duration, len(results))
	withW := make([]time.Duration, len(results))
	var worst result
	var spreadMax time.Duration
	narrow, wide := []time.Duration{}, []time.Duration{}
	for i, r := range results {
		delays[i], withW[i] = r.delay, r.withWrite
		if r.delay > worst.delay {
			worst = r
		}
		spreadMax = max(spreadMax, r.spread)
		if i < nSets {
			narrow = append(narrow, r.delay)
		} else {
			wide = append(wide, r.delay)
		}
	}
	for _, s := range [][]time.Duration{delays, withW, narrow, wide} {
		slices.Sort(s)
	}
	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	var b strings.Builder
	fmt.Fprintf(&b, "\n=== Sigil control-plane scale benchmark ===\n")
	fmt.Fprintf(&b, "setup: 1 kube-apiserver+etcd (envtest), operator reconcilers in-process, %d simulated nodes (in-process agents, own bpffs pin dir each, real BPF maps, tc attach skipped),\n", nNodes)
	fmt.Fprintf(&b, "       %d pods (%d per node), %d identities (every identity on every node), %d NetworkPolicies applied one at a time, then 1 policy selecting all pods\n",
		nPods, podsPerNode, nSets, nPolicies)
	fmt.Fprintf(&b, "machine: %d CPUs (GOMAXPROCS %d), load average before %s, after setup %s, at end %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), load0, load1, load2)
	fmt.Fprintf(&b, "setup took: identities+pods %v, agents %v, endpoints+pod status %v, settle %v\n",
		tIDsPods.Round(time.Millisecond), tAgents.Round(time.Millisecond), tEndpoints.Round(time.Millisecond), tSettle.Round(time.Millisecond))
	fmt.Fprintf(&b, "\npolicy implementation delay, Create returned -> entries in the policy map of every selected endpoint on every node (polled every 2 ms, exact-key lookups):\n")
	fmt.Fprintf(&b, "  all %d policies:                   p50 %s  p99 %s  max %s  (worst %s: %d endpoints x %d entries)\n",
		len(delays), ms(quantile(delays, .5)), ms(quantile(delays, .99)), ms(delays[len(delays)-1]), worst.name, worst.endpoints, worst.keys)
	fmt.Fprintf(&b, "  including the Create call:          p50 %s  p99 %s  max %s\n", ms(quantile(withW, .5)), ms(quantile(withW, .99)), ms(withW[len(withW)-1]))
	fmt.Fprintf(&b, "  %3d policies on 1 identity (%d pods, %d entries each):    p50 %s  p99 %s  max %s\n",
		len(narrow), nPods/nSets, nSets/5, ms(quantile(narrow, .5)), ms(quantile(narrow, .99)), ms(narrow[len(narrow)-1]))
	if len(wide) > 0 {
		fmt.Fprintf(&b, "  %3d policies on %d identities (%d pods, %d entries each): p50 %s  p99 %s  max %s\n",
			len(wide), nSets/10, nPods/10, nSets/5, ms(quantile(wide, .5)), ms(quantile(wide, .99)), ms(wide[len(wide)-1]))
	}
	fmt.Fprintf(&b, "  max spread between the first and the last node done for one policy: %s\n", ms(spreadMax))
	fmt.Fprintf(&b, "  poller: longest gap between two rounds %s (the resolution of these figures)\n", ms(gapPolicies))
	fmt.Fprintf(&b, "agents' own histogram sigil_policy_implementation_delay_seconds (informer event -> maps written, per agent; bucket bounds):\n")
	fmt.Fprintf(&b, "  the %d policies: %d observations, mean %s, p50 %s, p99 %s\n", nPolicies, c1-c0,
		ms(time.Duration((s1-s0)/float64(max(c1-c0, 1))*float64(time.Second))), histQuantile(c0, c1, b0, b1, .5), histQuantile(c0, c1, b0, b1, .99))
	fmt.Fprintf(&b, "  the all-pods policy: %d observations, mean %s, max %s\n", c2-c1,
		ms(time.Duration((s2-s1)/float64(max(c2-c1, 1))*float64(time.Second))), histQuantile(c1, c2, b1, b2, 1))
	fmt.Fprintf(&b, "\nconvergence after one policy selecting all %d pods (%d entries each, %d map entries in all): %s after Create returned (%s including the call)\n",
		nPods, len(allKeys), nPods*len(allKeys), ms(convergence), ms(convergence+t1.Sub(t0)))
	fmt.Fprintf(&b, "  per node: %s\n", strings.Join(nodeDone, ", "))
	fmt.Fprintf(&b, "  poller: longest gap between two rounds %s\n", ms(maxGap))
	p99 := quantile(delays, .99)
	fmt.Fprintf(&b, "\ntargets: p99 < 1s: %v (%s); convergence < 5s: %v (%s)\n", p99 < time.Second, ms(p99), convergence < 5*time.Second, ms(convergence))
	fmt.Fprintf(&b, "total wall time %v\n", time.Since(wall).Round(time.Second))
	fmt.Print(b.String())
	if out := os.Getenv("SIGIL_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/internal/testnet"
	"github.com/sigil-net/sigil/policy"
)

// runCLI runs the sigil command line with args and returns its output.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot(&options{args: args}) // args: the command line --node passes on
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCLI(t, args...)
	if err != nil {
		t.Fatalf("sigil %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// appIdentities gives each app a fixed cluster identity, as the operator
// would.
type appIdentities map[string]uint32

func (a appIdentities) AllocateIdentity(l map[string]string) (uint32, error) {
	id, ok := a[l["k8s:app"]]
	if !ok {
		return 0, fmt.Errorf("no identity for %v", l)
	}
	return id, nil
}

type e2ePod struct {
	name string
	app  string
	tp   *testnet.Pod
	ep   apitypes.Endpoint
}

// e2eAgent is the agent's components wired as sigil-agent wires them, in
// process, on the real BPF datapath of a node namespace; policy comes
// straight into the enforcer, as the Kubernetes controller hands it over.
type e2eAgent struct {
	socket, pinDir string
	dp             *datapath.Datapath
	enf            *agent.Enforcer
	pods           map[string]*e2ePod
}

func startE2EAgent(t *testing.T) *e2eAgent {
	t.Helper()
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	gw := netip.MustParseAddr("198.18.40.1")
	node, err := testnet.CreateNode(gw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Delete() })
	a := &e2eAgent{pinDir: dt.PinDir(t), socket: filepath.Join(t.TempDir(), "sigil.sock"), pods: map[string]*e2ePod{}}
	a.dp, err = datapath.Load(datapath.Config{PinDir: a.pinDir, NetNS: node.NS.Path, Logger: log, EventsBytes: 1 << 18})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.dp.Close() })
	if err := a.dp.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows}); err != nil {
		t.Fatal(err)
	}
	if err := a.dp.IPCache.Upsert(netip.PrefixFrom(gw, 32), datapath.IPCacheEntry{Identity: datapath.IdentityHost}); err != nil {
		t.Fatal(err)
	}
	bpf := agent.NewBPFDatapath(a.dp)
	a.enf, err = agent.NewEnforcer(agent.EnforcerConfig{Datapath: bpf, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ids := appIdentities{"frontend": 1100, "db": 1200, "intruder": 1300}
	m, err := agent.NewManager(agent.Config{StateDir: t.TempDir(), PodCIDR: netip.MustParsePrefix("198.18.40.0/24"),
		Datapath: a.enf.Datapath(), PolicyFlags: a.enf.PolicyFlags, Identities: ids,
		LinkExists: func(string, int) bool { return true }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	a.enf.Attach(m)
	for app, id := range ids {
		if err := a.enf.UpsertIdentity(datapath.Identity(id), identity.Labels{"k8s:app": app, "k8s:io.kubernetes.pod.namespace": "shop"}); err != nil {
			t.Fatal(err)
		}
	}
	a.enf.MarkSynced()

	// Endpoints, in the order IPAM hands out addresses (.2, .3, .4).
	for i, app := range []string{"frontend", "db", "intruder"} {
		ip := netip.MustParseAddr(fmt.Sprintf("198.18.40.%d", i+2))
		tp, err := node.AddPod(ip, fmt.Sprintf("lxce%d", i))
		if err != nil {
			t.Fatal(err)
		}
		hostMAC, err := node.NS.HardwareAddr(tp.HostIf)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := m.Create(apitypes.EndpointRequest{ContainerID: "c-" + app, IfName: "eth0", NetNS: tp.NS.Path,
			HostIfName: tp.HostIf, HostIfIndex: tp.IfIndex, HostMAC: hostMAC.String(), MAC: tp.MAC.String(),
			PodNamespace: "shop", PodName: app, Labels: map[string]string{"app": app}})
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addresses[0].IP != ip {
			t.Fatalf("%s got %s, want %s", app, ep.Addresses[0].IP, ip)
		}
		srv, err := tp.NS.StartServer(ip.String() + ":5432")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		srv2, err := tp.NS.StartServer(ip.String() + ":8080")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv2.Close)
		a.pods[app] = &e2ePod{name: "shop/" + app, app: app, tp: tp, ep: ep}
	}

	srv := agent.NewServer(m, log)
	ln, err := agent.Listen(a.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rd, err := a.dp.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	pipe := flows.New(flows.Config{Resolver: agent.NewFlowResolver(m, srv.PolicyView), Lost: a.dp.Metrics.Events, Logger: log})
	done := make(chan struct{})
	go func() { pipe.Run(ctx, rd); close(done) }()
	srv.SetObservability(agent.Observability{Flows: pipe, Maps: a.dp.Maps, DatapathMode: string(a.dp.Mode()),
		PinDir: a.pinDir, Started: time.Now()})
	srv.SetPolicyView(a.enf.PolicyView())
	go srv.Serve(ln)
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Shutdown(context.Background())
	})
	return a
}

// shopPolicies: db accepts frontend on TCP 5432 (a NetworkPolicy, so db's
// ingress is default-deny), and explicitly denies intruder on 5432.
func shopPolicies(t *testing.T) []*policy.Policy {
	tcp := func(p int) networkingv1.NetworkPolicyPort {
		proto := "TCP"
		port := intstr.FromInt32(int32(p))
		p2 := corev1.Protocol(proto)
		return networkingv1.NetworkPolicyPort{Protocol: &p2, Port: &port}
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-ingress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}},
				Ports: []networkingv1.NetworkPolicyPort{tcp(5432)},
			}},
		},
	}
	p1, err := policy.FromNetworkPolicy(np)
	if err != nil {
		t.Fatal(err)
	}
	port := intstr.FromInt32(5432)
	sp := &sigilv1.SigilNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "no-intruders"},
		Spec: sigilv1.PolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			IngressDeny: []sigilv1.IngressRule{{
				From:    []sigilv1.Peer{{Endpoints: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "intruder"}}}},
				ToPorts: []sigilv1.PortRule{{Port: &port, Protocol: "TCP"}},
			}},
		},
	}
	p2, err := policy.FromSigilPolicy(sp)
	if err != nil {
		t.Fatal(err)
	}
	return []*policy.Policy{p1, p2}
}

func TestEndToEnd(t *testing.T) {
	a := startE2EAgent(t)
	for _, p := range shopPolicies(t) {
		a.enf.UpsertPolicy(p, time.Now())
	}
	sock := "--socket=" + a.socket
	pin := "--pin-dir=" + a.pinDir
	front, db, intruder := a.pods["frontend"], a.pods["db"], a.pods["intruder"]

	t.Run("denied connection is observed within a second", func(t *testing.T) {
		start := time.Now()
		if err := intruder.tp.NS.TCP(db.ep.Addresses[0].IP.String()+":5432", 300*time.Millisecond); err == nil {
			t.Fatal("intruder reached db:5432")
		}
		var f *apitypes.Flow
		for deadline := start.Add(time.Second + 300*time.Millisecond); f == nil && time.Now().Before(deadline); {
			out := mustCLI(t, "observe", sock, "--verdict", "DROPPED", "--from-pod", "shop/intruder", "--last", "5", "-o", "json")
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var rec apitypes.FlowRecord
				if line != "" && json.Unmarshal([]byte(line), &rec) == nil && rec.Flow != nil {
					f = rec.Flow
				}
			}
			if f == nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if f == nil {
			t.Fatal("no DROPPED flow from shop/intruder within a second")
		}
		t.Logf("observed after %s: %s", time.Since(start).Round(time.Millisecond), FlowLine(f))
		if f.Source.PodName != "intruder" || f.Destination.PodName != "db" || f.Destination.Port != 5432 ||
			f.Policy == nil || f.Policy.PolicyName() != "SigilNetworkPolicy/shop/no-intruders" || !f.Policy.Deny ||
			f.DropReason != datapath.DropPolicyDeny.String() {
			t.Fatalf("flow %+v (policy %+v)", f, f.Policy)
		}
		line := mustCLI(t, "observe", sock, "--verdict", "DROPPED", "--from-pod", "shop/intruder", "--last", "1")
		for _, want := range []string{"shop/intruder:", "shop/db:5432", "DROPPED (policy denied)", "SigilNetworkPolicy/shop/no-intruders ingressDeny[0]"} {
			if !strings.Contains(line, want) {
				t.Errorf("observe line %q lacks %q", line, want)
			}
		}
	})

	t.Run("default deny names the enforcing policy", func(t *testing.T) {
		front.tp.NS.TCP(db.ep.Addresses[0].IP.String()+":8080", 300*time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		out := mustCLI(t, "observe", sock, "--verdict", "DROPPED", "--to-pod", "shop/db", "--port", "8080", "--last", "1", "-o", "json")
		var rec apitypes.FlowRecord
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &rec); err != nil || rec.Flow == nil {
			t.Fatalf("%q: %v", out, err)
		}
		if rec.Flow.DropReason != "policy default deny" || len(rec.Flow.EnforcedBy) == 0 || rec.Flow.EnforcedBy[0] != "NetworkPolicy/shop/db-ingress" {
			t.Fatalf("%+v", rec.Flow)
		}
	})

	t.Run("explain agrees with the datapath", func(t *testing.T) {
		for _, c := range []struct {
			from, to *e2ePod
			port     int
		}{
			{front, db, 5432}, {front, db, 8080}, {intruder, db, 5432}, {intruder, db, 8080},
			{db, front, 8080}, {intruder, front, 5432}, {front, intruder, 5432},
		} {
			err := c.from.tp.NS.TCP(fmt.Sprintf("%s:%d", c.to.ep.Addresses[0].IP, c.port), 400*time.Millisecond)
			delivered := err == nil
			out := mustCLI(t, "policy", "explain", sock, "--from", c.from.name, "--to", c.to.name, "--port", fmt.Sprintf("%d/tcp", c.port), "-o", "json")
			var x apitypes.Explanation
			if err := json.Unmarshal([]byte(out), &x); err != nil {
				t.Fatal(err)
			}
			want := "DROPPED"
			if delivered {
				want = "FORWARDED"
			}
			if x.Verdict != want || !x.Agree {
				t.Errorf("%s -> %s:%d: delivered=%v, explain says %s (agree=%v)\n%s", c.from.name, c.to.name, c.port, delivered, x.Verdict, x.Agree, out)
			}
		}
		out := squeeze(mustCLI(t, "policy", "explain", sock, "--from", "shop/intruder", "--to", "shop/db", "--port", "5432/tcp"))
		if !strings.Contains(out, "decided by: SigilNetworkPolicy/shop/no-intruders ingressDeny[0]") ||
			!strings.Contains(out, "installed maps: DROPPED (policy denied)") {
			t.Errorf("explain table:\n%s", out)
		}
	})

	t.Run("policy, selectors, identities", func(t *testing.T) {
		out := mustCLI(t, "policy", "get", sock)
		if !strings.Contains(out, "NetworkPolicy/shop/db-ingress") || !strings.Contains(out, "SigilNetworkPolicy/shop/no-intruders") {
			t.Errorf("policy get:\n%s", out)
		}
		out = mustCLI(t, "policy", "selectors", sock, "-o", "json")
		var sels apitypes.SelectorList
		if err := json.Unmarshal([]byte(out), &sels); err != nil || len(sels.Selectors) == 0 {
			t.Fatalf("selectors %q: %v", out, err)
		}
		found := false
		for _, s := range sels.Selectors {
			if strings.Contains(s.Selector, "frontend") && len(s.Identities) == 1 && s.Identities[0] == 1100 {
				found = true
			}
		}
		if !found {
			t.Errorf("no selector of frontend -> 1100: %s", out)
		}
		out = mustCLI(t, "identity", "get", sock, "1200")
		if !strings.Contains(out, "k8s:app=db") {
			t.Errorf("identity get:\n%s", out)
		}
	})

	t.Run("bpf commands match the maps", func(t *testing.T) {
		var eps []BPFEndpoint
		if err := json.Unmarshal([]byte(mustCLI(t, "bpf", "endpoint", "list", pin, "-o", "json")), &eps); err != nil {
			t.Fatal(err)
		}
		want, _ := a.dp.Endpoints.List()
		if len(eps) != len(want) {
			t.Fatalf("%d endpoints, maps have %d", len(eps), len(want))
		}
		for _, e := range eps {
			w := want[e.IP]
			if w.ID != e.ID || uint32(w.Identity) != e.Identity || uint32(w.Flags) != e.Flags || w.MAC.String() != e.MAC {
				t.Errorf("endpoint %s: cli %+v, map %+v", e.IP, e, w)
			}
		}
		var pol BPFPolicy
		if err := json.Unmarshal([]byte(mustCLI(t, "bpf", "policy", "get", pin, fmt.Sprint(db.ep.ID), "-o", "json")), &pol); err != nil {
			t.Fatal(err)
		}
		entries, _ := a.dp.Policy.List(db.ep.ID)
		if len(pol.Entries) != len(entries) || pol.Enforced != "ingress" {
			t.Fatalf("policy %+v, map %v", pol, entries)
		}
		for _, e := range pol.Entries {
			k := datapath.PolicyKey{Identity: datapath.Identity(e.Identity), Protocol: protoNum(e.Protocol), Port: e.Port, PortPrefixLen: e.PrefixLen}
			if e.Direction == "egress" {
				k.Direction = datapath.Egress
			}
			me, ok := entries[k]
			if !ok || me.Cookie != e.Cookie || me.Deny != (e.Verdict == "deny") {
				t.Errorf("entry %+v not in the map (%+v)", e, me)
			}
		}
		var ipc BPFIPCacheEntry
		if err := json.Unmarshal([]byte(mustCLI(t, "bpf", "ipcache", "get", pin, front.ep.Addresses[0].IP.String(), "-o", "json")), &ipc); err != nil {
			t.Fatal(err)
		}
		if ipc.Identity != 1100 || !ipc.LocalEndpoint || ipc.Prefix.Bits() != 32 {
			t.Errorf("ipcache get %+v", ipc)
		}
		out := mustCLI(t, "bpf", "ct", "list", pin, "-o", "json")
		var cts []BPFCTEntry
		if err := json.Unmarshal([]byte(out), &cts); err != nil {
			t.Fatal(err)
		}
		all, _ := a.dp.Conntrack.List()
		live := 0
		for _, e := range all {
			if e.Expires >= 0 {
				live++
			}
		}
		if len(cts) != live || live == 0 {
			t.Errorf("ct list: %d entries, map has %d live", len(cts), live)
		}
		var ms BPFMetrics
		if err := json.Unmarshal([]byte(mustCLI(t, "bpf", "metrics", pin, "-o", "json")), &ms); err != nil {
			t.Fatal(err)
		}
		drops := uint64(0)
		for _, c := range ms.Counters {
			if c.Reason == datapath.DropPolicyDeny.String() {
				drops += c.Packets
			}
		}
		if drops == 0 {
			t.Errorf("bpf metrics shows no policy denied drops: %+v", ms)
		}
		mustCLI(t, "bpf", "ct", "flush", pin, "--ip", front.ep.Addresses[0].IP.String())
	})

	t.Run("status", func(t *testing.T) {
		out := mustCLI(t, "status", sock, pin, "--verbose")
		for _, want := range []string{"Agent:", "Ok", "Datapath:", strings.ToUpper(string(a.dp.Mode())), "sigil_ct4",
			"Endpoints: 3", "Policy: 2 policies in force", "Flows lost:"} {
			if !strings.Contains(squeeze(out), want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		// The agent is down (another socket): status reads the maps and fails.
		out, err := runCLI(t, "status", "--socket", filepath.Join(t.TempDir(), "none.sock"), pin)
		if err == nil || !strings.Contains(err.Error(), "agent not running on this node: is the sigil-agent pod ready?") ||
			!strings.Contains(out, "sigil_endpoints") {
			t.Errorf("status without agent: %v\n%s", err, out)
		}
	})
}

func protoNum(name string) uint8 {
	for _, p := range []uint8{datapath.ProtoAny, datapath.ProtoICMP, datapath.ProtoTCP, datapath.ProtoUDP, datapath.ProtoSCTP} {
		if datapath.ProtoName(p) == name {
			return p
		}
	}
	return 0
}

// squeeze collapses runs of spaces (tabwriter padding).
func squeeze(s string) string {
	for strings.Contains(s, "  ") {
		s = strings.ReplaceAll(s, "  ", " ")
	}
	return s
}

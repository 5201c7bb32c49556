package cli

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/datapath"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) {
	time.Local = time.UTC // golden outputs print times in the local zone
	os.Exit(m.Run())
}

// fakeView is a PolicyView with fixed answers.
type fakeView struct{}

var denyRule = apitypes.PolicyRule{Cookie: 7, Kind: "SigilNetworkPolicy", Namespace: "shop", Name: "no-intruders", RuleList: "ingressDeny", Deny: true}

func (fakeView) Identities() ([]apitypes.Identity, error) {
	return []apitypes.Identity{
		{ID: 1, Kind: "reserved", Labels: []string{"reserved:host"}},
		{ID: 2, Kind: "reserved", Labels: []string{"reserved:world"}},
		{ID: 1100, Kind: "cluster", Labels: []string{"k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"}},
		{ID: 1200, Kind: "cluster", Labels: []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=shop"}},
	}, nil
}

func (fakeView) Policies() ([]apitypes.Policy, error) {
	return []apitypes.Policy{
		{Kind: "NetworkPolicy", Namespace: "shop", Name: "db-ingress", Selector: "k8s:app In (db),k8s:io.kubernetes.pod.namespace In (shop)",
			Enforces: []string{"ingress"}, Rules: []string{"ingress[0]: peers {k8s:app In (frontend)}; ports TCP/5432"}, SelectedEndpoints: 1},
		{Kind: "SigilNetworkPolicy", Namespace: "shop", Name: "no-intruders", Selector: "k8s:app In (db)",
			Enforces: []string{"ingress"}, Rules: []string{"ingressDeny[0]: peers {k8s:app In (intruder)}; ports TCP/5432"}, SelectedEndpoints: 1},
	}, nil
}

func (fakeView) Selectors() ([]apitypes.Selector, error) {
	return []apitypes.Selector{{Selector: "labels:k8s:app In (frontend)", Identities: []uint32{1100}},
		{Selector: "labels:k8s:app In (intruder)", Identities: []uint32{}}}, nil
}

func (fakeView) Rule(c uint32) (apitypes.PolicyRule, bool) { return denyRule, c == 7 }

func (fakeView) EnforcedBy(ep uint32, dir datapath.Direction) []string {
	if ep == 2 && dir == datapath.Ingress {
		return []string{"NetworkPolicy/shop/db-ingress"}
	}
	return nil
}

func (fakeView) Explain(from, to apitypes.ExplainPeer, proto uint8, port uint16) ([]apitypes.ExplainVerdict, error) {
	r := denyRule
	r.Cookie = 0
	return []apitypes.ExplainVerdict{
		{EndpointID: from.EndpointID, Direction: "egress", Verdict: "FORWARDED", Reason: "forwarded"},
		{EndpointID: to.EndpointID, Direction: "ingress", Enforced: true, Verdict: "DROPPED", Reason: "policy denied",
			Decided: &r, Denying: []apitypes.PolicyRule{r}},
	}, nil
}

type links map[string]bool

func (l links) exists(name string, _ int) bool { return l[name] }

// startFakeAgent serves the API on a MemDatapath with two endpoints and a
// flow pipeline holding fixed flows; withPolicy plugs in fakeView.
func startFakeAgent(t *testing.T, withPolicy bool) string {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := agent.NewManager(agent.Config{StateDir: t.TempDir(), PodCIDR: netip.MustParsePrefix("198.18.50.0/24"),
		Datapath: agent.NewMemDatapath(), LinkExists: links{}.exists, Logger: log,
		Identities: appIdentities{"frontend": 1100, "db": 1200}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	for i, app := range []string{"frontend", "db"} {
		if _, err := m.Create(apitypes.EndpointRequest{ContainerID: "c-" + app, IfName: "eth0", NetNS: "/proc/1/ns/net",
			HostIfName: "lxc" + app, HostIfIndex: 10 + i, HostMAC: "02:00:00:00:00:01", MAC: "02:00:00:00:01:0" + string(rune('1'+i)),
			PodNamespace: "shop", PodName: app, Labels: map[string]string{"app": app}}); err != nil {
			t.Fatal(err)
		}
	}
	srv := agent.NewServer(m, log)
	if withPolicy {
		srv.SetPolicyView(fakeView{})
	}
	pipe := flows.New(flows.Config{Capacity: 16, Resolver: agent.NewFlowResolver(m, srv.PolicyView)})
	base := time.Date(2026, 3, 14, 15, 9, 26, 535000000, time.UTC)
	front, db, world := netip.MustParseAddr("198.18.50.2"), netip.MustParseAddr("198.18.50.3"), netip.MustParseAddr("198.19.7.7")
	ev := func(d time.Duration, src, dst netip.Addr, sid, did datapath.Identity, proto uint8, sport, dport uint16, dir datapath.Direction, r datapath.Reason, cookie uint32) datapath.FlowEvent {
		e := datapath.FlowEvent{Time: base.Add(d), EndpointID: 2, IfIndex: 11, SrcIdentity: sid, DstIdentity: did, Src: src, Dst: dst,
			SrcPort: sport, DstPort: dport, Proto: proto, Direction: dir, Type: datapath.EventPolicyVerdict,
			Verdict: datapath.VerdictForwarded, Reason: r, Cookie: cookie, Length: 60}
		if proto == datapath.ProtoTCP {
			e.TCPFlags = 0x02
		}
		if r.IsDrop() {
			e.Type, e.Verdict = datapath.EventDrop, datapath.VerdictDropped
		}
		return e
	}
	pipe.Ingest(ev(0, front, db, 1100, 1200, datapath.ProtoTCP, 40001, 5432, datapath.Ingress, datapath.ReasonForwarded, 3))
	pipe.Ingest(ev(time.Second, front, db, 1100, 1200, datapath.ProtoTCP, 40002, 8080, datapath.Ingress, datapath.DropPolicyDefault, 0))
	pipe.Ingest(ev(2*time.Second, world, db, 2, 1200, datapath.ProtoTCP, 50000, 5432, datapath.Ingress, datapath.DropPolicyDeny, 7))
	pipe.Ingest(ev(3*time.Second, world, db, 2, 1200, datapath.ProtoICMP, 0, 8<<8, datapath.Ingress, datapath.DropPolicyDefault, 0))
	pipe.Ingest(ev(4*time.Second, db, front, 1200, 1100, datapath.ProtoUDP, 53000, 53, datapath.Egress, datapath.ReasonForwarded, 0))
	srv.SetObservability(agent.Observability{Flows: pipe, DatapathMode: "none"})
	sock := filepath.Join(t.TempDir(), "sigil.sock")
	ln, err := agent.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return sock
}

var timestamps = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)

func golden(t *testing.T, name, got string) {
	t.Helper()
	got = timestamps.ReplaceAllString(got, "<time>")
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -run %s -update)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

func TestGolden(t *testing.T) {
	sock := "--socket=" + startFakeAgent(t, true)
	for _, c := range []struct {
		name string
		args []string
	}{
		{"status", []string{"status"}},
		{"status-json", []string{"status", "-o", "json"}},
		{"endpoint-list", []string{"endpoint", "list"}},
		{"endpoint-list-json", []string{"endpoint", "list", "-o", "json"}},
		{"endpoint-get", []string{"endpoint", "get", "shop/db"}},
		{"identity-list", []string{"identity", "list"}},
		{"identity-get-yaml", []string{"identity", "get", "1200", "-o", "yaml"}},
		{"policy-get", []string{"policy", "get"}},
		{"policy-get-one", []string{"policy", "get", "db-ingress"}},
		{"policy-selectors", []string{"policy", "selectors"}},
		{"policy-explain", []string{"policy", "explain", "--from", "shop/frontend", "--to", "shop/db", "--port", "5432/tcp"}},
		{"policy-explain-json", []string{"policy", "explain", "--from", "shop/frontend", "--to", "shop/db", "--port", "5432/tcp", "-o", "json"}},
		{"observe", []string{"observe"}},
		{"observe-dropped", []string{"observe", "--verdict", "dropped", "--to-pod", "shop/db"}},
		{"observe-json", []string{"observe", "--last", "2", "-o", "json"}},
		{"observe-port-label", []string{"observe", "--port", "53", "--label", "app=frontend"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			golden(t, c.name, mustCLI(t, append(c.args, sock)...))
		})
	}
}

func TestErrors(t *testing.T) {
	sock := "--socket=" + startFakeAgent(t, false)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"observe", "--verdict", "MAYBE"}, `--verdict "MAYBE": want one of FORWARDED, DROPPED`},
		{[]string{"observe", "--type", "l7"}, `--type "l7": want one of policy-verdict, drop, trace`},
		{[]string{"observe", "--port", "0"}, `--port "0": want a port 1-65535`},
		{[]string{"observe", "--since", "yesterday"}, `--since "yesterday": want a duration such as 5m`},
		{[]string{"observe", "--from-identity", "web"}, `--from-identity "web": want a numeric identity`},
		{[]string{"observe", "--pod", "a/b/c"}, `--pod "a/b/c": want pod, namespace/pod or namespace/`},
		{[]string{"observe", "--last", "-3"}, `--last -3: want 0 or more`},
		{[]string{"status", "-o", "xml"}, `-o "xml": want one of table, json, yaml`},
		{[]string{"status", "--node", "node-b", "--kubeconfig", "/nonexistent/kubeconfig"}, "--node needs a Kubernetes client configuration"},
		{[]string{"policy", "get"}, "policy engine not running (agent started without Kubernetes)"},
		{[]string{"policy", "selectors"}, "policy engine not running (agent started without Kubernetes)"},
		{[]string{"policy", "explain", "--from", "shop/frontend", "--to", "shop/db", "--port", "80/tcp"}, "policy engine not running"},
		{[]string{"policy", "explain", "--from", "frontend", "--to", "shop/db", "--port", "80/tcp"}, `"frontend": want namespace/pod or an IP address`},
		{[]string{"policy", "explain", "--from", "shop/a", "--to", "shop/db", "--port", "80/gre"}, `--port "80/gre": protocol "gre"`},
		{[]string{"policy", "explain", "--from", "shop/a", "--to", "shop/db"}, "--port is required"},
		{[]string{"identity", "get", "abc"}, `identity "abc": want a number`},
		{[]string{"identity", "get", "4242"}, "identity 4242 is not known to this agent"},
		{[]string{"endpoint", "get", "shop/nope"}, `no endpoint "shop/nope" on this node`},
		{[]string{"bpf", "policy", "get", "x"}, `endpoint "x": want a numeric endpoint ID`},
		{[]string{"bpf", "ipcache", "get", "nope"}, `"nope": want an IP address`},
		{[]string{"bpf", "endpoint", "list", "--pin-dir", "/sys/fs/bpf/sigil-does-not-exist"}, "no Sigil maps pinned under /sys/fs/bpf/sigil-does-not-exist"},
	} {
		out, err := runCLI(t, append(c.args, sock)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sigil %s: got error %v (output %q), want %q", strings.Join(c.args, " "), err, out, c.want)
		}
	}
	_, err := runCLI(t, "endpoint", "list", "--socket", filepath.Join(t.TempDir(), "gone.sock"))
	if err == nil || !strings.Contains(err.Error(), "agent not running on this node: is the sigil-agent pod ready?") {
		t.Errorf("unreachable agent: %v", err)
	}
	// Without the policy engine, identities are the reserved and local ones.
	out := mustCLI(t, "identity", "list", sock)
	if !strings.Contains(out, "1100") || !strings.Contains(out, "reserved:world") {
		t.Errorf("identity list without the engine:\n%s", out)
	}
}

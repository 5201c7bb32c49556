package policy

import (
	"net/netip"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
)

// resolve maps an address to its identity as the ipcache would: pod /32s
// first, then the most specific policy CIDR prefix, else world.
func (c *cluster) resolve(ip netip.Addr) datapath.Identity {
	for _, p := range c.pods {
		if p.ip == ip {
			return p.id
		}
	}
	best, id := -1, datapath.IdentityWorld
	for pfx, pid := range c.eng.IPCache() {
		if pfx.Contains(ip) && pfx.Bits() > best {
			best, id = pfx.Bits(), pid
		}
	}
	return id
}

func sigilPolicy(t testing.TB, doc string) *Policy {
	t.Helper()
	var snp v1alpha1.SigilNetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &snp); err != nil {
		t.Fatal(err)
	}
	p, err := FromSigilPolicy(&snp)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func k8sPolicy(t testing.TB, doc string) *Policy {
	t.Helper()
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
		t.Fatal(err)
	}
	p, err := FromNetworkPolicy(&np)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type flow struct {
	src, dst string // "ns/pod" or an IP
	proto    uint8
	port     uint16
	allowed  bool
}

// check evaluates flows; for an external side only the pod side's policy
// applies.
func (c *cluster) check(t *testing.T, flows []flow) {
	t.Helper()
	for _, f := range flows {
		got := true
		srcID, dstID := c.sideID(f.src), c.sideID(f.dst)
		if p, ok := c.pods[f.src]; ok {
			got = got && mirrorEval(c.installed[p.epID], datapath.Egress, dstID, f.proto, f.port) == datapath.ReasonForwarded
		}
		if p, ok := c.pods[f.dst]; ok {
			got = got && mirrorEval(c.installed[p.epID], datapath.Ingress, srcID, f.proto, f.port) == datapath.ReasonForwarded
		}
		if got != f.allowed {
			t.Errorf("%s -> %s proto %d port %d: allowed=%v, want %v", f.src, f.dst, f.proto, f.port, got, f.allowed)
		}
	}
}

func (c *cluster) sideID(s string) datapath.Identity {
	if p, ok := c.pods[s]; ok {
		return p.id
	}
	if id, ok := map[string]datapath.Identity{"host": datapath.IdentityHost, "remote-node": datapath.IdentityRemoteNode}[s]; ok {
		return id
	}
	return c.resolve(netip.MustParseAddr(s))
}

const tcp, udp, icmp = datapath.ProtoTCP, datapath.ProtoUDP, datapath.ProtoICMP

func TestPolicySemantics(t *testing.T) {
	cases := []struct {
		name    string
		sigil   []string
		k8s     []string
		flows   []flow
		ipcache []string
	}{
		{name: "deny wins over allow, per port", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{endpoints: {}}]}]
  ingressDeny: [{from: [{endpoints: {matchLabels: {pod: b}}}], toPorts: [{port: 80, protocol: TCP}]}]`},
			flows: []flow{{"x/b", "x/a", tcp, 80, false}, {"x/b", "x/a", tcp, 81, true}, {"x/b", "x/a", udp, 80, true},
				{"x/c", "x/a", tcp, 80, true}, {"y/b", "x/a", tcp, 81, false}}},
		{name: "deny-only policy turns on default deny", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingressDeny: [{from: [{endpoints: {matchLabels: {pod: b}}}]}]`},
			flows: []flow{{"x/b", "x/a", tcp, 80, false}, {"x/c", "x/a", tcp, 80, false}, {"x/a", "x/c", tcp, 80, true}}},
		{name: "empty rule: default deny only", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{}]`},
			flows: []flow{{"x/a", "x/b", tcp, 80, false}, {"x/a", "8.8.8.8", udp, 53, false}, {"y/a", "x/b", tcp, 80, true}}},
		{name: "egress to world and CIDR except", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress:
  - to: [{entity: world}]
    toPorts: [{port: 443, protocol: TCP}]
  - to: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  egressDeny: [{to: [{cidr: 10.2.0.0/16}], toPorts: [{port: 22}]}]`},
			flows: []flow{{"x/a", "8.8.8.8", tcp, 443, true}, {"x/a", "8.8.8.8", tcp, 80, false},
				{"x/a", "10.9.0.1", udp, 53, true}, {"x/a", "10.1.2.3", udp, 53, false}, {"x/a", "10.1.2.3", tcp, 443, true},
				{"x/a", "10.2.0.1", tcp, 22, false}, {"x/a", "10.2.0.1", udp, 22, false}, {"x/a", "10.2.0.1", tcp, 23, true},
				{"x/a", "11.0.0.1", udp, 53, false}, {"x/a", "z/c", tcp, 80, false}, {"x/a", "y/a", tcp, 443, false}},
			ipcache: []string{"10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"}},
		{name: "entities", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{entity: host}, {entity: remote-node}]}]
  egress: [{to: [{entity: cluster}]}]`},
			flows: []flow{{"host", "x/a", tcp, 80, true}, {"remote-node", "x/a", tcp, 80, true}, {"y/b", "x/a", tcp, 80, false},
				{"x/a", "z/b", udp, 9, true}, {"x/a", "1.1.1.1", udp, 9, false}}},
		{name: "port ranges, overlapping allow and deny, icmp", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{entity: all}]
    toPorts: [{port: 1000, endPort: 2000, protocol: TCP}, {port: 1500, protocol: TCP}]
    icmps: [{type: 8}, {type: 3, code: 4}]
  ingressDeny: [{from: [{endpoints: {matchLabels: {pod: b}}}], toPorts: [{port: 1400, endPort: 1600, protocol: TCP}]}]`},
			flows: []flow{{"x/c", "x/a", tcp, 999, false}, {"x/c", "x/a", tcp, 1000, true}, {"x/c", "x/a", tcp, 2000, true},
				{"x/c", "x/a", tcp, 2001, false}, {"x/b", "x/a", tcp, 1399, true}, {"x/b", "x/a", tcp, 1400, false},
				{"x/b", "x/a", tcp, 1500, false}, {"x/b", "x/a", tcp, 1600, false}, {"x/b", "x/a", tcp, 1601, true},
				{"x/c", "x/a", udp, 1500, false}, {"x/c", "x/a", icmp, 8 << 8, true}, {"x/c", "x/a", icmp, 8<<8 | 1, true},
				{"x/c", "x/a", icmp, 0, false}, {"x/c", "x/a", icmp, 3<<8 | 4, true}, {"x/c", "x/a", icmp, 3<<8 | 3, false}}},
		{name: "named ports both directions", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{entity: all}], toPorts: [{port: serve-81-udp}]}]
  egress: [{to: [{entity: all}], toPorts: [{port: serve-80-tcp, protocol: TCP}, {port: 53, protocol: UDP}]}]`},
			flows: []flow{{"x/b", "x/a", udp, 81, true}, {"x/b", "x/a", udp, 80, false}, {"x/b", "x/a", tcp, 81, false},
				{"x/a", "y/b", tcp, 80, true}, {"x/a", "y/b", tcp, 81, false}, {"x/a", "8.8.8.8", tcp, 80, false},
				{"x/a", "8.8.8.8", udp, 53, true}}},
		{name: "namespace label and name selectors", sigil: []string{`
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{endpoints: {matchLabels: {pod: b}}, namespaceSelector: {matchLabels: {ns: "y"}}}]
  - from: [{endpoints: {matchLabels: {io.kubernetes.pod.namespace: z, pod: c}}}]`},
			flows: []flow{{"y/b", "x/a", tcp, 80, true}, {"x/b", "x/a", tcp, 80, false}, {"z/c", "x/a", tcp, 80, true},
				{"z/b", "x/a", tcp, 80, false}, {"y/c", "x/a", tcp, 80, false}}},
		{name: "k8s: endPort, ipBlock matches pods, policyTypes egress only", k8s: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{}]
  egress:
  - to: [{ipBlock: {cidr: 192.168.1.0/24, except: [192.168.1.0/28]}}]
    ports: [{port: 80, endPort: 90}]`},
			flows: []flow{{"x/a", "y/a", tcp, 85, true}, {"x/a", "y/a", tcp, 91, false}, {"x/a", "y/a", udp, 85, false},
				{"x/a", "x/c", tcp, 85, false}, {"x/a", "192.168.1.200", tcp, 80, true}, {"x/a", "192.168.1.1", tcp, 80, false},
				{"y/a", "x/a", tcp, 1, true}},
			ipcache: []string{"192.168.1.0/24", "192.168.1.0/28"}},
		{name: "k8s: namespaceSelector AND podSelector in one peer vs two peers", k8s: []string{`
metadata: {name: one, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: b}}}]}]`, `
metadata: {name: two, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: "y"}}}, {podSelector: {matchLabels: {pod: b}}}]}]`},
			flows: []flow{{"y/b", "x/a", tcp, 80, true}, {"y/a", "x/a", tcp, 80, false}, {"x/b", "x/a", tcp, 80, false},
				{"y/a", "x/c", tcp, 80, true}, {"x/b", "x/c", tcp, 80, true}, {"z/b", "x/c", tcp, 80, false}}},
		{name: "k8s: empty from allows all, absent ingress denies all", k8s: []string{`
metadata: {name: all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: []}]`, `
metadata: {name: none, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}`},
			flows: []flow{{"z/c", "x/a", udp, 7, true}, {"8.8.8.8", "x/a", udp, 7, true}, {"x/a", "x/b", tcp, 80, false},
				{"x/b", "x/a", tcp, 80, true}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newFixture(t)
			for _, d := range tc.sigil {
				c.upsertPolicy(sigilPolicy(t, d))
			}
			for _, d := range tc.k8s {
				c.upsertPolicy(k8sPolicy(t, d))
			}
			c.checkConsistent()
			c.check(t, tc.flows)
			ipc := c.eng.IPCache()
			if len(ipc) != len(tc.ipcache) {
				t.Errorf("ipcache %v, want prefixes %v", ipc, tc.ipcache)
			}
			for _, p := range tc.ipcache {
				if id, ok := ipc[netip.MustParsePrefix(p)]; !ok || id&datapath.IdentityLocalFlag == 0 {
					t.Errorf("ipcache lacks %s with a local identity: %v", p, ipc)
				}
			}
		})
	}
}

func TestNoAllowUnderBroaderDeny(t *testing.T) {
	c := newFixture(t)
	c.upsertPolicy(sigilPolicy(t, `
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{endpoints: {matchLabels: {pod: b}}}], toPorts: [{port: 80, protocol: TCP}, {port: 81, protocol: UDP}]}]
  ingressDeny: [{from: [{endpoints: {matchLabels: {pod: b}}}], toPorts: [{protocol: TCP}]}]`))
	ep, _ := c.eng.EndpointPolicy(c.pods["x/a"].epID)
	for k, v := range ep.Entries {
		if !v.Deny && k.Protocol == tcp {
			t.Fatalf("allow %s kept under a broader deny: %s", k, dump(ep))
		}
	}
	if len(ep.Entries) != 2 {
		t.Fatalf("want a TCP deny and a UDP allow: %s", dump(ep))
	}
}

func TestCapacityFailsClosed(t *testing.T) {
	c := newCluster(t, 4)
	c.addNamespace("x", map[string]string{"ns": "x"})
	c.addPod("x", "a", map[string]string{"pod": "a"}, netip.MustParseAddr("10.0.0.1"))
	c.addPod("x", "b", map[string]string{"pod": "b"}, netip.MustParseAddr("10.0.0.2"))
	p := sigilPolicy(t, `
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{entity: all}], toPorts: [{port: 1, protocol: TCP}, {port: 3, protocol: TCP}, {port: 5, protocol: TCP}, {port: 7, protocol: TCP}, {port: 9, protocol: TCP}]}]`)
	c.upsertPolicy(p)
	a := c.pods["x/a"]
	ep, _ := c.eng.EndpointPolicy(a.epID)
	both := datapath.EndpointEnforceIngress | datapath.EndpointEnforceEgress
	if !ep.OverCapacity || len(ep.Entries) != 0 || ep.Flags != both {
		t.Fatalf("not failed closed: %s", dump(ep))
	}
	c.checkConsistent()
	c.check(t, []flow{{"x/b", "x/a", tcp, 1, false}, {"x/a", "x/b", tcp, 1, false}})
	if pc, _ := c.eng.PolicyCounts(p.Ref); pc.SelectedEndpoints != 1 || pc.EndpointsOverCapacity != 1 {
		t.Fatalf("policy counts %+v", pc)
	}
	if m := c.eng.Metrics(); m.EndpointsOverCapacity != 1 {
		t.Fatalf("metrics %+v", m)
	}
	p.Rules[0].Ports = p.Rules[0].Ports[:2]
	c.upsertPolicy(p)
	c.checkConsistent()
	c.check(t, []flow{{"x/b", "x/a", tcp, 1, true}, {"x/b", "x/a", tcp, 5, false}, {"x/a", "x/b", tcp, 1, true}})
}

func TestIncrementalIdentityTouchesOnlyAffected(t *testing.T) {
	c := newFixture(t)
	c.upsertPolicy(sigilPolicy(t, `
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{from: [{endpoints: {matchLabels: {pod: c}}, namespaceSelector: {matchLabels: {ns: "y"}}}]}]`))
	c.addNamespace("w", map[string]string{"ns": "w"})
	ch, _ := c.eng.UpsertIdentity(9000, c.filter.SecurityLabels("w", map[string]string{"pod": "c"}, c.nsLabels["w"]))
	if len(ch.Endpoints) != 0 {
		t.Fatalf("unrelated identity changed endpoints: %+v", ch.Endpoints)
	}
	ch, _ = c.eng.UpsertIdentity(9001, c.filter.SecurityLabels("y", map[string]string{"pod": "c", "v": "2"}, c.nsLabels["y"]))
	if len(ch.Endpoints) != 3 {
		t.Fatalf("want the 3 pods of x updated, got %+v", ch.Endpoints)
	}
	for _, u := range ch.Endpoints {
		if len(u.Deletes) != 0 || len(u.Upserts) != 1 {
			t.Fatalf("want one new entry: %+v", u)
		}
		for k := range u.Upserts {
			if k.Identity != 9001 {
				t.Fatalf("entry for %d", k.Identity)
			}
		}
	}
	ch = c.eng.RemoveIdentity(9001)
	if len(ch.Endpoints) != 3 || len(ch.Endpoints[0].Deletes) != 1 {
		t.Fatalf("remove: %+v", ch.Endpoints)
	}
}

func TestExplainAndCookies(t *testing.T) {
	c := newFixture(t)
	c.upsertPolicy(sigilPolicy(t, `
metadata: {name: web, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{entity: all}], toPorts: [{port: 80, protocol: TCP}]}]
  ingressDeny: [{from: [{endpoints: {matchLabels: {pod: b}}}]}]`))
	a, b, cc := c.pods["x/a"], c.pods["x/b"], c.pods["x/c"]
	x := c.eng.Explain(FlowPeer{cc.epID, cc.id}, FlowPeer{a.epID, a.id}, tcp, 80)
	if !x.Allowed || len(x.Verdicts) != 2 || x.Verdicts[1].Decided == nil ||
		x.Verdicts[1].Decided.String() != "SigilNetworkPolicy/x/web ingress[0]" {
		t.Fatalf("explain allow: %+v\n%s", x, x)
	}
	x = c.eng.Explain(FlowPeer{b.epID, b.id}, FlowPeer{a.epID, a.id}, tcp, 80)
	v := x.Verdicts[1]
	if x.Allowed || v.Reason != datapath.DropPolicyDeny || v.Decided.RuleList() != "ingressDeny" ||
		len(v.Allowing) != 1 || len(v.Denying) != 1 {
		t.Fatalf("explain deny: %+v", x)
	}
	x = c.eng.Explain(FlowPeer{cc.epID, cc.id}, FlowPeer{a.epID, a.id}, tcp, 81)
	if x.Allowed || x.Verdicts[1].Reason != datapath.DropPolicyDefault || !strings.Contains(x.String(), "default deny") {
		t.Fatalf("explain default: %s", x)
	}
	ep, _ := c.eng.EndpointPolicy(a.epID)
	for _, e := range ep.Entries {
		if info, ok := c.eng.Cookie(e.Cookie); !ok || info.Policy.Name != "web" {
			t.Fatalf("cookie %d: %v %v", e.Cookie, info, ok)
		}
	}
	c.deletePolicy(PolicyRef{Kind: KindSigilNetworkPolicy, Namespace: "x", Name: "web"})
	if _, ok := c.eng.Cookie(1); ok {
		t.Fatal("cookie kept after policy removal")
	}
}

func TestTranslateErrors(t *testing.T) {
	bad := []string{
		"metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{}]}]",
		"metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]",
		"metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 90}]}]",
		"metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: In}]}",
	}
	for _, d := range bad {
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(d), &np); err != nil {
			t.Fatal(err)
		}
		if _, err := FromNetworkPolicy(&np); err == nil {
			t.Errorf("accepted: %s", d)
		}
	}
	var snp v1alpha1.SigilNetworkPolicy
	_ = yaml.Unmarshal([]byte("metadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {}\n  egress: [{to: [{cidr: 10.0.0.0/8, entity: world}]}]"), &snp)
	if _, err := FromSigilPolicy(&snp); err == nil || !strings.Contains(err.Error(), "spec.egress[0].to[0]") {
		t.Errorf("sigil error %v does not name the field", err)
	}
}

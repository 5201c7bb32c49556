package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/sigil-net/sigil/datapath"
)

var oracleProtos = []struct {
	num  uint8
	k8s  corev1.Protocol
	name string
}{{datapath.ProtoTCP, corev1.ProtocolTCP, "tcp"}, {datapath.ProtoUDP, corev1.ProtocolUDP, "udp"}, {datapath.ProtoSCTP, corev1.ProtocolSCTP, "sctp"}}

// TestCyclonusOracle compiles every case of cyclonus's generator over the
// usual fixture and compares, for every (source pod, destination pod, port,
// protocol), the verdict of the compiled entries under the datapath's
// lookup semantics with the verdict of cyclonus's matcher.
func TestCyclonusOracle(t *testing.T) {
	runOracle(t, mirrorEval, 1)
}

// runOracle checks every sample-th generated case (all when sample is 1).
func runOracle(t *testing.T, eval evalFunc, sample int) {
	gen := generator.NewTestCaseGenerator(false, "192.168.1.10", []string{"x", "y", "z"}, nil, nil)
	cases := gen.GenerateAllTestCases()
	var nCases, nSteps, nPairs, nDenied, failures int
	for i, tc := range cases {
		if i%sample != 0 {
			continue
		}
		c := newFixture(t)
		policies := map[string]*networkingv1.NetworkPolicy{}
		for s, step := range tc.Steps {
			for _, a := range step.Actions {
				applyAction(c, policies, a)
			}
			c.checkConsistent()
			n, denied, bad := comparePairs(c, policies, eval)
			nPairs += n
			nDenied += denied
			nSteps++
			for _, b := range bad {
				if failures++; failures <= 20 {
					t.Errorf("case %d %q step %d: %s", i, tc.Description, s, b)
				}
			}
		}
		nCases++
	}
	t.Logf("cyclonus oracle: %d cases, %d steps, %d (source, destination, port, protocol) pairs checked (%d denied by the oracle), %d mismatches",
		nCases, nSteps, nPairs, nDenied, failures)
	if nCases*sample < 100 {
		t.Fatalf("only %d cases generated", nCases*sample)
	}
}

func applyAction(c *cluster, policies map[string]*networkingv1.NetworkPolicy, a *generator.Action) {
	switch {
	case a.CreatePolicy != nil:
		policies[a.CreatePolicy.Policy.Namespace+"/"+a.CreatePolicy.Policy.Name] = a.CreatePolicy.Policy
		c.upsertNetworkPolicy(a.CreatePolicy.Policy)
	case a.UpdatePolicy != nil:
		policies[a.UpdatePolicy.Policy.Namespace+"/"+a.UpdatePolicy.Policy.Name] = a.UpdatePolicy.Policy
		c.upsertNetworkPolicy(a.UpdatePolicy.Policy)
	case a.DeletePolicy != nil:
		delete(policies, a.DeletePolicy.Namespace+"/"+a.DeletePolicy.Name)
		c.deletePolicy(PolicyRef{Kind: KindNetworkPolicy, Namespace: a.DeletePolicy.Namespace, Name: a.DeletePolicy.Name})
	case a.CreateNamespace != nil:
		c.addNamespace(a.CreateNamespace.Namespace, a.CreateNamespace.Labels)
	case a.SetNamespaceLabels != nil:
		c.setNamespaceLabels(a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels)
	case a.DeleteNamespace != nil:
		for k, p := range policies {
			if p.Namespace == a.DeleteNamespace.Namespace {
				delete(policies, k)
			}
		}
		c.deleteNamespace(a.DeleteNamespace.Namespace)
	case a.CreatePod != nil:
		c.addPod(a.CreatePod.Namespace, a.CreatePod.Pod, a.CreatePod.Labels, netip.Addr{})
	case a.SetPodLabels != nil:
		if p, ok := c.pods[a.SetPodLabels.Namespace+"/"+a.SetPodLabels.Pod]; ok {
			c.relabel(p, a.SetPodLabels.Labels)
		}
	case a.DeletePod != nil:
		c.deletePod(a.DeletePod.Namespace, a.DeletePod.Pod)
	}
}

// comparePairs checks every pod pair on ports 80 and 81 over TCP, UDP and
// SCTP, and returns the count, how many the oracle denies, and the
// mismatches.
func comparePairs(c *cluster, policies map[string]*networkingv1.NetworkPolicy, eval evalFunc) (int, int, []string) {
	var list []*networkingv1.NetworkPolicy
	for _, p := range policies {
		list = append(list, p)
	}
	oracle := matcher.BuildNetworkPolicies(true, list)
	pods := c.sortedPods()
	n, denied := 0, 0
	var bad []string
	for _, src := range pods {
		for _, dst := range pods {
			for _, port := range []uint16{80, 81} {
				for _, pr := range oracleProtos {
					n++
					want := oracle.IsTrafficAllowed(&matcher.Traffic{
						Source:           c.trafficPeer(src),
						Destination:      c.trafficPeer(dst),
						ResolvedPort:     int(port),
						ResolvedPortName: fmt.Sprintf("serve-%d-%s", port, pr.name),
						Protocol:         pr.k8s,
					}).IsAllowed()
					if !want {
						denied++
					}
					if got := c.verdict(eval, src, dst, pr.num, port); got != want {
						bad = append(bad, fmt.Sprintf("%s/%s -> %s/%s %s/%d: sigil allowed=%v, oracle allowed=%v\negress: %s\ningress: %s",
							src.ns, src.name, dst.ns, dst.name, pr.k8s, port, got, want,
							dump(c.installed[src.epID]), dump(c.installed[dst.epID])))
					}
				}
			}
		}
	}
	return n, denied, bad
}

func (c *cluster) trafficPeer(p *testPod) *matcher.TrafficPeer {
	return &matcher.TrafficPeer{IP: p.ip.String(), Internal: &matcher.InternalPeer{
		PodLabels: p.labels, NamespaceLabels: c.nsLabels[p.ns], Namespace: p.ns}}
}

// TestCyclonusOracleDetectsErrors makes sure the comparison has teeth: an
// evaluator that ignores deny entries and default deny must disagree.
func TestCyclonusOracleDetectsErrors(t *testing.T) {
	c := newFixture(t)
	policies := map[string]*networkingv1.NetworkPolicy{}
	gen := generator.NewTestCaseGenerator(false, "192.168.1.10", []string{"x", "y", "z"}, nil, nil)
	for _, a := range gen.GenerateAllTestCases()[0].Steps[0].Actions {
		applyAction(c, policies, a)
	}
	allowAll := func(EndpointPolicy, datapath.Direction, datapath.Identity, uint8, uint16) datapath.Reason {
		return datapath.ReasonForwarded
	}
	if _, denied, bad := comparePairs(c, policies, allowAll); denied == 0 || len(bad) != denied {
		t.Fatalf("allow-all evaluator: %d denied pairs, %d mismatches", denied, len(bad))
	}
}

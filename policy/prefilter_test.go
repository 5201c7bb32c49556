package policy

import (
	"math/rand"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sigil-net/sigil/api/v1alpha1"
)

func pfPeer(cidr string, except ...string) v1alpha1.Peer {
	return v1alpha1.Peer{CIDR: cidr, Except: except}
}

func pfPolicy(name string, sel map[string]string, rules ...v1alpha1.IngressRule) *v1alpha1.SigilClusterwideNetworkPolicy {
	p := &v1alpha1.SigilClusterwideNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.EndpointSelector = metav1.LabelSelector{MatchLabels: sel}
	p.Spec.IngressDeny = rules
	return p
}

func TestPrefilterRules(t *testing.T) {
	port80 := intstr.FromInt32(80)
	policies := []*v1alpha1.SigilClusterwideNetworkPolicy{
		pfPolicy("block", nil, v1alpha1.IngressRule{From: []v1alpha1.Peer{
			pfPeer("203.0.113.0/24", "203.0.113.128/25"),
			{Entity: v1alpha1.EntityWorld}, // not a CIDR peer: tc only
		}}),
		// Another rule denies part of the first rule's except: it stays denied.
		pfPolicy("block-more", nil, v1alpha1.IngressRule{From: []v1alpha1.Peer{pfPeer("203.0.113.192/26")}}),
		// Does not qualify: selects some endpoints only.
		pfPolicy("some", map[string]string{"app": "db"}, v1alpha1.IngressRule{From: []v1alpha1.Peer{pfPeer("192.0.2.0/24")}}),
		// Does not qualify: port-specific.
		pfPolicy("ports", nil, v1alpha1.IngressRule{From: []v1alpha1.Peer{pfPeer("198.51.100.0/24")},
			ToPorts: []v1alpha1.PortRule{{Port: &port80}}}),
		// IPv6 waits for the IPv6 list.
		pfPolicy("v6", nil, v1alpha1.IngressRule{From: []v1alpha1.Peer{pfPeer("2001:db8::/32")}}),
	}
	static := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}
	rules, err := PrefilterRules(policies, static)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rules {
		if r.Except {
			t.Errorf("policy-derived list has an except entry %v", r)
		}
		got = append(got, r.Prefix.String())
	}
	want := []string{"100.64.0.0/10", "203.0.113.0/25", "203.0.113.192/26"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if _, err := PrefilterRules(nil, []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}); err == nil {
		t.Error("an IPv6 static entry was accepted")
	}
}

// TestPrefilterRulesExact compares the produced list with a direct
// evaluation of the rules on random addresses.
func TestPrefilterRulesExact(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	randPrefix := func(min, max int) netip.Prefix {
		bits := min + rng.Intn(max-min+1)
		a := [4]byte{198, 18, byte(rng.Intn(4)), byte(rng.Intn(256))}
		return netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked()
	}
	for iter := 0; iter < 200; iter++ {
		var pols []*v1alpha1.SigilClusterwideNetworkPolicy
		for i := 0; i < 1+rng.Intn(4); i++ {
			base := randPrefix(20, 28)
			var ex []string
			for j := 0; j < rng.Intn(3); j++ {
				e := randPrefix(base.Bits(), 32)
				ex = append(ex, e.String())
			}
			pols = append(pols, pfPolicy("p", nil, v1alpha1.IngressRule{From: []v1alpha1.Peer{pfPeer(base.String(), ex...)}}))
		}
		rules, err := PrefilterRules(pols, nil)
		if err != nil {
			t.Fatal(err)
		}
		for probe := 0; probe < 300; probe++ {
			a := netip.AddrFrom4([4]byte{198, 18, byte(rng.Intn(4)), byte(rng.Intn(256))})
			want := false
			for _, p := range pols {
				peer := p.Spec.IngressDeny[0].From[0]
				in := netip.MustParsePrefix(peer.CIDR).Contains(a)
				for _, e := range peer.Except {
					if netip.MustParsePrefix(e).Contains(a) {
						in = false
					}
				}
				want = want || in
			}
			got := false
			for _, r := range rules {
				got = got || r.Prefix.Contains(a)
			}
			if got != want {
				t.Fatalf("iteration %d: %s denied=%v, rules say %v (rules %v)", iter, a, got, want, rules)
			}
		}
	}
}

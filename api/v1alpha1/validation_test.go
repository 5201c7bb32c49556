package v1alpha1

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestPolicySpecValidate(t *testing.T) {
	port := func(p intstr.IntOrString) *intstr.IntOrString { return &p }
	end := func(v int32) *int32 { return &v }
	all := []Peer{{Entity: EntityAll}}
	cases := []struct {
		name string
		spec PolicySpec
		want string
	}{
		{"ok", PolicySpec{Ingress: []IngressRule{{From: []Peer{{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}},
			ToPorts: []PortRule{{Port: port(intstr.FromInt32(80)), EndPort: end(90)}, {Port: port(intstr.FromString("http"))}}}}}, ""},
		{"bad selector", PolicySpec{EndpointSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}}, "spec.endpointSelector"},
		{"except outside", PolicySpec{Egress: []EgressRule{{To: []Peer{{CIDR: "10.0.0.0/8", Except: []string{"10.0.0.0/7"}}}}}}, "spec.egress[0].to[0].except[0]"},
		{"mixed family", PolicySpec{Egress: []EgressRule{{To: []Peer{{CIDR: "10.0.0.0/8", Except: []string{"::/0"}}}}}}, "must lie inside cidr"},
		{"two kinds", PolicySpec{EgressDeny: []EgressRule{{To: []Peer{{CIDR: "10.0.0.0/8", Entity: EntityWorld}}}}}, "exactly one"},
		{"named endPort", PolicySpec{Egress: []EgressRule{{To: all, ToPorts: []PortRule{{Port: port(intstr.FromString("http")), EndPort: end(9)}}}}}, "endPort needs a numeric port"},
		{"bad name", PolicySpec{Egress: []EgressRule{{To: all, ToPorts: []PortRule{{Port: port(intstr.FromString("HTTP_X"))}}}}}, "spec.egress[0].toPorts[0].port"},
		{"ports no peers", PolicySpec{IngressDeny: []IngressRule{{ToPorts: []PortRule{{}}}}}, "spec.ingressDeny[0].from"},
		{"entity", PolicySpec{Ingress: []IngressRule{{From: []Peer{{Entity: "moon"}}}}}, "Unsupported value"},
	}
	for _, c := range cases {
		errs := c.spec.Validate()
		if c.want == "" && len(errs) > 0 || c.want != "" && (len(errs) == 0 || !strings.Contains(errs.ToAggregate().Error(), c.want)) {
			t.Errorf("%s: got %v, want %q", c.name, errs.ToAggregate(), c.want)
		}
	}
}

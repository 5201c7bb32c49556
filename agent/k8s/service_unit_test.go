package k8s_test

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/sigil-net/sigil/agent/k8s"
)

func TestDesiredServices(t *testing.T) {
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: "10.96.0.5",
		ClusterIPs: []string{"10.96.0.5", "fd00::5"}, SessionAffinity: corev1.ServiceAffinityClientIP,
		Ports: []corev1.ServicePort{{Name: "a", Port: 80}, {Name: "b", Port: 53, Protocol: corev1.ProtocolUDP},
			{Name: "c", Port: 9, Protocol: corev1.ProtocolSCTP}}}}
	slice := func(af discoveryv1.AddressType, ports map[string]int32, ips ...string) discoveryv1.EndpointSlice {
		es := discoveryv1.EndpointSlice{AddressType: af}
		for n, p := range ports {
			proto := corev1.ProtocolTCP
			if n == "b" {
				proto = corev1.ProtocolUDP
			}
			es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(p), Protocol: ptr.To(proto)})
		}
		for _, ip := range ips {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}})
		}
		return es
	}
	eps := []discoveryv1.EndpointSlice{
		slice(discoveryv1.AddressTypeIPv4, map[string]int32{"a": 8080, "b": 5353}, "198.18.1.2", "198.18.1.1"),
		// The same endpoint in a second slice (moving between slices), on
		// another port number for "a" (pods differ in their named port).
		slice(discoveryv1.AddressTypeIPv4, map[string]int32{"a": 9090}, "198.18.1.1", "198.18.1.3"),
		slice(discoveryv1.AddressTypeIPv6, map[string]int32{"a": 8080}, "fd00::1"),
	}
	got, skipped := k8s.DesiredServices(svc, eps)
	if fmt.Sprint(skipped) != "[9/SCTP]" {
		t.Errorf("skipped %v", skipped)
	}
	if len(got) != 2 {
		t.Fatalf("got %d services: %+v", len(got), got)
	}
	if got[0].Frontend.String() != "10.96.0.5:80/TCP" || got[0].Affinity != 10800*time.Second ||
		fmt.Sprint(got[0].Backends) != "[{198.18.1.1 8080} {198.18.1.1 9090} {198.18.1.2 8080} {198.18.1.3 9090}]" {
		t.Errorf("port a: %+v", got[0])
	}
	if got[1].Frontend.String() != "10.96.0.5:53/UDP" || fmt.Sprint(got[1].Backends) != "[{198.18.1.1 5353} {198.18.1.2 5353}]" {
		t.Errorf("port b: %+v", got[1])
	}
	for _, s := range []*corev1.Service{
		{Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: svc.Spec.Ports}},
		{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com", Ports: svc.Spec.Ports}},
		{Spec: corev1.ServiceSpec{Ports: svc.Spec.Ports}},
	} {
		if got, _ := k8s.DesiredServices(s, eps); len(got) != 0 {
			t.Errorf("%+v: got %+v, want none", s.Spec, got)
		}
	}
}

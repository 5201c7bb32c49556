package policy

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// byteSource turns fuzz input into choices; exhausted input reads zeros.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) pick(n int) int {
	if s.i >= len(s.b) {
		return 0
	}
	v := int(s.b[s.i])
	s.i++
	return v % n
}

var (
	fuzzCIDRs   = []string{"10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "8.8.8.0/24", "0.0.0.0/0"}
	fuzzExcepts = [][]string{nil, {"10.1.0.0/16"}, {"192.168.1.0/28"}, {"8.8.8.8/32"}, {"10.0.0.0/8"}}
	fuzzEntity  = []v1alpha1.Entity{"world", "cluster", "host", "remote-node", "all"}
	fuzzProtos  = []v1alpha1.Protocol{"TCP", "UDP", "ANY", ""}
)

func (s *byteSource) peer() v1alpha1.Peer {
	switch s.pick(3) {
	case 0:
		p := v1alpha1.Peer{Endpoints: &metav1.LabelSelector{}}
		if v := s.pick(4); v < 3 {
			p.Endpoints.MatchLabels = map[string]string{"pod": string(rune('a' + v))}
		}
		if v := s.pick(5); v < 3 {
			p.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"ns": string(rune('x' + v))}}
		} else if v == 3 {
			p.NamespaceSelector = &metav1.LabelSelector{}
		}
		return p
	case 1:
		c := fuzzCIDRs[s.pick(len(fuzzCIDRs))]
		var except []string
		for _, e := range fuzzExcepts[s.pick(len(fuzzExcepts))] {
			if v1alpha1.PrefixContains(netip.MustParsePrefix(c), netip.MustParsePrefix(e)) {
				except = append(except, e)
			}
		}
		return v1alpha1.Peer{CIDR: c, Except: except}
	}
	return v1alpha1.Peer{Entity: fuzzEntity[s.pick(len(fuzzEntity))]}
}

func (s *byteSource) ports() ([]v1alpha1.PortRule, []v1alpha1.ICMPRule) {
	var ports []v1alpha1.PortRule
	for n := s.pick(3); n > 0; n-- {
		pr := v1alpha1.PortRule{Protocol: fuzzProtos[s.pick(len(fuzzProtos))]}
		switch s.pick(4) {
		case 0:
			v := intstr.FromInt32(int32(79 + s.pick(3)))
			pr.Port = &v
			if s.pick(2) == 1 {
				end := v.IntVal + int32(s.pick(3))
				pr.EndPort = &end
			}
		case 1:
			v := intstr.FromString([]string{"serve-80-tcp", "serve-81-udp", "nope"}[s.pick(3)])
			pr.Port = &v
		case 2:
			v := intstr.FromInt32(1 + int32(s.pick(200))*300)
			pr.Port = &v
		}
		ports = append(ports, pr)
	}
	var icmps []v1alpha1.ICMPRule
	if s.pick(4) == 0 {
		icmps = append(icmps, v1alpha1.ICMPRule{Type: 8})
	}
	return ports, icmps
}

func (s *byteSource) spec() v1alpha1.PolicySpec {
	var spec v1alpha1.PolicySpec
	if v := s.pick(4); v < 3 {
		spec.EndpointSelector.MatchLabels = map[string]string{"pod": string(rune('a' + v))}
	}
	for list := 0; list < 4; list++ {
		for n := s.pick(3); n > 0; n-- {
			var peers []v1alpha1.Peer
			for m := s.pick(3); m > 0; m-- {
				peers = append(peers, s.peer())
			}
			ports, icmps := s.ports()
			if len(peers) == 0 {
				ports, icmps = nil, nil
			}
			switch list {
			case 0:
				spec.Ingress = append(spec.Ingress, v1alpha1.IngressRule{From: peers, ToPorts: ports, ICMPs: icmps})
			case 1:
				spec.IngressDeny = append(spec.IngressDeny, v1alpha1.IngressRule{From: peers, ToPorts: ports, ICMPs: icmps})
			case 2:
				spec.Egress = append(spec.Egress, v1alpha1.EgressRule{To: peers, ToPorts: ports, ICMPs: icmps})
			default:
				spec.EgressDeny = append(spec.EgressDeny, v1alpha1.EgressRule{To: peers, ToPorts: ports, ICMPs: icmps})
			}
		}
	}
	return spec
}

// refPeer is a flow peer for the reference evaluation.
type refPeer struct {
	pod *testPod
	ip  netip.Addr
	id  datapath.Identity
}

// referenceAllowed evaluates the normalized policies straight from their
// definition, without selector cache, entries or LPM.
func referenceAllowed(c *cluster, policies []*Policy, ep *testPod, dir datapath.Direction, peer refPeer, proto uint8, port uint16) bool {
	epLabels := c.filter.SecurityLabels(ep.ns, ep.labels, c.nsLabels[ep.ns])
	enforced, allow, deny := false, false, false
	for _, p := range policies {
		if !p.Subject.Matches(epLabels) {
			continue
		}
		enforced = enforced || p.Enforce[dir]
		for _, r := range p.Rules {
			if r.Direction != dir || !refPeersMatch(c, r.Peers, peer) || !refPortsMatch(r.Ports, ep, dir, peer, proto, port) {
				continue
			}
			if r.Deny {
				deny = true
			} else {
				allow = true
			}
		}
	}
	return !enforced || allow && !deny
}

func refPeersMatch(c *cluster, peers []Peer, peer refPeer) bool {
	for _, p := range peers {
		if refPeerMatches(c, p, peer) {
			return true
		}
	}
	return false
}

func refPeerMatches(c *cluster, p Peer, peer refPeer) bool {
	switch p.Kind {
	case PeerAll:
		return true
	case PeerLabels:
		return peer.pod != nil && p.Selector.Matches(c.filter.SecurityLabels(peer.pod.ns, peer.pod.labels, c.nsLabels[peer.pod.ns]))
	case PeerCIDR:
		if !peer.ip.IsValid() || peer.pod != nil && !p.MatchPods {
			return false
		}
		if !p.CIDR.Contains(peer.ip) {
			return false
		}
		for _, e := range p.Except {
			if e.Contains(peer.ip) {
				return false
			}
		}
		return true
	}
	switch p.Entity {
	case "world":
		return peer.pod == nil && peer.ip.IsValid()
	case "cluster":
		return peer.pod != nil || !peer.ip.IsValid()
	}
	id, _ := identity.ReservedByName(p.Entity)
	return peer.pod == nil && !peer.ip.IsValid() && peer.id == id
}

func refPortsMatch(ports []PortSpec, ep *testPod, dir datapath.Direction, peer refPeer, proto uint8, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	resolve := func(name string, proto uint8) []uint16 {
		if dir == datapath.Egress && peer.pod == nil {
			return nil
		}
		var out []uint16
		for _, np := range fixturePorts {
			if np.Name == name && np.Proto == proto {
				out = append(out, np.Port)
			}
		}
		return out
	}
	for _, p := range ports {
		if p.matchesPort(proto, port, resolve) {
			return true
		}
	}
	return false
}

// FuzzCompileSigilPolicy builds one or two random Sigil policies, compiles
// them over the fixture and checks, for pod, external and node peers, that
// the entries under the datapath's lookup give exactly the reference
// verdict (in particular never allow more than the rules say).
func FuzzCompileSigilPolicy(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{3, 1, 1, 0, 0, 0, 1, 2, 1, 1, 1, 2, 0, 0, 1, 1, 3, 2, 1, 0, 1, 1, 1, 0, 2, 2})
	f.Add([]byte{1, 2, 2, 1, 1, 0, 2, 2, 2, 0, 1, 0, 2, 1, 1, 4, 3, 2, 2, 1, 2, 0, 1, 2, 2, 1, 2, 1, 0, 1, 1, 2, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &byteSource{b: data}
		c := newFixture(t)
		var policies []*Policy
		for i := 0; i <= src.pick(2); i++ {
			snp := &v1alpha1.SigilNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("p", i), Namespace: "x"}, Spec: src.spec()}
			p, err := FromSigilPolicy(snp)
			if err != nil {
				return // invalid specs are refused, which is fine
			}
			policies = append(policies, p)
			c.upsertPolicy(p)
		}
		c.checkConsistent()
		fuzzCheck(t, c, policies)
	})
}

func fuzzCheck(t *testing.T, c *cluster, policies []*Policy) {
	var peers []refPeer
	for _, p := range c.sortedPods() {
		peers = append(peers, refPeer{pod: p, ip: p.ip, id: p.id})
	}
	for _, s := range []string{"8.8.8.8", "10.1.2.3", "10.9.9.9", "192.168.1.200", "192.168.1.1"} {
		ip := netip.MustParseAddr(s)
		peers = append(peers, refPeer{ip: ip, id: c.resolve(ip)})
	}
	peers = append(peers, refPeer{id: datapath.IdentityHost}, refPeer{id: datapath.IdentityRemoteNode})
	for _, ep := range c.sortedPods() {
		inst := c.installed[ep.epID]
		for _, peer := range peers {
			for _, dir := range []datapath.Direction{datapath.Ingress, datapath.Egress} {
				for _, fl := range []struct {
					proto uint8
					port  uint16
				}{{tcp, 79}, {tcp, 80}, {tcp, 81}, {tcp, 82}, {udp, 80}, {udp, 81}, {tcp, 301}, {icmp, 8 << 8}, {icmp, 0}} {
					got := mirrorEval(inst, dir, peer.id, fl.proto, fl.port) == datapath.ReasonForwarded
					want := referenceAllowed(c, policies, ep, dir, peer, fl.proto, fl.port)
					if got != want {
						t.Fatalf("%s/%s %s peer %+v proto %d port %d: entries allow=%v, rules allow=%v\n%s",
							ep.ns, ep.name, dir, peer, fl.proto, fl.port, got, want, dump(inst))
					}
				}
			}
		}
	}
}

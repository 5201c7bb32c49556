package flows

import (
	"net/netip"
	"strings"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// Peer is what the agent knows about an address.
type Peer struct {
	EndpointID uint32
	Namespace  string
	PodName    string
	// Labels are "source:key=value", sorted. The pipeline does not modify
	// them, so a resolver may share one slice between flows.
	Labels []string
}

// Resolver gives the pipeline what an event does not carry. Every method
// is called from the pipeline's goroutine for every event, so they must be
// cheap (map lookups).
type Resolver interface {
	// ResolveIP describes the endpoint or pod at ip.
	ResolveIP(ip netip.Addr) (Peer, bool)
	// IdentityLabels returns the security labels of an identity.
	IdentityLabels(id uint32) ([]string, bool)
	// Rule names the policy rule behind a policy map entry's cookie.
	Rule(cookie uint32) (apitypes.PolicyRule, bool)
	// EnforcedBy lists the policies that make endpoint epID default-deny
	// in direction dir.
	EnforcedBy(epID uint32, dir datapath.Direction) []string
}

type enricher struct{ r Resolver }

// TCP flag bits as in the TCP header.
var tcpFlagNames = []struct {
	bit  uint8
	name string
}{{0x02, "SYN"}, {0x10, "ACK"}, {0x01, "FIN"}, {0x04, "RST"}, {0x08, "PSH"}, {0x20, "URG"}, {0x40, "ECE"}, {0x80, "CWR"}}

// TCPFlags names TCP flag bits, e.g. "SYN,ACK".
func TCPFlags(f uint8) string {
	if f == 0 {
		return ""
	}
	var b strings.Builder
	for _, n := range tcpFlagNames {
		if f&n.bit != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n.name)
		}
	}
	return b.String()
}

// flagStrings caches TCPFlags for every value, so enrichment does not
// allocate for it.
var flagStrings = func() (out [256]string) {
	for i := range out {
		out[i] = TCPFlags(uint8(i))
	}
	return out
}()

var reasonStrings = func() (out [256]string) {
	for i := range out {
		out[i] = datapath.Reason(i).String()
	}
	return out
}()

func (e *enricher) enrich(ev *datapath.FlowEvent) *apitypes.Flow {
	fl := &apitypes.Flow{
		Time:        ev.Time,
		Type:        ev.Type.String(),
		Verdict:     ev.Verdict.String(),
		Direction:   ev.Direction.String(),
		Protocol:    datapath.ProtoName(ev.Proto),
		Length:      ev.Length,
		EndpointID:  ev.EndpointID,
		IfIndex:     ev.IfIndex,
		Cookie:      ev.Cookie,
		Source:      apitypes.FlowEndpoint{IP: ev.Src, Identity: uint32(ev.SrcIdentity)},
		Destination: apitypes.FlowEndpoint{IP: ev.Dst, Identity: uint32(ev.DstIdentity)},
	}
	if ev.Reason.IsDrop() {
		fl.DropReason, fl.DropReasonCode = reasonStrings[ev.Reason], uint8(ev.Reason)
	}
	switch ev.Proto {
	case datapath.ProtoICMP:
		fl.ICMP = &apitypes.ICMP{Type: uint8(ev.DstPort >> 8), Code: uint8(ev.DstPort)}
	case datapath.ProtoTCP:
		fl.TCPFlags = flagStrings[ev.TCPFlags]
		fallthrough
	default:
		fl.Source.Port, fl.Destination.Port = ev.SrcPort, ev.DstPort
	}
	e.side(&fl.Source)
	e.side(&fl.Destination)
	if e.r == nil {
		return fl
	}
	if ev.Cookie != 0 {
		if r, ok := e.r.Rule(ev.Cookie); ok {
			fl.Policy = &r
		}
	}
	if ev.Reason == datapath.DropPolicyDefault {
		fl.EnforcedBy = e.r.EnforcedBy(ev.EndpointID, ev.Direction)
	}
	return fl
}

func (e *enricher) side(s *apitypes.FlowEndpoint) {
	id := datapath.Identity(s.Identity)
	if identity.KindOf(id) == identity.KindReserved {
		s.IdentityName = identity.ReservedName(id)
	}
	if e.r == nil {
		return
	}
	if p, ok := e.r.ResolveIP(s.IP); ok {
		s.EndpointID, s.Namespace, s.PodName, s.Labels = p.EndpointID, p.Namespace, p.PodName, p.Labels
	}
	if len(s.Labels) == 0 {
		if l, ok := e.r.IdentityLabels(s.Identity); ok {
			s.Labels = l
		}
	}
}

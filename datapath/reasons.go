package datapath

import "fmt"

// Reason is a verdict reason: ReasonForwarded or why a packet was dropped.
// bpf/lib/reasons.h holds the same numbers; a test checks them against the
// compiled object's BTF.
type Reason uint8

// Verdict reasons.
const (
	ReasonForwarded      Reason = 0
	DropPolicyDeny       Reason = 1
	DropPolicyDefault    Reason = 2
	DropNoPolicyMap      Reason = 3
	DropMalformed        Reason = 4
	DropUnsupportedL3    Reason = 5
	DropFragUnknown      Reason = 6
	DropInvalidSource    Reason = 7
	DropUnknownEndpoint  Reason = 8
	DropPrefilter        Reason = 9
	DropNoServiceBackend Reason = 10
	DropNATFailed        Reason = 11
	reasonMax            Reason = 12
)

var reasonNames = [...]string{
	ReasonForwarded:      "forwarded",
	DropPolicyDeny:       "policy denied",
	DropPolicyDefault:    "policy default deny",
	DropNoPolicyMap:      "no policy installed",
	DropMalformed:        "malformed packet",
	DropUnsupportedL3:    "unsupported L3 protocol",
	DropFragUnknown:      "fragment without its first fragment",
	DropInvalidSource:    "invalid source address",
	DropUnknownEndpoint:  "unknown destination endpoint",
	DropPrefilter:        "denied by prefilter",
	DropNoServiceBackend: "no service backend",
	DropNATFailed:        "service translation failed",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// IsDrop reports whether r is a drop reason.
func (r Reason) IsDrop() bool { return r != ReasonForwarded }

// Reasons lists every known reason, forwarded first.
func Reasons() []Reason {
	rs := make([]Reason, 0, reasonMax)
	for r := ReasonForwarded; r < reasonMax; r++ {
		rs = append(rs, r)
	}
	return rs
}

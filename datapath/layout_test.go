package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
)

// TestLayoutsMatchBTF checks that every Go mirror has the size of its C
// struct in the compiled object, so a field added on one side only fails here
// instead of corrupting maps.
func TestLayoutsMatchBTF(t *testing.T) {
	spec, err := loadLxc()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cName string
		goVal any
	}{
		{"endpoint_key", endpointKey{}},
		{"endpoint_info", endpointValue{}},
		{"ipcache_key", ipcacheKey{}},
		{"ipcache_entry", ipcacheValue{}},
		{"policy_key", policyKey{}},
		{"policy_entry", policyValue{}},
		{"ct4_key", ct4Key{}},
		{"ct_entry", ctValue{}},
		{"metrics_value", metricsValue{}},
		{"runtime_config", runtimeConfigValue{}},
		{"flow_event", flowEventRaw{}},
	} {
		var st *btf.Struct
		if err := spec.Types.TypeByName(tc.cName, &st); err != nil {
			t.Errorf("%s: %v", tc.cName, err)
			continue
		}
		if got, want := binary.Size(tc.goVal), int(st.Size); got != want {
			t.Errorf("%s: Go mirror is %d bytes, C struct is %d", tc.cName, got, want)
		}
	}
	sock, err := loadSock()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cName string
		goVal any
	}{
		{"lb4_key", lb4Key{}}, {"lb4_service", lb4Service{}}, {"lb4_backend", lb4Backend{}},
		{"lb4_reverse_nat", lb4RevNAT{}}, {"lb_affinity_value", [16]byte{}},
	} {
		var st *btf.Struct
		if err := sock.Types.TypeByName(tc.cName, &st); err != nil {
			t.Errorf("%s: %v", tc.cName, err)
			continue
		}
		if got, want := binary.Size(tc.goVal), int(st.Size); got != want {
			t.Errorf("%s: Go mirror is %d bytes, C struct is %d", tc.cName, got, want)
		}
	}
	if got := innerPolicySpec(1); got.KeySize != uint32(binary.Size(policyKey{})) || got.ValueSize != uint32(binary.Size(policyValue{})) {
		t.Errorf("inner policy map spec sizes %d/%d do not match the key and value", got.KeySize, got.ValueSize)
	}
}

// TestConstantsMatchBTF checks the Go constants against the C enums.
func TestConstantsMatchBTF(t *testing.T) {
	spec, err := loadLxc()
	if err != nil {
		t.Fatal(err)
	}
	enum := func(name string) map[string]uint64 {
		var e *btf.Enum
		if err := spec.Types.TypeByName(name, &e); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out := map[string]uint64{}
		for _, v := range e.Values {
			out[v.Name] = v.Value
		}
		return out
	}
	reasons := enum("sigil_reason")
	for name, r := range map[string]Reason{
		"REASON_FORWARDED": ReasonForwarded, "DROP_POLICY_DENY": DropPolicyDeny,
		"DROP_POLICY_DEFAULT": DropPolicyDefault, "DROP_NO_POLICY_MAP": DropNoPolicyMap,
		"DROP_MALFORMED": DropMalformed, "DROP_UNSUPPORTED_L3": DropUnsupportedL3,
		"DROP_FRAG_UNKNOWN": DropFragUnknown, "DROP_INVALID_SOURCE": DropInvalidSource,
		"DROP_UNKNOWN_ENDPOINT": DropUnknownEndpoint, "DROP_PREFILTER": DropPrefilter,
		"DROP_NO_SERVICE_BACKEND": DropNoServiceBackend, "DROP_NAT_FAILED": DropNATFailed,
		"REASON_MAX": reasonMax,
	} {
		if v, ok := reasons[name]; !ok || v != uint64(r) {
			t.Errorf("reason %s: C has %d (present %v), Go has %d", name, v, ok, r)
		}
	}
	if len(reasons) != int(reasonMax)+1 {
		t.Errorf("C has %d reasons, Go knows %d: add the new ones to reasons.go", len(reasons), reasonMax+1)
	}
	ids := enum("sigil_reserved_identity")
	for name, id := range map[string]Identity{
		"IDENTITY_ANY": IdentityAny, "IDENTITY_HOST": IdentityHost, "IDENTITY_WORLD": IdentityWorld,
		"IDENTITY_UNMANAGED": IdentityUnmanaged, "IDENTITY_HEALTH": IdentityHealth, "IDENTITY_INIT": IdentityInit,
		"IDENTITY_REMOTE_NODE": IdentityRemoteNode, "IDENTITY_KUBE_APISERVER": IdentityKubeAPIServer,
	} {
		if v, ok := ids[name]; !ok || v != uint64(id) {
			t.Errorf("identity %s: C has %d (present %v), Go has %d", name, v, ok, id)
		}
	}
}

func TestPortRangePrefixes(t *testing.T) {
	for _, tc := range []struct {
		lo, hi uint16
		want   []PortPrefix
	}{
		{80, 80, []PortPrefix{{80, 16}}},
		{0, 65535, []PortPrefix{{0, 0}}},
		{8000, 8080, []PortPrefix{{8000, 10}, {8064, 12}, {8080, 16}}},
		{1, 3, []PortPrefix{{1, 16}, {2, 15}}},
		{65535, 65535, []PortPrefix{{65535, 16}}},
		{5, 4, nil},
	} {
		got := PortRangePrefixes(tc.lo, tc.hi)
		if len(got) != len(tc.want) {
			t.Errorf("%d-%d: got %v, want %v", tc.lo, tc.hi, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%d-%d: got %v, want %v", tc.lo, tc.hi, got, tc.want)
				break
			}
		}
	}
	// Exhaustively: every port is covered by exactly the range's prefixes.
	for _, r := range [][2]uint16{{1000, 1999}, {1, 65534}, {443, 8443}} {
		pp := PortRangePrefixes(r[0], r[1])
		for p := 0; p <= 65535; p++ {
			in := 0
			for _, x := range pp {
				if uint16(p)&portMask(x.PrefixLen) == x.Port {
					in++
				}
			}
			want := 0
			if p >= int(r[0]) && p <= int(r[1]) {
				want = 1
			}
			if in != want {
				t.Fatalf("range %v: port %d covered %d times", r, p, in)
			}
		}
	}
}

// TestFlowEventDecode checks the hand-written decoder against the struct
// layout, field by field.
func TestFlowEventDecode(t *testing.T) {
	raw := flowEventRaw{Timestamp: 5e9, EpID: 7, IfIndex: 3, SrcIdentity: 1001, DstIdentity: 1002,
		Sport: be16(40000), Dport: be16(8080), Family: familyIPv4, Proto: 6, Direction: 1, Type: 2,
		Verdict: 2, Reason: 2, TCPFlags: 0x02, Cookie: 42, PktLen: 74}
	copy(raw.Saddr[:], []byte{198, 18, 0, 1})
	copy(raw.Daddr[:], []byte{198, 18, 0, 2})
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, raw); err != nil {
		t.Fatal(err)
	}
	r := &EventReader{}
	got, err := r.decode(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := FlowEvent{Time: got.Time, EndpointID: 7, IfIndex: 3, SrcIdentity: 1001, DstIdentity: 1002,
		Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 40000, DstPort: 8080,
		Proto: 6, Direction: Egress, Type: EventDrop, Verdict: VerdictDropped, Reason: DropPolicyDefault,
		TCPFlags: 0x02, Cookie: 42, Length: 74}
	if got != want {
		t.Errorf("decoded %+v\nwant    %+v", got, want)
	}
	if got.Time.Sub(r.bootWall) != 5*time.Second {
		t.Errorf("time %v", got.Time)
	}
	if _, err := r.decode(buf.Bytes()[:40]); err == nil {
		t.Error("short event decoded")
	}
}

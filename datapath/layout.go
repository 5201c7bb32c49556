package datapath

import "encoding/binary"

// Go mirrors of the C map keys and values in bpf/lib/maps.h and
// bpf/lib/events.h. Addresses are the 16-byte union sigil_addr; fields the C
// side keeps in network byte order are byte arrays here, so no conversion
// depends on the host's endianness. layout_test.go checks every size against
// the object's BTF.

type endpointKey struct {
	Addr   [16]byte
	Family uint8
	Pad    [3]uint8
}

type endpointValue struct {
	EpID     uint32
	IfIndex  uint32
	Identity uint32
	Flags    uint32
	MAC      [6]byte
	NodeMAC  [6]byte
	Pad      uint32
}

type ipcacheKey struct {
	PrefixLen uint32
	Family    uint8
	Pad       [3]uint8
	Addr      [16]byte
}

type ipcacheValue struct {
	Identity       uint32
	TunnelFamily   uint8
	Flags          uint8
	Pad            uint16
	TunnelEndpoint [16]byte
}

type policyKey struct {
	PrefixLen uint32
	Identity  uint32
	Direction uint8
	Protocol  uint8
	Port      [2]byte // big endian
}

type policyValue struct {
	Flags     uint8
	Pad       uint8
	ProxyPort [2]byte // big endian
	Cookie    uint32
}

type ct4Key struct {
	Saddr     [4]byte
	Daddr     [4]byte
	Sport     [2]byte
	Dport     [2]byte
	Proto     uint8
	Direction uint8
	Pad       uint16
}

type ctValue struct {
	Expires     uint64
	Packets     uint64
	Bytes       uint64
	Cookie      uint32
	SrcIdentity uint32
	DstIdentity uint32
	TCPFlags    uint8
	Flags       uint8
	RevNATIndex uint16
	NATAddr     [4]byte
	NATPort     [2]byte
	Pad         uint16
}

type metricsValue struct {
	Packets uint64
	Bytes   uint64
}

type runtimeConfigValue struct {
	EnforcementMode uint32
	Flags           uint32
	EventRateLimit  uint32
	TunnelIfIndex   uint32
	SvcNet4         [serviceCIDRsMax][4]byte
	SvcMask4        [serviceCIDRsMax][4]byte
}

// serviceCIDRsMax is SIGIL_SVC_CIDRS in bpf/lib/common.h.
const serviceCIDRsMax = 4

type flowEventRaw struct {
	Timestamp   uint64
	EpID        uint32
	IfIndex     uint32
	SrcIdentity uint32
	DstIdentity uint32
	Saddr       [16]byte
	Daddr       [16]byte
	Sport       [2]byte
	Dport       [2]byte
	Family      uint8
	Proto       uint8
	Direction   uint8
	Type        uint8
	Verdict     uint8
	Reason      uint8
	TCPFlags    uint8
	Pad         uint8
	Cookie      uint32
	PktLen      uint32
	Pad2        uint32
}

const (
	policyFlagDeny = 1 << 0

	ipcacheStaticPrefix = 32
)

func be16(v uint16) (b [2]byte) {
	binary.BigEndian.PutUint16(b[:], v)
	return b
}

func fromBE16(b [2]byte) uint16 { return binary.BigEndian.Uint16(b[:]) }

package identity

import (
	"github.com/sigil-net/sigil/datapath"
)

// reservedNames maps each reserved identity to its name; bpf/lib/common.h
// and datapath/types.go hold the numbers.
var reservedNames = map[datapath.Identity]string{
	datapath.IdentityHost:          "host",
	datapath.IdentityWorld:         "world",
	datapath.IdentityUnmanaged:     "unmanaged",
	datapath.IdentityHealth:        "health",
	datapath.IdentityInit:          "init",
	datapath.IdentityRemoteNode:    "remote-node",
	datapath.IdentityKubeAPIServer: "kube-apiserver",
}

// Reserved lists the reserved identities in numeric order.
func Reserved() []datapath.Identity {
	return []datapath.Identity{datapath.IdentityHost, datapath.IdentityWorld, datapath.IdentityUnmanaged,
		datapath.IdentityHealth, datapath.IdentityInit, datapath.IdentityRemoteNode, datapath.IdentityKubeAPIServer}
}

// ReservedName returns the name of a reserved identity ("" if id is not one).
func ReservedName(id datapath.Identity) string { return reservedNames[id] }

// ReservedByName returns the reserved identity with the given name.
func ReservedByName(name string) (datapath.Identity, bool) {
	for id, n := range reservedNames {
		if n == name {
			return id, true
		}
	}
	return 0, false
}

// ReservedLabels returns the single "reserved:<name>" label of a reserved
// identity, or nil.
func ReservedLabels(id datapath.Identity) Labels {
	n, ok := reservedNames[id]
	if !ok {
		return nil
	}
	return Labels{SourceReserved + ":" + n: ""}
}

// Kind classifies identities by numeric range.
type Kind uint8

// Identity kinds.
const (
	KindAny      Kind = iota // 0: the wildcard in policy keys
	KindReserved             // 1..255: fixed, see Reserved
	KindCluster              // 256..2^24-1: label sets, allocated cluster-wide
	KindLocal                // IdentityLocalFlag|n: node-local (CIDR prefixes)
)

// KindOf returns the kind of an identity.
//
// Ranges: 0 any; 1-255 reserved (only those in Reserved are used);
// 256 (datapath.IdentityClusterMin) to 2^24-1 cluster identities;
// 2^24 (datapath.IdentityLocalFlag) and above node-local identities.
func KindOf(id datapath.Identity) Kind {
	switch {
	case id == datapath.IdentityAny:
		return KindAny
	case id < datapath.IdentityClusterMin:
		return KindReserved
	case id < datapath.IdentityLocalFlag:
		return KindCluster
	}
	return KindLocal
}

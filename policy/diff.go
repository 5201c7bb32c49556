package policy

import (
	"sort"

	"github.com/sigil-net/sigil/datapath"
)

// Diff returns what to write to turn the installed map into the desired
// one: entries to add or overwrite, and keys to delete (sorted).
func Diff(installed, desired datapath.PolicyMapEntries) (upserts datapath.PolicyMapEntries, deletes []datapath.PolicyKey) {
	upserts = datapath.PolicyMapEntries{}
	for k, v := range desired {
		if old, ok := installed[k]; !ok || old != v {
			upserts[k] = v
		}
	}
	for k := range installed {
		if _, ok := desired[k]; !ok {
			deletes = append(deletes, k)
		}
	}
	SortKeys(deletes)
	return upserts, deletes
}

// SortKeys sorts policy keys by identity, direction, protocol, prefix
// length and port.
func SortKeys(keys []datapath.PolicyKey) {
	sort.Slice(keys, func(i, j int) bool { return keyLess(keys[i], keys[j]) })
}

func keyLess(a, b datapath.PolicyKey) bool {
	switch {
	case a.Identity != b.Identity:
		return a.Identity < b.Identity
	case a.Direction != b.Direction:
		return a.Direction < b.Direction
	case a.Protocol != b.Protocol:
		return a.Protocol < b.Protocol
	case a.PortPrefixLen != b.PortPrefixLen:
		return a.PortPrefixLen < b.PortPrefixLen
	}
	return a.Port < b.Port
}

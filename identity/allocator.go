package identity

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/sigil-net/sigil/datapath"
)

// ClusterMax is the last cluster identity; above it the local range starts.
const ClusterMax = datapath.IdentityLocalFlag - 1

// Allocator hands out cluster identities for label sets. The operator's
// implementation (backed by SigilIdentity objects) must give the same
// identity for the same labels on every node.
type Allocator interface {
	// Allocate returns the identity of lbls, allocating it if needed, and
	// takes a reference on it. isNew reports a fresh allocation.
	Allocate(ctx context.Context, lbls Labels) (id datapath.Identity, isNew bool, err error)
	// Release drops a reference taken by Allocate; released reports that
	// it was the last one and the identity is gone.
	Release(ctx context.Context, id datapath.Identity) (released bool, err error)
	// Lookup returns the labels of an allocated identity.
	Lookup(id datapath.Identity) (Labels, bool)
}

// MemoryAllocator is an in-process Allocator for tests and single-node use.
type MemoryAllocator struct {
	mu     sync.Mutex
	next   datapath.Identity
	byKey  map[string]datapath.Identity
	labels map[datapath.Identity]Labels
	refs   map[datapath.Identity]int
}

// NewMemoryAllocator returns an allocator starting at IdentityClusterMin.
func NewMemoryAllocator() *MemoryAllocator {
	return &MemoryAllocator{
		next:   datapath.IdentityClusterMin,
		byKey:  map[string]datapath.Identity{},
		labels: map[datapath.Identity]Labels{},
		refs:   map[datapath.Identity]int{},
	}
}

// Allocate implements Allocator.
func (a *MemoryAllocator) Allocate(_ context.Context, lbls Labels) (datapath.Identity, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := lbls.String()
	if id, ok := a.byKey[key]; ok {
		a.refs[id]++
		return id, false, nil
	}
	id, err := a.free()
	if err != nil {
		return 0, false, err
	}
	cp := make(Labels, len(lbls))
	for k, v := range lbls {
		cp[k] = v
	}
	a.byKey[key], a.labels[id], a.refs[id] = id, cp, 1
	return id, true, nil
}

// free finds the next unused identity, wrapping around the cluster range.
func (a *MemoryAllocator) free() (datapath.Identity, error) {
	for tries := datapath.Identity(0); tries <= ClusterMax-datapath.IdentityClusterMin; tries++ {
		id := a.next
		a.next++
		if a.next > ClusterMax {
			a.next = datapath.IdentityClusterMin
		}
		if _, used := a.labels[id]; !used {
			return id, nil
		}
	}
	return 0, fmt.Errorf("identity: cluster identity range exhausted")
}

// Release implements Allocator.
func (a *MemoryAllocator) Release(_ context.Context, id datapath.Identity) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	lbls, ok := a.labels[id]
	if !ok {
		return false, fmt.Errorf("identity: release of unknown identity %d", id)
	}
	if a.refs[id]--; a.refs[id] > 0 {
		return false, nil
	}
	delete(a.byKey, lbls.String())
	delete(a.labels, id)
	delete(a.refs, id)
	return true, nil
}

// Lookup implements Allocator.
func (a *MemoryAllocator) Lookup(id datapath.Identity) (Labels, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.labels[id]
	return l, ok
}

// CIDRAllocator hands out node-local identities (IdentityLocalFlag|n) for
// CIDR prefixes, reference-counted per prefix.
type CIDRAllocator struct {
	mu    sync.Mutex
	next  uint32
	byPfx map[netip.Prefix]datapath.Identity
	pfx   map[datapath.Identity]netip.Prefix
	refs  map[datapath.Identity]int
	limit uint32
}

// NewCIDRAllocator returns an empty CIDR identity allocator.
func NewCIDRAllocator() *CIDRAllocator {
	return &CIDRAllocator{next: 1, byPfx: map[netip.Prefix]datapath.Identity{},
		pfx: map[datapath.Identity]netip.Prefix{}, refs: map[datapath.Identity]int{}, limit: 1<<24 - 1}
}

// Allocate returns the identity of prefix p (masked), taking a reference.
func (a *CIDRAllocator) Allocate(p netip.Prefix) (datapath.Identity, bool, error) {
	p = p.Masked()
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byPfx[p]; ok {
		a.refs[id]++
		return id, false, nil
	}
	for tries := uint32(0); tries < a.limit; tries++ {
		id := datapath.IdentityLocalFlag | datapath.Identity(a.next)
		if a.next++; a.next > a.limit {
			a.next = 1
		}
		if _, used := a.pfx[id]; !used {
			a.byPfx[p], a.pfx[id], a.refs[id] = id, p, 1
			return id, true, nil
		}
	}
	return 0, false, fmt.Errorf("identity: local CIDR identity range exhausted")
}

// Release drops a reference on prefix p; released reports the last one.
func (a *CIDRAllocator) Release(p netip.Prefix) (datapath.Identity, bool) {
	p = p.Masked()
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.byPfx[p]
	if !ok {
		return 0, false
	}
	if a.refs[id]--; a.refs[id] > 0 {
		return id, false
	}
	delete(a.byPfx, p)
	delete(a.pfx, id)
	delete(a.refs, id)
	return id, true
}

// Prefix returns the prefix of a CIDR identity.
func (a *CIDRAllocator) Prefix(id datapath.Identity) (netip.Prefix, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pfx[id]
	return p, ok
}

// CIDRLabels returns the labels of a CIDR identity: "cidr:<prefix>" and
// "reserved:world" (every CIDR identity is outside the cluster).
func CIDRLabels(p netip.Prefix) Labels {
	return Labels{SourceCIDR + ":" + p.Masked().String(): "", SourceReserved + ":world": ""}
}

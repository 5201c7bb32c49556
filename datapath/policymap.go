package datapath

import (
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
)

// DefaultPolicyEntries is the default capacity of one endpoint's policy map.
const DefaultPolicyEntries = 16384

// ErrPolicyCapacity is returned by PolicyMap.Sync when the desired entries do
// not fit in the endpoint's policy map. The endpoint is then left with its
// deny entries only: fail closed, never silently open.
var ErrPolicyCapacity = errors.New("policy map capacity exceeded")

// PolicyMap is the outer policy map: endpoint ID -> that endpoint's LPM trie
// of policy entries.
type PolicyMap struct {
	outer *ebpf.Map
	// innerMax is the capacity of inner maps this process creates; it must
	// equal the one in the outer map's inner template.
	innerMax uint32

	// installed remembers what Sync last wrote per endpoint, so the next
	// Sync diffs against it instead of reading the whole map back (two
	// syscalls per entry). Only the agent writes policy maps; an endpoint is
	// read from the kernel once per process, and again after any failed write.
	mu        sync.Mutex
	installed map[uint32]PolicyMapEntries
}

func innerPolicySpec(maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       "sigil_pol_ep",
		Type:       ebpf.LPMTrie,
		KeySize:    12,
		ValueSize:  8,
		MaxEntries: maxEntries,
		Flags:      1, // BPF_F_NO_PREALLOC
	}
}

// Capacity is the number of entries one endpoint's map holds.
func (p *PolicyMap) Capacity() int { return int(p.innerMax) }

func (p *PolicyMap) inner(epID uint32) (*ebpf.Map, error) {
	var inner *ebpf.Map
	if err := p.outer.Lookup(epID, &inner); err != nil {
		return nil, err
	}
	return inner, nil
}

// Has reports whether the endpoint has a policy map installed.
func (p *PolicyMap) Has(epID uint32) bool {
	m, err := p.inner(epID)
	if err != nil {
		return false
	}
	m.Close()
	return true
}

// ensure returns the endpoint's map, creating it (empty) if it has none.
func (p *PolicyMap) ensure(epID uint32) (m *ebpf.Map, created bool, err error) {
	m, err = p.inner(epID)
	if err == nil {
		return m, false, nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, false, fmt.Errorf("policy map of endpoint %d: %w", epID, err)
	}
	if p.innerMax == 0 {
		return nil, false, fmt.Errorf("policy map of endpoint %d: this handle cannot create maps (opened read-only)", epID)
	}
	m, err = ebpf.NewMap(innerPolicySpec(p.innerMax))
	if err != nil {
		return nil, false, fmt.Errorf("create policy map of endpoint %d: %w", epID, err)
	}
	if err := p.outer.Update(epID, m, ebpf.UpdateNoExist); err != nil {
		m.Close()
		if errors.Is(err, ebpf.ErrKeyExist) {
			// Installed concurrently: use that one.
			return p.ensure(epID)
		}
		return nil, false, fmt.Errorf("install policy map of endpoint %d: %w", epID, err)
	}
	return m, true, nil
}

func encodePolicyKey(k PolicyKey) policyKey {
	return policyKey{PrefixLen: k.prefixLen(), Identity: uint32(k.Identity), Direction: uint8(k.Direction),
		Protocol: k.Protocol, Port: be16(k.Port)}
}

func decodePolicyKey(k policyKey) PolicyKey {
	pk := PolicyKey{Identity: Identity(k.Identity), Direction: Direction(k.Direction)}
	if k.PrefixLen > policyStaticPrefix {
		pk.Protocol = k.Protocol
		pk.PortPrefixLen = uint8(k.PrefixLen - policyStaticPrefix - 8)
		pk.Port = fromBE16(k.Port) & portMask(pk.PortPrefixLen)
	}
	return pk
}

func encodePolicyEntry(e PolicyEntry) policyValue {
	v := policyValue{ProxyPort: be16(e.ProxyPort), Cookie: e.Cookie}
	if e.Deny {
		v.Flags |= policyFlagDeny
	}
	return v
}

func decodePolicyEntry(v policyValue) PolicyEntry {
	return PolicyEntry{Deny: v.Flags&policyFlagDeny != 0, ProxyPort: fromBE16(v.ProxyPort), Cookie: v.Cookie}
}

// List returns the endpoint's installed entries; nil (and no error) when it
// has no policy map.
func (p *PolicyMap) List(epID uint32) (PolicyMapEntries, error) {
	m, err := p.inner(epID)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return listPolicy(m)
}

func listPolicy(m *ebpf.Map) (PolicyMapEntries, error) {
	out := PolicyMapEntries{}
	var k policyKey
	var v policyValue
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[decodePolicyKey(k)] = decodePolicyEntry(v)
	}
	return out, it.Err()
}

// Endpoints lists the endpoint IDs that have a policy map.
func (p *PolicyMap) Endpoints() ([]uint32, error) {
	var ids []uint32
	var k uint32
	var v uint32 // map-in-map values read back as inner map IDs
	it := p.outer.Iterate()
	for it.Next(&k, &v) {
		ids = append(ids, k)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, it.Err()
}

// SyncStats says what a Sync changed.
type SyncStats struct {
	Added, Updated, Deleted int
}

// Sync makes the endpoint's policy map hold exactly desired, creating the map
// if needed and writing only the difference. Writes are ordered so that no
// intermediate state allows more than either the old or the new policy: new
// denies first, then stale allows go, then new allows, then stale denies.
// If desired does not fit, the map keeps only deny entries and Sync returns
// ErrPolicyCapacity.
func (p *PolicyMap) Sync(epID uint32, desired PolicyMapEntries) (st SyncStats, err error) {
	for k := range desired {
		if err := k.Validate(); err != nil {
			return st, fmt.Errorf("endpoint %d: %w", epID, err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	m, created, err := p.ensure(epID)
	if err != nil {
		return st, err
	}
	defer m.Close()
	installed, known := p.installed[epID]
	switch {
	case created:
		installed = PolicyMapEntries{}
	case !known:
		if installed, err = listPolicy(m); err != nil {
			return st, fmt.Errorf("read policy map of endpoint %d: %w", epID, err)
		}
	}
	// Until this Sync completes, what is installed is not known for sure.
	delete(p.installed, epID)
	want := len(desired)
	overflow := want > int(p.innerMax)
	if overflow {
		denyOnly := PolicyMapEntries{}
		for k, e := range desired {
			if e.Deny && len(denyOnly) < int(p.innerMax) {
				denyOnly[k] = e
			}
		}
		desired = denyOnly
	}

	put := func(k PolicyKey, e PolicyEntry) error {
		old, had := installed[k]
		if had && old == e {
			return nil
		}
		if err := m.Put(encodePolicyKey(k), encodePolicyEntry(e)); err != nil {
			return fmt.Errorf("endpoint %d: put %s: %w", epID, k, err)
		}
		if had {
			st.Updated++
		} else {
			st.Added++
		}
		return nil
	}
	del := func(k PolicyKey) error {
		if err := m.Delete(encodePolicyKey(k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("endpoint %d: delete %s: %w", epID, k, err)
		}
		st.Deleted++
		return nil
	}
	steps := []func() error{
		func() error { return forEach(desired, func(k PolicyKey, e PolicyEntry) bool { return e.Deny }, put) },
		func() error {
			return forEachKey(installed, func(k PolicyKey, e PolicyEntry) bool { _, keep := desired[k]; return !e.Deny && !keep }, del)
		},
		func() error { return forEach(desired, func(k PolicyKey, e PolicyEntry) bool { return !e.Deny }, put) },
		func() error {
			return forEachKey(installed, func(k PolicyKey, e PolicyEntry) bool { _, keep := desired[k]; return e.Deny && !keep }, del)
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return st, err
		}
	}
	if p.installed == nil {
		p.installed = map[uint32]PolicyMapEntries{}
	}
	p.installed[epID] = maps.Clone(desired)
	if overflow {
		return st, fmt.Errorf("endpoint %d: %d entries for a map of %d: %w", epID, want, p.innerMax, ErrPolicyCapacity)
	}
	return st, nil
}

func forEach(m PolicyMapEntries, keep func(PolicyKey, PolicyEntry) bool, fn func(PolicyKey, PolicyEntry) error) error {
	for k, e := range m {
		if keep(k, e) {
			if err := fn(k, e); err != nil {
				return err
			}
		}
	}
	return nil
}

func forEachKey(m PolicyMapEntries, keep func(PolicyKey, PolicyEntry) bool, fn func(PolicyKey) error) error {
	return forEach(m, keep, func(k PolicyKey, _ PolicyEntry) error { return fn(k) })
}

// Remove deletes the endpoint's policy map; a missing one is not an error.
func (p *PolicyMap) Remove(epID uint32) error {
	p.mu.Lock()
	delete(p.installed, epID)
	p.mu.Unlock()
	if err := p.outer.Delete(epID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove policy map of endpoint %d: %w", epID, err)
	}
	return nil
}

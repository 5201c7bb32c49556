package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// DefaultCapacity is the size of an endpoint's policy map
// (SIGIL_POLICY_ENTRIES in bpf/lib/maps.h).
const DefaultCapacity = datapath.DefaultPolicyEntries

// Config configures an Engine.
type Config struct {
	// Capacity is the number of entries an endpoint's policy map holds;
	// 0 means DefaultCapacity.
	Capacity int
	// Enforcement is the global mode; only Explain uses it (the datapath
	// applies it itself).
	Enforcement datapath.EnforcementMode
	// CIDRs allocates node-local CIDR identities; nil: a private allocator.
	CIDRs *identity.CIDRAllocator
}

// Endpoint is a pod as the policy engine sees it.
type Endpoint struct {
	// ID is the endpoint ID (the key of its policy map).
	ID uint32
	// Identity must have been given to UpsertIdentity first.
	Identity   datapath.Identity
	IPs        []netip.Addr
	NamedPorts []NamedPort
	// Remote pods (of other nodes) are known for named ports and ipBlock
	// matching but get no entries.
	Remote bool
}

// EndpointUpdate is the change to one endpoint's datapath state.
type EndpointUpdate struct {
	ID    uint32
	Flags datapath.EndpointFlags
	// Upserts and Deletes turn the previously desired map into the new one.
	Upserts datapath.PolicyMapEntries
	Deletes []datapath.PolicyKey
	// OverCapacity: the endpoint's entries exceed the map; it is failed
	// closed (both directions enforced, empty map).
	OverCapacity bool
	// Removed: the endpoint is gone; delete its map.
	Removed bool
}

// Changes is the result of one Engine operation.
type Changes struct {
	Endpoints      []EndpointUpdate // sorted by ID
	IPCacheUpserts map[netip.Prefix]datapath.Identity
	IPCacheDeletes []netip.Prefix
}

// EndpointPolicy is the complete desired state of an endpoint.
type EndpointPolicy struct {
	Flags        datapath.EndpointFlags
	Entries      datapath.PolicyMapEntries
	OverCapacity bool
}

// Metrics are counters an agent exports.
type Metrics struct {
	Policies              int
	Identities            int
	Selectors             int
	Endpoints             int // local endpoints
	Entries               int // total desired entries over local endpoints
	EndpointsOverCapacity int
}

type endpointState struct {
	ep       Endpoint
	policies map[*policyState]struct{}
	slices   map[datapath.Identity]slice
	count    int
	flags    datapath.EndpointFlags
	over     bool
}

func (s *endpointState) local() bool { return !s.ep.Remote }

// effective is what the datapath should hold: nothing when failed closed.
func (s *endpointState) effective() datapath.PolicyMapEntries {
	out := datapath.PolicyMapEntries{}
	if s.over {
		return out
	}
	for _, sl := range s.slices {
		for k, v := range sl {
			out[k] = v
		}
	}
	return out
}

func (s *endpointState) effectiveFlags() datapath.EndpointFlags {
	if s.over {
		return datapath.EndpointEnforceIngress | datapath.EndpointEnforceEgress
	}
	return s.flags
}

type policyState struct {
	pol      *Policy
	rules    []compiledRule
	selected map[*endpointState]struct{}
	cidrs    []netip.Prefix
}

type dirtyState struct {
	full bool
	ids  map[datapath.Identity]struct{}
}

// Engine compiles policies into per-endpoint entries and keeps them up to
// date as policies, identities and endpoints change. Every method is safe
// for concurrent use; each returns the resulting Changes.
type Engine struct {
	mu         sync.Mutex
	capacity   int
	mode       datapath.EnforcementMode
	cache      *SelectorCache
	cookies    *cookieTable
	cidrs      *identity.CIDRAllocator
	ipcache    map[netip.Prefix]datapath.Identity
	policies   map[PolicyRef]*policyState
	endpoints  map[uint32]*endpointState
	byIdentity map[datapath.Identity]map[*endpointState]struct{}
	dirty      map[*endpointState]*dirtyState
	changes    Changes
}

// NewEngine returns an empty engine that knows the reserved identities.
func NewEngine(cfg Config) *Engine {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.CIDRs == nil {
		cfg.CIDRs = identity.NewCIDRAllocator()
	}
	return &Engine{
		capacity: cfg.Capacity, mode: cfg.Enforcement, cache: newSelectorCache(), cookies: newCookieTable(),
		cidrs: cfg.CIDRs, ipcache: map[netip.Prefix]datapath.Identity{}, policies: map[PolicyRef]*policyState{},
		endpoints: map[uint32]*endpointState{}, byIdentity: map[datapath.Identity]map[*endpointState]struct{}{},
		dirty: map[*endpointState]*dirtyState{},
	}
}

// UpsertIdentity adds a cluster identity or changes its labels.
func (e *Engine) UpsertIdentity(id datapath.Identity, lbls identity.Labels) (Changes, error) {
	if identity.KindOf(id) != identity.KindCluster {
		return Changes{}, fmt.Errorf("policy: identity %d is not in the cluster range", id)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.markSelectors(id, e.cache.upsert(id, lbls, netip.Prefix{}))
	for ep := range e.byIdentity[id] {
		e.reselect(ep)
	}
	return e.flush(), nil
}

// RemoveIdentity drops a cluster identity.
func (e *Engine) RemoveIdentity(id datapath.Identity) Changes {
	e.mu.Lock()
	defer e.mu.Unlock()
	if identity.KindOf(id) == identity.KindCluster {
		e.markSelectors(id, e.cache.remove(id))
	}
	return e.flush()
}

// UpsertEndpoint adds or updates an endpoint (a local or remote pod).
func (e *Engine) UpsertEndpoint(ep Endpoint) (Changes, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.cache.ids[ep.Identity]; !ok || identity.KindOf(ep.Identity) != identity.KindCluster {
		return Changes{}, fmt.Errorf("policy: endpoint %d: unknown cluster identity %d", ep.ID, ep.Identity)
	}
	st, ok := e.endpoints[ep.ID]
	if ok {
		e.detachPod(st)
		st.ep = ep
	} else {
		st = &endpointState{ep: ep, policies: map[*policyState]struct{}{}, slices: map[datapath.Identity]slice{}}
		e.endpoints[ep.ID] = st
	}
	e.attachPod(st)
	e.reselect(st)
	if st.local() {
		e.markFull(st)
	}
	return e.flush(), nil
}

// RemoveEndpoint forgets an endpoint.
func (e *Engine) RemoveEndpoint(id uint32) Changes {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, ok := e.endpoints[id]
	if !ok {
		return Changes{}
	}
	e.detachPod(st)
	for ps := range st.policies {
		delete(ps.selected, st)
	}
	delete(e.endpoints, id)
	delete(e.dirty, st)
	ch := e.flush()
	if st.local() {
		ch.Endpoints = append(ch.Endpoints, EndpointUpdate{ID: id, Removed: true})
		sortUpdates(ch.Endpoints)
	}
	return ch
}

// attachPod registers a pod's IPs and named ports with what depends on them.
func (e *Engine) attachPod(st *endpointState) {
	id := st.ep.Identity
	if e.byIdentity[id] == nil {
		e.byIdentity[id] = map[*endpointState]struct{}{}
	}
	e.byIdentity[id][st] = struct{}{}
	for _, ip := range st.ep.IPs {
		e.markSelectors(id, e.cache.addPodIP(id, ip))
	}
	if len(st.ep.NamedPorts) > 0 {
		e.markNamedEgress(id)
	}
}

func (e *Engine) detachPod(st *endpointState) {
	id := st.ep.Identity
	delete(e.byIdentity[id], st)
	if len(e.byIdentity[id]) == 0 {
		delete(e.byIdentity, id)
	}
	for _, ip := range st.ep.IPs {
		e.markSelectors(id, e.cache.removePodIP(id, ip))
	}
	if len(st.ep.NamedPorts) > 0 {
		e.markNamedEgress(id)
	}
}

// reselect recomputes which policies select a local endpoint.
func (e *Engine) reselect(st *endpointState) {
	if !st.local() {
		return
	}
	lbls := e.cache.ids[st.ep.Identity].labels
	for _, ps := range e.policies {
		_, had := st.policies[ps]
		if want := ps.pol.Subject.Matches(lbls); want != had {
			if want {
				st.policies[ps], ps.selected[st] = struct{}{}, struct{}{}
			} else {
				delete(st.policies, ps)
				delete(ps.selected, st)
			}
			e.markFull(st)
		}
	}
}

// UpsertPolicy adds or replaces a policy.
func (e *Engine) UpsertPolicy(p *Policy) Changes {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.policies[p.Ref]
	ps := &policyState{pol: p, selected: map[*endpointState]struct{}{}}
	e.acquireCIDRs(ps)
	e.compileRules(ps)
	e.policies[p.Ref] = ps
	for _, st := range e.endpoints {
		if st.local() && p.Subject.Matches(e.cache.ids[st.ep.Identity].labels) {
			st.policies[ps], ps.selected[st] = struct{}{}, struct{}{}
			e.markFull(st)
		}
	}
	if old != nil {
		e.dropPolicy(old)
	}
	keep := map[uint32]bool{}
	for _, r := range ps.rules {
		keep[r.cookie] = true
	}
	e.cookies.retain(p.Ref, keep)
	return e.flush()
}

// RemovePolicy deletes a policy.
func (e *Engine) RemovePolicy(ref PolicyRef) Changes {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ps, ok := e.policies[ref]; ok {
		delete(e.policies, ref)
		e.dropPolicy(ps)
		e.cookies.retain(ref, nil)
	}
	return e.flush()
}

func (e *Engine) dropPolicy(ps *policyState) {
	for st := range ps.selected {
		delete(st.policies, ps)
		e.markFull(st)
	}
	for _, r := range ps.rules {
		for _, cs := range r.sels {
			e.cache.release(cs, ps)
		}
	}
	for _, pfx := range ps.cidrs {
		if id, released := e.cidrs.Release(pfx); released {
			e.markSelectors(id, e.cache.remove(id))
			delete(e.ipcache, pfx)
			delete(e.changes.IPCacheUpserts, pfx)
			e.changes.IPCacheDeletes = append(e.changes.IPCacheDeletes, pfx)
		}
	}
}

// acquireCIDRs allocates a CIDR identity for every cidr and except prefix
// of the policy, so the ipcache resolves addresses there to them.
func (e *Engine) acquireCIDRs(ps *policyState) {
	for _, r := range ps.pol.Rules {
		for _, p := range r.Peers {
			if p.Kind != PeerCIDR {
				continue
			}
			for _, pfx := range append([]netip.Prefix{p.CIDR}, p.Except...) {
				id, isNew, err := e.cidrs.Allocate(pfx)
				if err != nil {
					continue // range exhausted: the prefix resolves to world, which the rule does not select
				}
				ps.cidrs = append(ps.cidrs, pfx.Masked())
				if isNew {
					e.markSelectors(id, e.cache.upsert(id, identity.CIDRLabels(pfx), pfx.Masked()))
					e.ipcache[pfx.Masked()] = id
					if e.changes.IPCacheUpserts == nil {
						e.changes.IPCacheUpserts = map[netip.Prefix]datapath.Identity{}
					}
					e.changes.IPCacheUpserts[pfx.Masked()] = id
				}
			}
		}
	}
}

// compileRules binds a policy's rules to cookies and cached selectors.
func (e *Engine) compileRules(ps *policyState) {
	ps.rules = make([]compiledRule, len(ps.pol.Rules))
	for i, r := range ps.pol.Rules {
		cr := compiledRule{Rule: r, cookie: e.cookies.get(CookieInfo{Policy: ps.pol.Ref, Direction: r.Direction, Deny: r.Deny, Index: r.Index})}
		for _, p := range r.Peers {
			switch p.Kind {
			case PeerAll:
				cr.all = true
			case PeerLabels:
				cr.sels = append(cr.sels, e.cache.acquire(labelSelector{p.Selector}, ps))
			case PeerCIDR:
				cr.sels = append(cr.sels, e.cache.acquire(cidrSelector{cidr: p.CIDR, except: p.Except, pods: p.MatchPods}, ps))
			case PeerEntity:
				cr.sels = append(cr.sels, e.cache.acquire(entitySelector{p.Entity}, ps))
			}
		}
		for _, p := range r.Ports {
			cr.namedEgress = cr.namedEgress || (p.Name != "" && r.Direction == datapath.Egress)
		}
		ps.rules[i] = cr
	}
}

// markSelectors marks identity id dirty on every endpoint selected by a
// policy that uses one of the changed selectors.
func (e *Engine) markSelectors(id datapath.Identity, changed []*cachedSelector) {
	for _, cs := range changed {
		for ps := range cs.users {
			for st := range ps.selected {
				e.markID(st, id)
			}
		}
	}
}

// markNamedEgress marks identity id dirty where egress named ports to it
// are resolved, as its pods' named ports changed.
func (e *Engine) markNamedEgress(id datapath.Identity) {
	for _, ps := range e.policies {
		for i := range ps.rules {
			if r := &ps.rules[i]; r.namedEgress && r.selects(id) {
				for st := range ps.selected {
					e.markID(st, id)
				}
			}
		}
	}
}

func (e *Engine) markFull(st *endpointState) {
	if !st.local() {
		return
	}
	e.dirtyOf(st).full = true
}

func (e *Engine) markID(st *endpointState, id datapath.Identity) {
	if !st.local() {
		return
	}
	d := e.dirtyOf(st)
	if !d.full {
		d.ids[id] = struct{}{}
	}
}

func (e *Engine) dirtyOf(st *endpointState) *dirtyState {
	d, ok := e.dirty[st]
	if !ok {
		d = &dirtyState{ids: map[datapath.Identity]struct{}{}}
		e.dirty[st] = d
	}
	return d
}

// flush recompiles dirty endpoints and returns the accumulated changes.
func (e *Engine) flush() Changes {
	for st, d := range e.dirty {
		var u EndpointUpdate
		if d.full {
			u = e.recompileFull(st)
		} else {
			u = e.recompileIDs(st, d.ids)
		}
		if len(u.Upserts) > 0 || len(u.Deletes) > 0 || d.full {
			e.changes.Endpoints = append(e.changes.Endpoints, u)
		}
	}
	e.dirty = map[*endpointState]*dirtyState{}
	ch := e.changes
	e.changes = Changes{}
	sortUpdates(ch.Endpoints)
	sort.Slice(ch.IPCacheDeletes, func(i, j int) bool { return ch.IPCacheDeletes[i].String() < ch.IPCacheDeletes[j].String() })
	return ch
}

func sortUpdates(us []EndpointUpdate) {
	sort.Slice(us, func(i, j int) bool { return us[i].ID < us[j].ID })
}

func (e *Engine) recompileFull(st *endpointState) EndpointUpdate {
	before := st.effective()
	e.compileFull(st)
	up, del := Diff(before, st.effective())
	return EndpointUpdate{ID: st.ep.ID, Flags: st.effectiveFlags(), Upserts: up, Deletes: del, OverCapacity: st.over}
}

// recompileIDs rebuilds only the slices of the given identities.
func (e *Engine) recompileIDs(st *endpointState, ids map[datapath.Identity]struct{}) EndpointUpdate {
	fresh := make(map[datapath.Identity]slice, len(ids))
	count := st.count
	for id := range ids {
		s := e.buildSlice(st, id, rulesFor(st, id))
		fresh[id] = s
		count += len(s) - len(st.slices[id])
	}
	over := count > e.capacity
	u := EndpointUpdate{ID: st.ep.ID, Upserts: datapath.PolicyMapEntries{}, OverCapacity: over}
	var before datapath.PolicyMapEntries
	if over != st.over {
		before = st.effective()
	}
	for id, s := range fresh {
		if over == st.over && !over {
			up, del := Diff(st.slices[id], s)
			for k, v := range up {
				u.Upserts[k] = v
			}
			u.Deletes = append(u.Deletes, del...)
		}
		if len(s) == 0 {
			delete(st.slices, id)
		} else {
			st.slices[id] = s
		}
	}
	st.count, st.over = count, over
	if before != nil {
		u.Upserts, u.Deletes = Diff(before, st.effective())
	}
	SortKeys(u.Deletes)
	u.Flags = st.effectiveFlags()
	return u
}

// EndpointPolicy returns the desired state of a local endpoint.
func (e *Engine) EndpointPolicy(id uint32) (EndpointPolicy, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, ok := e.endpoints[id]
	if !ok || !st.local() {
		return EndpointPolicy{}, false
	}
	return EndpointPolicy{Flags: st.effectiveFlags(), Entries: st.effective(), OverCapacity: st.over}, true
}

// IPCache returns the CIDR prefixes the policies need in the ipcache and
// their node-local identities.
func (e *Engine) IPCache() map[netip.Prefix]datapath.Identity {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[netip.Prefix]datapath.Identity, len(e.ipcache))
	for k, v := range e.ipcache {
		out[k] = v
	}
	return out
}

// Cookie names the rule behind a cookie seen in a flow event.
func (e *Engine) Cookie(c uint32) (CookieInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	info, ok := e.cookies.byID[c]
	return info, ok
}

// PolicyCounts are the per-policy figures of its status.
type PolicyCounts struct {
	SelectedEndpoints     int
	EndpointsOverCapacity int
}

// PolicyCounts returns the status counts of a policy on this node.
func (e *Engine) PolicyCounts(ref PolicyRef) (PolicyCounts, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ps, ok := e.policies[ref]
	if !ok {
		return PolicyCounts{}, false
	}
	c := PolicyCounts{SelectedEndpoints: len(ps.selected)}
	for st := range ps.selected {
		if st.over {
			c.EndpointsOverCapacity++
		}
	}
	return c, true
}

// Selectors exposes the selector cache (read it under no concurrent
// mutation, e.g. in tests and debug dumps).
func (e *Engine) Selectors() *SelectorCache { return e.cache }

// Metrics returns current counters.
func (e *Engine) Metrics() Metrics {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := Metrics{Policies: len(e.policies), Identities: len(e.cache.ids), Selectors: len(e.cache.sels)}
	for _, st := range e.endpoints {
		if !st.local() {
			continue
		}
		m.Endpoints++
		m.Entries += st.count
		if st.over {
			m.EndpointsOverCapacity++
		}
	}
	return m
}

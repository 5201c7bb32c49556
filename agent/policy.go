package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/policy"
)

// FailClosedFlags enforce both directions. An endpoint whose policy is not
// known (identity unresolved, state not synced, map over capacity) gets
// them: with no policy map its traffic is dropped as "no policy map".
const FailClosedFlags = datapath.EndpointEnforceIngress | datapath.EndpointEnforceEgress

// remoteIDBase is the first policy-engine ID given to remote endpoints; it
// is above every local endpoint ID (MaxEndpointID).
const remoteIDBase = 1 << 20

// EnforcerConfig configures an Enforcer.
type EnforcerConfig struct {
	// Datapath is the real datapath; the Enforcer's Datapath() wraps it for
	// the endpoint manager.
	Datapath PolicyDatapath
	// Capacity is the entries of one endpoint's policy map (0: the policy
	// package's default, which is the datapath's default).
	Capacity int
	// Enforcement is the global mode (for the engine's explanations).
	Enforcement datapath.EnforcementMode
	Logger      *slog.Logger
}

// LocalEndpoint is the enforcer's view of one of the node's endpoints.
type LocalEndpoint struct {
	ID           uint32
	ContainerID  string
	IfName       string
	PodNamespace string
	PodName      string
	IPs          []netip.Addr
	Identity     datapath.Identity
	Flags        datapath.EndpointFlags
	// Computed: the policy engine knows the endpoint (its identity is a
	// resolved cluster identity), so its flags and entries are computed
	// rather than failed closed.
	Computed bool
}

// RemoteEndpoint is a pod of another node (from its SigilEndpoint).
type RemoteEndpoint struct {
	Identity   datapath.Identity
	IPs        []netip.Addr
	NamedPorts []policy.NamedPort
	// TunnelEndpoint is the underlay address of the pod's node.
	TunnelEndpoint netip.Addr
}

type localEP struct {
	LocalEndpoint
	namedPorts []policy.NamedPort
	infos      map[netip.Addr]EndpointInfo // last endpoints-map values (MACs, ifindex)
}

type remoteEP struct {
	RemoteEndpoint
	engineID uint32
	inEngine bool
}

type persistReq struct {
	cid, ifName     string
	identity, flags uint32
}

// Enforcer wires the policy engine (package policy) to the datapath: it
// owns the engine, knows the node's endpoints (the endpoint manager tells
// it through the Datapath wrapper and the PolicyFlags hook), and writes the
// engine's changes to the BPF maps: per-endpoint policy entries (only what
// changed), endpoint flags and identities, and the ipcache entries of
// remote pods, nodes and CIDR identities. After a change it deletes the
// conntrack entries of flows the new policy denies.
//
// Until MarkSynced it writes nothing but what the endpoint manager writes:
// restored endpoints keep the identity, flags and policy map the pinned
// maps hold, and new endpoints are failed closed. Every method is safe for
// concurrent use; callers should still serialize updates (one reconciler).
type Enforcer struct {
	mu         sync.Mutex
	log        *slog.Logger
	dp         PolicyDatapath
	engine     *policy.Engine
	synced     bool
	eps        map[uint32]*localEP
	byIP       map[netip.Addr]*localEP
	remote     map[string]*remoteEP
	nextRemote uint32
	identities map[datapath.Identity]identity.Labels
	policies   map[policy.PolicyRef]*policy.Policy // for PolicyView (policyview_enforcer.go)
	nodeIPC    map[netip.Prefix]datapath.IPCacheEntry
	ipcApplied map[netip.Prefix]datapath.IPCacheEntry
	pendingObs []time.Time

	onEndpoint func(LocalEndpoint, bool)
	persistQ   []persistReq
	notifyQ    []func()
	notifyMu   sync.Mutex

	// The endpoint state files are written by a goroutine: the manager
	// calls into the enforcer with its own lock held.
	persistMu   sync.Mutex
	persist     func(cid, ifName string, identity, flags uint32)
	persistPend map[[2]string]persistReq
	persistKick chan struct{}
}

// NewEnforcer returns an enforcer with an empty engine.
func NewEnforcer(cfg EnforcerConfig) (*Enforcer, error) {
	if cfg.Datapath == nil {
		return nil, errors.New("agent: enforcer needs a policy datapath")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Enforcer{
		log: cfg.Logger, dp: cfg.Datapath,
		engine: policy.NewEngine(policy.Config{Capacity: cfg.Capacity, Enforcement: cfg.Enforcement}),
		eps:    map[uint32]*localEP{}, byIP: map[netip.Addr]*localEP{}, remote: map[string]*remoteEP{},
		nextRemote: remoteIDBase, identities: map[datapath.Identity]identity.Labels{},
		policies: map[policy.PolicyRef]*policy.Policy{},
		nodeIPC:  map[netip.Prefix]datapath.IPCacheEntry{}, ipcApplied: map[netip.Prefix]datapath.IPCacheEntry{},
		persistPend: map[[2]string]persistReq{}, persistKick: make(chan struct{}, 1),
	}, nil
}

// Engine returns the policy engine (for explanations and cookies; do not
// mutate it directly).
func (e *Enforcer) Engine() *policy.Engine { return e.engine }

// OnEndpoint sets a callback run when a local endpoint appears (removed
// false) or goes. It runs without the enforcer's lock held, possibly with
// the endpoint manager's lock held: it must not block.
func (e *Enforcer) OnEndpoint(fn func(ep LocalEndpoint, removed bool)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onEndpoint = fn
}

// Attach connects the enforcer to the endpoint manager m: the identity and
// flags the enforcer sets are persisted in m's endpoint state (so a restart
// restores them), and the endpoints m restored are adopted. Call it after
// m.Restore. The state files are written by a goroutine that runs for the
// rest of the process.
func (e *Enforcer) Attach(m *Manager) {
	e.persistMu.Lock()
	first := e.persist == nil
	e.persist = func(cid, ifName string, id, flags uint32) {
		if err := m.UpdatePolicyState(cid, ifName, id, flags); err != nil {
			e.log.Warn("persist endpoint policy state", "container", cid, "if", ifName, "err", err)
		}
	}
	e.persistMu.Unlock()
	if first {
		go e.persistLoop()
	}
	e.Adopt(m.List())
}

// persistLoop writes queued endpoint states, latest value per endpoint.
func (e *Enforcer) persistLoop() {
	for range e.persistKick {
		e.persistMu.Lock()
		pend, fn := e.persistPend, e.persist
		e.persistPend = map[[2]string]persistReq{}
		e.persistMu.Unlock()
		for _, p := range pend {
			fn(p.cid, p.ifName, p.identity, p.flags)
		}
	}
}

// Synced reports whether MarkSynced has run.
func (e *Enforcer) Synced() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.synced
}

// unlock releases the lock, then persists and notifies what the critical
// section queued (both take other locks).
func (e *Enforcer) unlock() {
	pq, nq := e.persistQ, e.notifyQ
	e.persistQ, e.notifyQ = nil, nil
	e.mu.Unlock()
	if len(pq) > 0 {
		e.persistMu.Lock()
		if e.persist != nil {
			for _, p := range pq {
				e.persistPend[[2]string{p.cid, p.ifName}] = p
			}
			select {
			case e.persistKick <- struct{}{}:
			default:
			}
		}
		e.persistMu.Unlock()
	}
	e.notifyMu.Lock()
	defer e.notifyMu.Unlock()
	for _, fn := range nq {
		fn()
	}
}

func (e *Enforcer) notify(ep *localEP, removed bool) {
	if e.onEndpoint == nil {
		return
	}
	fn, le := e.onEndpoint, ep.snapshot()
	e.notifyQ = append(e.notifyQ, func() { fn(le, removed) })
}

func (ep *localEP) snapshot() LocalEndpoint {
	le := ep.LocalEndpoint
	le.IPs = slices.Clone(le.IPs)
	return le
}

// Endpoints lists the local endpoints, sorted by ID.
func (e *Enforcer) Endpoints() []LocalEndpoint {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]LocalEndpoint, 0, len(e.eps))
	for _, ep := range e.eps {
		out = append(out, ep.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Endpoint returns one local endpoint.
func (e *Enforcer) Endpoint(id uint32) (LocalEndpoint, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ep, ok := e.eps[id]
	if !ok {
		return LocalEndpoint{}, false
	}
	return ep.snapshot(), true
}

// Adopt registers endpoints the manager restored. Their identity and flags
// are what the endpoints map holds (the state the previous run applied);
// nothing is written.
func (e *Enforcer) Adopt(eps []apitypes.Endpoint) {
	e.mu.Lock()
	defer e.unlock()
	for i := range eps {
		a := &eps[i]
		if _, ok := e.eps[a.ID]; ok {
			continue
		}
		ep := &localEP{LocalEndpoint: LocalEndpoint{ID: a.ID, ContainerID: a.ContainerID, IfName: a.IfName,
			PodNamespace: a.PodNamespace, PodName: a.PodName, IPs: epIPs(a),
			Identity: datapath.Identity(a.Identity), Flags: datapath.EndpointFlags(a.PolicyFlags)},
			infos: map[netip.Addr]EndpointInfo{}}
		for _, ip := range ep.IPs {
			if info, ok, err := e.dp.LookupEndpoint(ip); err == nil && ok && info.ID == a.ID {
				ep.infos[ip] = info
				ep.Identity, ep.Flags = datapath.Identity(info.Identity), datapath.EndpointFlags(info.Flags)
			}
		}
		e.register(ep)
	}
}

func (e *Enforcer) register(ep *localEP) {
	e.eps[ep.ID] = ep
	for _, ip := range ep.IPs {
		e.byIP[ip] = ep
	}
	e.notify(ep, false)
}

// PolicyFlags is the endpoint manager's hook (Config.PolicyFlags): it
// registers a new endpoint and returns its enforcement flags. When the
// identity is resolved and the state synced, the policy is computed now
// (and SyncPolicy writes it before the endpoint is visible); otherwise the
// endpoint is failed closed until the identity resolves.
func (e *Enforcer) PolicyFlags(a *apitypes.Endpoint) uint32 {
	e.mu.Lock()
	defer e.unlock()
	if old, ok := e.eps[a.ID]; ok { // a stale registration of the same ID
		e.forget(old)
	}
	ep := &localEP{LocalEndpoint: LocalEndpoint{ID: a.ID, ContainerID: a.ContainerID, IfName: a.IfName,
		PodNamespace: a.PodNamespace, PodName: a.PodName, IPs: epIPs(a),
		Identity: datapath.Identity(a.Identity), Flags: FailClosedFlags}, infos: map[netip.Addr]EndpointInfo{}}
	e.register(ep)
	if _, known := e.identities[ep.Identity]; known && e.synced {
		ch, err := e.engine.UpsertEndpoint(ep.engineEndpoint())
		if err != nil {
			e.log.Error("policy engine: add endpoint", "id", ep.ID, "err", err)
		} else {
			ep.Computed = true
			if pol, ok := e.engine.EndpointPolicy(ep.ID); ok {
				ep.Flags = pol.Flags
			}
			e.apply(ch, nil, false)
		}
	}
	return uint32(ep.Flags)
}

func (ep *localEP) engineEndpoint() policy.Endpoint {
	return policy.Endpoint{ID: ep.ID, Identity: ep.Identity, IPs: slices.Clone(ep.IPs), NamedPorts: slices.Clone(ep.namedPorts)}
}

// forget drops a local endpoint from the enforcer and the engine.
func (e *Enforcer) forget(ep *localEP) {
	delete(e.eps, ep.ID)
	for _, ip := range ep.IPs {
		if e.byIP[ip] == ep {
			delete(e.byIP, ip)
		}
	}
	if ep.Computed {
		ch := e.engine.RemoveEndpoint(ep.ID)
		if e.synced {
			e.apply(ch, nil, false)
		}
	}
	e.notify(ep, true)
}

// SetEndpointIdentity gives a local endpoint its resolved identity (with
// that identity's labels, so the engine knows it) and its pod's named
// ports. On a change the endpoint's entries, flags, endpoints-map and
// ipcache entries are rewritten in place: the endpoint is never removed.
func (e *Enforcer) SetEndpointIdentity(epID uint32, id datapath.Identity, lbls identity.Labels, namedPorts []policy.NamedPort) error {
	if identity.KindOf(id) != identity.KindCluster {
		return fmt.Errorf("agent: endpoint %d: identity %d is not a cluster identity", epID, id)
	}
	e.mu.Lock()
	defer e.unlock()
	ep, ok := e.eps[epID]
	if !ok {
		return nil
	}
	if err := e.upsertIdentity(id, lbls); err != nil {
		return err
	}
	sortNamedPorts(namedPorts)
	if ep.Computed && ep.Identity == id && slices.Equal(ep.namedPorts, namedPorts) {
		return nil
	}
	old := ep.Identity
	ep.Identity, ep.namedPorts = id, namedPorts
	ch, err := e.engine.UpsertEndpoint(ep.engineEndpoint())
	if err != nil {
		ep.Identity = old
		return err
	}
	ep.Computed = true
	if old != id {
		e.log.Info("endpoint identity", "id", ep.ID, "pod", ep.PodNamespace+"/"+ep.PodName, "old", old, "new", id)
	}
	if !e.synced {
		return nil
	}
	if old != id {
		// Entries first (for this endpoint and for the peers that select
		// the new identity), then the identity everyone resolves it to.
		e.apply(ch, nil, false)
		e.writeIdentity(ep)
		e.flushDenied(nil)
		return nil
	}
	e.apply(ch, nil, false)
	return nil
}

func sortNamedPorts(p []policy.NamedPort) {
	sort.Slice(p, func(i, j int) bool {
		if p[i].Name != p[j].Name {
			return p[i].Name < p[j].Name
		}
		if p[i].Proto != p[j].Proto {
			return p[i].Proto < p[j].Proto
		}
		return p[i].Port < p[j].Port
	})
}

// writeIdentity rewrites the ipcache and endpoints-map entries of ep.
func (e *Enforcer) writeIdentity(ep *localEP) {
	for _, ip := range ep.IPs {
		if err := e.dp.UpsertLocalIdentity(ip, uint32(ep.Identity)); err != nil {
			e.log.Error("ipcache: endpoint identity", "ip", ip, "err", err)
		}
	}
	e.writeEndpoint(ep)
}

// writeEndpoint rewrites the endpoints-map entries of ep with its identity
// and flags, and queues them for the endpoint state.
func (e *Enforcer) writeEndpoint(ep *localEP) {
	for ip, info := range ep.infos {
		info.Identity, info.Flags = uint32(ep.Identity), uint32(ep.Flags)
		if err := e.dp.UpsertEndpoint(ip, info); err != nil {
			e.log.Error("endpoints map: update", "ip", ip, "err", err)
			continue
		}
		ep.infos[ip] = info
	}
	e.persistQ = append(e.persistQ, persistReq{ep.ContainerID, ep.IfName, uint32(ep.Identity), uint32(ep.Flags)})
}

// UpsertIdentity adds a cluster identity (a SigilIdentity).
func (e *Enforcer) UpsertIdentity(id datapath.Identity, lbls identity.Labels) error {
	e.mu.Lock()
	defer e.unlock()
	return e.upsertIdentity(id, lbls)
}

func (e *Enforcer) upsertIdentity(id datapath.Identity, lbls identity.Labels) error {
	if old, ok := e.identities[id]; ok && old.Equal(lbls) {
		return nil
	}
	ch, err := e.engine.UpsertIdentity(id, lbls)
	if err != nil {
		return err
	}
	e.identities[id] = lbls
	e.applyIf(ch, nil)
	// Remote endpoints that waited for this identity.
	for _, r := range e.remote {
		if !r.inEngine && r.Identity == id {
			e.addRemote(r)
		}
	}
	return nil
}

// RemoveIdentity drops a cluster identity unless an endpoint still uses it
// (then it stays until they move off it) and reports whether it is in use.
func (e *Enforcer) RemoveIdentity(id datapath.Identity) (inUse bool) {
	e.mu.Lock()
	defer e.unlock()
	if _, ok := e.identities[id]; !ok {
		return false
	}
	for _, ep := range e.eps {
		if ep.Identity == id && ep.Computed {
			return true
		}
	}
	for _, r := range e.remote {
		if r.Identity == id && r.inEngine {
			return true
		}
	}
	delete(e.identities, id)
	e.applyIf(e.engine.RemoveIdentity(id), nil)
	return false
}

// KnownIdentity reports whether the engine knows a cluster identity.
func (e *Enforcer) KnownIdentity(id datapath.Identity) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.identities[id]
	return ok
}

// UpsertPolicy adds or replaces a policy; observed is when its change was
// seen (for the implementation-delay histogram).
func (e *Enforcer) UpsertPolicy(p *policy.Policy, observed time.Time) {
	e.mu.Lock()
	defer e.unlock()
	e.rememberPolicy(p.Ref, p)
	e.applyIf(e.engine.UpsertPolicy(p), &observed)
}

// RemovePolicy deletes a policy.
func (e *Enforcer) RemovePolicy(ref policy.PolicyRef, observed time.Time) {
	e.mu.Lock()
	defer e.unlock()
	e.rememberPolicy(ref, nil)
	e.applyIf(e.engine.RemovePolicy(ref), &observed)
}

// UpsertRemoteEndpoint adds or updates a pod of another node, keyed by
// namespace/name: its IPs go to the ipcache and, once its identity is
// known, the engine learns its IPs and named ports.
func (e *Enforcer) UpsertRemoteEndpoint(key string, r RemoteEndpoint) {
	e.mu.Lock()
	defer e.unlock()
	sortNamedPorts(r.NamedPorts)
	old, ok := e.remote[key]
	if ok && old.Identity == r.Identity && slices.Equal(old.IPs, r.IPs) &&
		slices.Equal(old.NamedPorts, r.NamedPorts) && old.TunnelEndpoint == r.TunnelEndpoint {
		return
	}
	st := &remoteEP{RemoteEndpoint: r}
	if ok {
		st.engineID = old.engineID
		if old.inEngine && old.Identity != r.Identity {
			e.applyIf(e.engine.RemoveEndpoint(old.engineID), nil)
		}
	} else {
		st.engineID = e.nextRemote
		e.nextRemote++
	}
	e.remote[key] = st
	if _, known := e.identities[r.Identity]; known {
		e.addRemote(st)
	}
	if e.synced {
		e.reconcileIPCache()
		if ok && old.Identity != r.Identity {
			e.flushDenied(nil)
		}
	}
}

func (e *Enforcer) addRemote(r *remoteEP) {
	ch, err := e.engine.UpsertEndpoint(policy.Endpoint{ID: r.engineID, Identity: r.Identity,
		IPs: slices.Clone(r.IPs), NamedPorts: slices.Clone(r.NamedPorts), Remote: true})
	if err != nil {
		e.log.Warn("policy engine: remote endpoint", "identity", r.Identity, "err", err)
		return
	}
	r.inEngine = true
	e.applyIf(ch, nil)
}

// RemoveRemoteEndpoint forgets a pod of another node.
func (e *Enforcer) RemoveRemoteEndpoint(key string) {
	e.mu.Lock()
	defer e.unlock()
	r, ok := e.remote[key]
	if !ok {
		return
	}
	delete(e.remote, key)
	if r.inEngine {
		e.applyIf(e.engine.RemoveEndpoint(r.engineID), nil)
	}
	if e.synced {
		e.reconcileIPCache()
	}
}

// SetNodeIPCache replaces the node entries of the ipcache (this node's
// addresses as host, other nodes' as remote-node).
func (e *Enforcer) SetNodeIPCache(entries map[netip.Prefix]datapath.IPCacheEntry) {
	e.mu.Lock()
	defer e.unlock()
	e.nodeIPC = entries
	if e.synced {
		e.reconcileIPCache()
	}
}

// MarkSynced ends the startup phase: the engine holds the API server's
// state, so every endpoint's policy map is brought to the computed entries
// (a diff against what is installed; nothing is cleared first), flags and
// identities are rewritten, stale ipcache entries removed, and conntrack
// entries of now-denied flows deleted. Endpoints without a resolved
// identity are failed closed.
func (e *Enforcer) MarkSynced() {
	e.mu.Lock()
	defer e.unlock()
	if e.synced {
		return
	}
	start := time.Now()
	e.synced = true
	// Restored endpoints whose pod the reconciler could not resolve keep
	// their identity if it still exists.
	for _, ep := range e.eps {
		if _, known := e.identities[ep.Identity]; known && !ep.Computed {
			// The changes are discarded: applyFull below writes it all.
			if _, err := e.engine.UpsertEndpoint(ep.engineEndpoint()); err == nil {
				ep.Computed = true
			}
		}
	}
	for _, ep := range e.eps {
		e.applyFull(ep)
		e.writeIdentity(ep)
	}
	if all, err := e.dp.ListIPCache(); err == nil {
		for p, ent := range all {
			if !ent.LocalEndpoint {
				e.ipcApplied[p] = ent
			}
		}
	} else {
		e.log.Error("ipcache: list", "err", err)
	}
	e.reconcileIPCache()
	e.flushDenied(nil)
	for _, t := range e.pendingObs {
		PolicyImplementationDelay.Observe(time.Since(t).Seconds())
	}
	e.pendingObs = nil
	e.log.Info("policy state synced to the datapath", "endpoints", len(e.eps), "remoteEndpoints", len(e.remote),
		"identities", len(e.identities), "took", time.Since(start).String())
}

// applyFull writes the complete desired state of ep.
func (e *Enforcer) applyFull(ep *localEP) {
	var entries datapath.PolicyMapEntries
	flags := FailClosedFlags
	if ep.Computed {
		if pol, ok := e.engine.EndpointPolicy(ep.ID); ok {
			entries, flags = pol.Entries, pol.Flags
		}
	}
	e.writeEntries(ep, entries, &flags)
	ep.Flags = flags
}

// writeEntries syncs ep's policy map to entries; a capacity error fails the
// endpoint closed through *flags.
func (e *Enforcer) writeEntries(ep *localEP, entries datapath.PolicyMapEntries, flags *datapath.EndpointFlags) {
	if len(entries) == 0 && !e.dp.HasPolicyMap(ep.ID) {
		return // no map is an empty map (and costs no RCU wait)
	}
	st, err := e.dp.SyncPolicyEntries(ep.ID, entries)
	switch {
	case errors.Is(err, datapath.ErrPolicyCapacity):
		*flags = FailClosedFlags
		policyEndpointUpdates.WithLabelValues("over_capacity").Inc()
		e.log.Warn("policy map over capacity: endpoint failed closed", "id", ep.ID, "err", err)
	case err != nil:
		*flags = FailClosedFlags
		policyEndpointUpdates.WithLabelValues("error").Inc()
		e.log.Error("policy map write failed: endpoint failed closed", "id", ep.ID, "err", err)
	default:
		policyEndpointUpdates.WithLabelValues("ok").Inc()
		e.log.Debug("policy map synced", "id", ep.ID, "added", st.Added, "updated", st.Updated, "deleted", st.Deleted)
	}
}

func (e *Enforcer) applyIf(ch policy.Changes, observed *time.Time) {
	if !e.synced {
		if observed != nil {
			e.pendingObs = append(e.pendingObs, *observed)
		}
		return
	}
	e.apply(ch, observed, true)
}

// apply writes engine changes: each changed endpoint's entries (only if
// some changed), then its flags, then the ipcache, then the conntrack
// flush of flows now denied.
func (e *Enforcer) apply(ch policy.Changes, observed *time.Time, ipc bool) {
	var touched []*localEP
	for _, u := range ch.Endpoints {
		ep, ok := e.eps[u.ID]
		if !ok || u.Removed {
			continue
		}
		flags := u.Flags
		if len(u.Upserts) > 0 || len(u.Deletes) > 0 {
			pol, _ := e.engine.EndpointPolicy(u.ID)
			e.writeEntries(ep, pol.Entries, &flags)
		}
		if flags != ep.Flags {
			ep.Flags = flags
			e.writeEndpoint(ep)
		}
		touched = append(touched, ep)
	}
	if ipc || len(ch.IPCacheUpserts) > 0 || len(ch.IPCacheDeletes) > 0 {
		e.reconcileIPCache()
	}
	if observed != nil {
		PolicyImplementationDelay.Observe(time.Since(*observed).Seconds())
	}
	if len(touched) > 0 {
		e.flushDenied(touched)
	}
}

// desiredIPCache is every non-local ipcache entry the node needs: CIDR
// identities, nodes, then remote pods (later ones win on equal prefixes);
// local endpoint addresses are left to the endpoint manager.
func (e *Enforcer) desiredIPCache() map[netip.Prefix]datapath.IPCacheEntry {
	out := map[netip.Prefix]datapath.IPCacheEntry{}
	for p, id := range e.engine.IPCache() {
		out[p] = datapath.IPCacheEntry{Identity: id}
	}
	for p, ent := range e.nodeIPC {
		out[p.Masked()] = ent
	}
	for _, r := range e.remote {
		for _, ip := range r.IPs {
			out[netip.PrefixFrom(ip, ip.BitLen())] = datapath.IPCacheEntry{Identity: r.Identity, TunnelEndpoint: r.TunnelEndpoint}
		}
	}
	for p := range out {
		if p.IsSingleIP() && e.byIP[p.Addr()] != nil {
			delete(out, p)
		}
	}
	return out
}

// reconcileIPCache writes the difference between the desired non-local
// entries and those written before: upserts first, then deletes.
func (e *Enforcer) reconcileIPCache() {
	want := e.desiredIPCache()
	for p, ent := range want {
		if old, ok := e.ipcApplied[p]; ok && old == ent {
			continue
		}
		if err := e.dp.UpsertIPCache(p, ent); err != nil {
			e.log.Error("ipcache: upsert", "prefix", p, "err", err)
			continue
		}
		e.ipcApplied[p] = ent
	}
	for p := range e.ipcApplied {
		if _, ok := want[p]; ok {
			continue
		}
		if p.IsSingleIP() && e.byIP[p.Addr()] != nil {
			delete(e.ipcApplied, p) // now a local endpoint's entry
			continue
		}
		if err := e.dp.DeleteIPCache(p); err != nil {
			e.log.Error("ipcache: delete", "prefix", p, "err", err)
			continue
		}
		delete(e.ipcApplied, p)
	}
}

// flushDenied deletes the conntrack entries of eps (nil: every local
// endpoint) whose flows the installed policy now drops, as the datapath
// would judge them as new flows (datapath.EvaluatePolicy).
func (e *Enforcer) flushDenied(eps []*localEP) {
	if len(e.eps) == 0 {
		return
	}
	check := map[netip.Addr]*localEP{}
	if eps == nil {
		for ip, ep := range e.byIP {
			check[ip] = ep
		}
	} else {
		for _, ep := range eps {
			for _, ip := range ep.IPs {
				check[ip] = ep
			}
		}
	}
	rc, err := e.dp.RuntimeConfig()
	if err != nil {
		e.log.Error("conntrack flush: runtime config", "err", err)
		return
	}
	cts, err := e.dp.ListConntrack()
	if err != nil {
		e.log.Error("conntrack flush: list", "err", err)
		return
	}
	entries := map[uint32]datapath.PolicyMapEntries{}
	policyOf := func(ep *localEP) datapath.PolicyMapEntries {
		if m, ok := entries[ep.ID]; ok {
			return m
		}
		m, err := e.dp.PolicyEntries(ep.ID)
		if err != nil {
			m = nil
		}
		entries[ep.ID] = m
		return m
	}
	n := 0
	for _, ct := range cts {
		t := ct.Tuple
		var ep *localEP
		var peer netip.Addr
		if t.Direction == datapath.Egress {
			ep, peer = check[t.Src], t.Dst
		} else {
			ep, peer = check[t.Dst], t.Src
		}
		if ep == nil {
			continue
		}
		port, exact := t.DstPort, true
		if t.Proto == datapath.ProtoICMP {
			// Echo requests are tracked with the identifier as source
			// port; other ICMP types are not recoverable: re-judge them.
			port, exact = 8<<8, t.SrcPort != 0 && t.DstPort == 0
		}
		peerID := datapath.IdentityWorld
		if ent, ok, err := e.dp.LookupIPCache(peer); err == nil && ok {
			peerID = ent.Identity
		}
		reason, _ := datapath.EvaluatePolicy(rc, ep.Flags, policyOf(ep), t.Direction, peerID, t.Proto, port)
		if reason == datapath.ReasonForwarded && exact {
			continue
		}
		if err := e.dp.DeleteConntrack(t); err != nil {
			e.log.Warn("conntrack flush: delete", "tuple", t.String(), "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		policyConntrackFlushed.Add(float64(n))
		e.log.Info("conntrack: flushed flows the policy now denies", "entries", n)
	}
}

// Datapath wraps the enforcer's datapath for the endpoint manager: what
// the manager writes for an endpoint carries the identity and flags the
// enforcer decided, its policy map is the engine's, and before MarkSynced
// a restored endpoint keeps what the pinned maps hold.
func (e *Enforcer) Datapath() Datapath { return &policyDatapath{PolicyDatapath: e.dp, e: e} }

type policyDatapath struct {
	PolicyDatapath
	e *Enforcer
}

func (w *policyDatapath) UpsertLocalIdentity(ip netip.Addr, id uint32) error {
	e := w.e
	e.mu.Lock()
	defer e.unlock()
	if ep := e.byIP[ip]; ep != nil {
		id = uint32(ep.Identity)
	} else if !e.synced {
		if ent, ok, err := e.dp.LookupIPCache(ip); err == nil && ok && ent.LocalEndpoint {
			return nil // restoring: keep what the last run applied
		}
	}
	return e.dp.UpsertLocalIdentity(ip, id)
}

func (w *policyDatapath) UpsertEndpoint(ip netip.Addr, info EndpointInfo) error {
	e := w.e
	e.mu.Lock()
	defer e.unlock()
	switch ep := e.byIP[ip]; {
	case ep != nil && ep.ID == info.ID:
		info.Identity, info.Flags = uint32(ep.Identity), uint32(ep.Flags)
		ep.infos[ip] = cloneInfo(info)
	case !e.synced:
		if old, ok, err := e.dp.LookupEndpoint(ip); err == nil && ok && old.ID == info.ID {
			info.Identity, info.Flags = old.Identity, old.Flags // restoring: keep the last applied state
		}
	default:
		info.Flags = uint32(FailClosedFlags) // unknown to the enforcer: fail closed
	}
	return e.dp.UpsertEndpoint(ip, info)
}

func cloneInfo(i EndpointInfo) EndpointInfo {
	i.MAC, i.NodeMAC = slices.Clone(i.MAC), slices.Clone(i.NodeMAC)
	if i.MAC == nil {
		i.MAC = net.HardwareAddr{}
	}
	return i
}

// SyncPolicy writes the engine's entries for a new endpoint; before
// MarkSynced, and for endpoints the enforcer does not know (restore), the
// installed map is left untouched.
func (w *policyDatapath) SyncPolicy(epID uint32) error {
	e := w.e
	e.mu.Lock()
	defer e.unlock()
	ep := e.eps[epID]
	if ep == nil || !e.synced {
		return nil
	}
	var entries datapath.PolicyMapEntries
	if ep.Computed {
		pol, _ := e.engine.EndpointPolicy(epID)
		entries = pol.Entries
	}
	flags := ep.Flags
	e.writeEntries(ep, entries, &flags)
	ep.Flags = flags
	return nil
}

// RemovePolicy forgets the endpoint and deletes its policy map.
func (w *policyDatapath) RemovePolicy(epID uint32) error {
	e := w.e
	e.mu.Lock()
	if ep := e.eps[epID]; ep != nil {
		e.forget(ep)
	}
	e.unlock()
	if !e.dp.HasPolicyMap(epID) {
		return nil
	}
	return e.dp.RemovePolicy(epID)
}

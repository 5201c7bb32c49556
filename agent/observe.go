package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// Observability is what the API serves beyond endpoints: the flow
// pipeline, the datapath's maps and the agent's controllers. Zero fields
// are reported as not available.
type Observability struct {
	// Flows is the flow pipeline (nil: flows are not collected).
	Flows *flows.Pipeline
	// Maps are the datapath's maps (nil with --datapath=none).
	Maps *datapath.Maps
	// DatapathMode is tcx, tc or none; PinDir the bpffs directory.
	DatapathMode string
	PinDir       string
	// Controllers reports the agent's controllers (Kubernetes watches).
	Controllers func() []apitypes.ControllerStatus
	// Kubernetes reports the connection to the API server.
	Kubernetes func() apitypes.KubernetesStatus
	// Started is when the agent started.
	Started time.Time
}

type observeState struct {
	obs    atomic.Pointer[Observability]
	policy atomic.Pointer[policyHolder]
}

type policyHolder struct{ v PolicyView }

// SetObservability sets what the observability routes serve.
func (s *Server) SetObservability(o Observability) { s.obs.obs.Store(&o) }

// SetPolicyView plugs in the policy engine (nil: not running).
func (s *Server) SetPolicyView(v PolicyView) { s.obs.policy.Store(&policyHolder{v}) }

// PolicyView returns the policy engine's view, or nil while none runs.
func (s *Server) PolicyView() PolicyView {
	if h := s.obs.policy.Load(); h != nil {
		return h.v
	}
	return nil
}

func (s *Server) observability() *Observability {
	if o := s.obs.obs.Load(); o != nil {
		return o
	}
	return &Observability{DatapathMode: "unknown"}
}

func (s *Server) routeObservability(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/flows", s.flows)
	mux.HandleFunc("GET /v1/identities", s.identities)
	mux.HandleFunc("GET /v1/identities/{id}", s.identity)
	mux.HandleFunc("GET /v1/policies", s.policies)
	mux.HandleFunc("GET /v1/selectors", s.selectors)
	mux.HandleFunc("GET /v1/policy/explain", s.explain)
}

func (s *Server) unavailable(w http.ResponseWriter, msg string) {
	writeErr(w, http.StatusServiceUnavailable, apitypes.CodeUnavailable, msg)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	o := s.observability()
	st := apitypes.Status{Health: apitypes.Health{APIVersion: apitypes.Version, PodCIDR: s.m.Pool().Prefix.String()}}
	if s.m.Ready() {
		st.Health.Status, st.Health.Ready = "ok", true
	} else {
		st.Health.Status, st.Health.Message = "not-ready", "restoring endpoints"
	}
	if !o.Started.IsZero() {
		st.Uptime = time.Since(o.Started).Round(time.Second).String()
	}
	eps := s.m.List()
	st.Endpoints, st.Health.Endpoints = len(eps), len(eps)
	st.Datapath = apitypes.DatapathStatus{Mode: o.DatapathMode, PinDir: o.PinDir, Prefilter: PrefilterModes(o.PinDir)}
	if o.Maps != nil {
		if rc, err := o.Maps.Config.Get(); err == nil {
			st.Datapath.Enforcement = rc.Enforcement.String()
		} else {
			st.Datapath.Error = err.Error()
		}
		st.Datapath.Maps, _ = MapStatuses(o.Maps)
	}
	if pv := s.PolicyView(); pv != nil {
		if ids, err := pv.Identities(); err == nil {
			st.Identities = len(ids)
		}
		if ps, err := pv.Policies(); err == nil {
			st.Policies = len(ps)
		} else {
			st.PolicyError = err.Error()
		}
	} else {
		st.Identities = len(localIdentities(eps))
		st.PolicyError = ErrPolicyEngineNotRunning.Error()
	}
	if o.Kubernetes != nil {
		st.Kubernetes = o.Kubernetes()
	} else if fn := s.k8sHealth.Load(); fn != nil {
		h := (*fn)()
		st.Kubernetes = apitypes.KubernetesStatus{Enabled: true, Connected: h.Connected, Message: h.Message}
		c := apitypes.ControllerStatus{Name: "kubernetes-policy-sync", LastSync: h.LastSync}
		if !h.Synced {
			c.LastError = "not synced: " + h.Message
		}
		st.Controllers = append(st.Controllers, c)
	} else {
		st.Kubernetes.Message = "agent started without Kubernetes"
	}
	if o.Controllers != nil {
		st.Controllers = append(st.Controllers, o.Controllers()...)
	}
	if o.Flows != nil {
		st.Flows = o.Flows.Stats()
	}
	writeJSON(w, http.StatusOK, st)
}

// MapStatuses reports the fill level of the datapath's hash-like maps.
func MapStatuses(ms *datapath.Maps) ([]apitypes.MapStatus, error) {
	p, err := ms.Pressure()
	if err != nil {
		return nil, err
	}
	out := make([]apitypes.MapStatus, 0, len(p))
	for name, v := range p {
		m := apitypes.MapStatus{Name: name, Entries: v[0], Max: v[1]}
		if v[1] > 0 {
			m.Pressure = float64(v[0]) / float64(v[1])
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *Server) flows(w http.ResponseWriter, r *http.Request) {
	o := s.observability()
	if o.Flows == nil {
		s.unavailable(w, "flow observability is not running on this agent (started with --datapath=none?)")
		return
	}
	q, err := flows.ParseQuery(r.URL.Query())
	if err != nil {
		writeErr(w, http.StatusBadRequest, apitypes.CodeInvalid, err.Error())
		return
	}
	backlog, sub := o.Flows.Subscribe(q)
	if sub != nil {
		defer sub.Close()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for i := range backlog {
		if enc.Encode(&backlog[i]) != nil {
			return
		}
	}
	rc.Flush()
	if sub == nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case rec, ok := <-sub.C:
			if !ok {
				return
			}
			if enc.Encode(&rec) != nil {
				return
			}
			if len(sub.C) == 0 {
				if rc.Flush() != nil {
					return
				}
			}
		}
	}
}

// localIdentities are the reserved identities and those of local
// endpoints, which is what the agent knows without the policy engine.
func localIdentities(eps []apitypes.Endpoint) []apitypes.Identity {
	byID := map[uint32]*apitypes.Identity{}
	for _, id := range identity.Reserved() {
		byID[uint32(id)] = &apitypes.Identity{ID: uint32(id), Kind: "reserved", Labels: LabelStrings(identity.ReservedLabels(id))}
	}
	for _, ep := range eps {
		it, ok := byID[ep.Identity]
		if !ok {
			it = &apitypes.Identity{ID: ep.Identity, Kind: IdentityKind(datapath.Identity(ep.Identity)), Labels: LabelStrings(ep.Labels)}
			byID[ep.Identity] = it
		}
		it.Endpoints = append(it.Endpoints, ep.ID)
	}
	out := make([]apitypes.Identity, 0, len(byID))
	for _, it := range byID {
		out = append(out, *it)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// identityList is the policy engine's identities, or the local ones
// without it; each with the local endpoints that have it.
func (s *Server) identityList() []apitypes.Identity {
	eps := s.m.List()
	pv := s.PolicyView()
	if pv == nil {
		return localIdentities(eps)
	}
	ids, err := pv.Identities()
	if err != nil {
		return localIdentities(eps)
	}
	byID := map[uint32]int{}
	for i := range ids {
		byID[ids[i].ID] = i
	}
	for _, ep := range eps {
		if i, ok := byID[ep.Identity]; ok {
			ids[i].Endpoints = append(ids[i].Endpoints, ep.ID)
		}
	}
	return ids
}

func (s *Server) identities(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, apitypes.IdentityList{Identities: s.identityList()})
}

func (s *Server) identity(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
	if err != nil {
		writeErr(w, http.StatusBadRequest, apitypes.CodeInvalid, fmt.Sprintf("identity %q: want a number", r.PathValue("id")))
		return
	}
	for _, it := range s.identityList() {
		if it.ID == uint32(id) {
			writeJSON(w, http.StatusOK, it)
			return
		}
	}
	writeErr(w, http.StatusNotFound, apitypes.CodeNotFound, fmt.Sprintf("identity %d is not known to this agent", id))
}

func (s *Server) policies(w http.ResponseWriter, r *http.Request) {
	pv := s.PolicyView()
	if pv == nil {
		s.unavailable(w, ErrPolicyEngineNotRunning.Error())
		return
	}
	ps, err := pv.Policies()
	if err != nil {
		s.unavailable(w, err.Error())
		return
	}
	if ps == nil {
		ps = []apitypes.Policy{}
	}
	writeJSON(w, http.StatusOK, apitypes.PolicyList{Policies: ps})
}

func (s *Server) selectors(w http.ResponseWriter, r *http.Request) {
	pv := s.PolicyView()
	if pv == nil {
		s.unavailable(w, ErrPolicyEngineNotRunning.Error())
		return
	}
	sels, err := pv.Selectors()
	if err != nil {
		s.unavailable(w, err.Error())
		return
	}
	if sels == nil {
		sels = []apitypes.Selector{}
	}
	writeJSON(w, http.StatusOK, apitypes.SelectorList{Selectors: sels})
}

// ParseProtocol parses tcp, udp, icmp, sctp or a protocol number.
func ParseProtocol(s string) (uint8, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return datapath.ProtoTCP, nil
	case "udp":
		return datapath.ProtoUDP, nil
	case "icmp":
		return datapath.ProtoICMP, nil
	case "sctp":
		return datapath.ProtoSCTP, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp, sctp or a number 1-255", s)
	}
	return uint8(n), nil
}

// resolvePeer finds a peer by "namespace/pod" or IP: a local endpoint, a
// pod the policy engine knows, or an address resolved through the ipcache.
func (s *Server) resolvePeer(name string, o *Observability) (apitypes.ExplainPeer, error) {
	p := apitypes.ExplainPeer{Name: name}
	if ip, err := netip.ParseAddr(name); err == nil {
		p.IP = ip
		for _, ep := range s.m.List() {
			for _, a := range ep.Addresses {
				if a.IP == ip {
					p.EndpointID, p.Identity, p.Local = ep.ID, ep.Identity, true
					return p, nil
				}
			}
		}
		p.Identity = uint32(datapath.IdentityWorld)
		if o.Maps != nil {
			if e, ok, err := o.Maps.IPCache.Lookup(ip); err == nil && ok {
				p.Identity = uint32(e.Identity)
			}
		}
		return p, nil
	}
	ns, pod, ok := strings.Cut(name, "/")
	if !ok || ns == "" || pod == "" {
		return p, fmt.Errorf("peer %q: want namespace/pod or an IP address", name)
	}
	for _, ep := range s.m.List() {
		if ep.PodNamespace == ns && ep.PodName == pod {
			p.EndpointID, p.Identity, p.Local = ep.ID, ep.Identity, true
			if len(ep.Addresses) > 0 {
				p.IP = ep.Addresses[0].IP
			}
			return p, nil
		}
	}
	if pr, ok := s.PolicyView().(PodResolver); ok {
		if rp, ok := pr.PodByName(ns, pod); ok {
			rp.Name = name
			return rp, nil
		}
	}
	return p, fmt.Errorf("pod %s is not an endpoint of this node and the policy engine does not know it", name)
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	pv := s.PolicyView()
	if pv == nil {
		s.unavailable(w, ErrPolicyEngineNotRunning.Error())
		return
	}
	o := s.observability()
	q := r.URL.Query()
	bad := func(msg string) { writeErr(w, http.StatusBadRequest, apitypes.CodeInvalid, msg) }
	if q.Get("from") == "" || q.Get("to") == "" {
		bad("from and to are required (namespace/pod or IP)")
		return
	}
	proto, err := ParseProtocol(q.Get("protocol"))
	if err != nil {
		bad(err.Error())
		return
	}
	var port uint16
	if s := q.Get("port"); s != "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			bad(fmt.Sprintf("port %q: want 0-65535", s))
			return
		}
		port = uint16(n)
	}
	from, err := s.resolvePeer(q.Get("from"), o)
	if err != nil {
		writeErr(w, http.StatusNotFound, apitypes.CodeNotFound, err.Error())
		return
	}
	to, err := s.resolvePeer(q.Get("to"), o)
	if err != nil {
		writeErr(w, http.StatusNotFound, apitypes.CodeNotFound, err.Error())
		return
	}
	if !from.Local && !to.Local {
		bad(fmt.Sprintf("neither %s nor %s is an endpoint of this node: ask the agent of a node that runs one of them", from.Name, to.Name))
		return
	}
	vs, err := pv.Explain(from, to, proto, port)
	if err != nil {
		s.unavailable(w, err.Error())
		return
	}
	x := apitypes.Explanation{From: from, To: to, Protocol: datapath.ProtoName(proto), Port: port,
		Verdict: datapath.VerdictForwarded.String(), Verdicts: vs, Agree: true}
	for i := range x.Verdicts {
		v := &x.Verdicts[i]
		if v.Verdict != datapath.VerdictForwarded.String() {
			x.Verdict = datapath.VerdictDropped.String()
		}
		if o.Maps == nil {
			continue
		}
		ep, peer := from, to
		dir := datapath.Egress
		if v.Direction == datapath.Ingress.String() {
			ep, peer, dir = to, from, datapath.Ingress
		}
		reason, err := datapathVerdict(o.Maps, ep, peer, dir, proto, port)
		if err != nil {
			v.DatapathReason = "cannot read the maps: " + err.Error()
			continue
		}
		v.Datapath, v.DatapathReason = verdictOf(reason), reason.String()
		if v.Datapath != v.Verdict {
			x.Agree = false
		}
	}
	writeJSON(w, http.StatusOK, x)
}

// datapathVerdict evaluates a new flow with the maps installed in the
// kernel, as the BPF program would: the endpoint's flags, the peer's
// identity by the ipcache, the endpoint's policy map.
func datapathVerdict(ms *datapath.Maps, ep, peer apitypes.ExplainPeer, dir datapath.Direction, proto uint8, port uint16) (datapath.Reason, error) {
	rc, err := ms.Config.Get()
	if err != nil {
		return 0, err
	}
	info, err := ms.Endpoints.Lookup(ep.IP)
	if err != nil {
		return 0, fmt.Errorf("endpoints map entry of %s: %w", ep.IP, err)
	}
	peerID := datapath.Identity(peer.Identity)
	if peer.IP.IsValid() {
		peerID = datapath.IdentityWorld
		if e, ok, err := ms.IPCache.Lookup(peer.IP); err != nil {
			return 0, err
		} else if ok {
			peerID = e.Identity
		}
	}
	var entries datapath.PolicyMapEntries
	if ms.Policy.Has(info.ID) {
		if entries, err = ms.Policy.List(info.ID); err != nil {
			return 0, err
		}
	}
	reason, _ := datapath.EvaluatePolicy(rc, info.Flags, entries, dir, peerID, proto, port)
	return reason, nil
}

// FlowResolver enriches flows from the endpoint manager and, once it runs,
// the policy engine. Lookups are served from an index of the endpoints that
// is rebuilt at most every refresh interval, and at once (at most every
// 100ms) when an address is not found.
type FlowResolver struct {
	m      *Manager
	policy func() PolicyView

	mu        sync.Mutex
	byIP      map[netip.Addr]flows.Peer
	others    map[netip.Addr]flows.Peer // PodResolver answers (misses too) until the next rebuild
	idLabels  map[uint32][]string
	builtAt   time.Time
	enforced  map[enforceKey]enforceEntry
	refresh   time.Duration
	missDelay time.Duration
}

type enforceKey struct {
	ep  uint32
	dir datapath.Direction
}

type enforceEntry struct {
	at  time.Time
	pol []string
}

// NewFlowResolver returns the resolver of the agent's flow pipeline;
// policy returns the policy engine's view or nil.
func NewFlowResolver(m *Manager, policy func() PolicyView) *FlowResolver {
	return &FlowResolver{m: m, policy: policy, refresh: 2 * time.Second, missDelay: 100 * time.Millisecond,
		enforced: map[enforceKey]enforceEntry{}}
}

var _ flows.Resolver = (*FlowResolver)(nil)

func (fr *FlowResolver) rebuild(now time.Time) {
	byIP := map[netip.Addr]flows.Peer{}
	idLabels := map[uint32][]string{}
	for _, ep := range fr.m.List() {
		lbls, ok := idLabels[ep.Identity]
		if !ok {
			lbls = LabelStrings(ep.Labels)
			idLabels[ep.Identity] = lbls
		}
		for _, a := range ep.Addresses {
			byIP[a.IP] = flows.Peer{EndpointID: ep.ID, Namespace: ep.PodNamespace, PodName: ep.PodName, Labels: lbls}
		}
	}
	if pv := fr.policy(); pv != nil {
		if ids, err := pv.Identities(); err == nil {
			for _, it := range ids {
				if _, ok := idLabels[it.ID]; !ok {
					idLabels[it.ID] = it.Labels
				}
			}
		}
	}
	fr.byIP, fr.idLabels, fr.builtAt = byIP, idLabels, now
	fr.others = map[netip.Addr]flows.Peer{}
}

func (fr *FlowResolver) fresh(miss bool) {
	now := time.Now()
	age := now.Sub(fr.builtAt)
	if fr.byIP == nil || age >= fr.refresh || miss && age >= fr.missDelay {
		fr.rebuild(now)
	}
}

// ResolveIP implements flows.Resolver.
func (fr *FlowResolver) ResolveIP(ip netip.Addr) (flows.Peer, bool) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.fresh(false)
	p, ok := fr.byIP[ip]
	if !ok && fr.m.Pool().Prefix.Contains(ip) {
		fr.fresh(true)
		p, ok = fr.byIP[ip]
	}
	if ok {
		return p, true
	}
	if p, cached := fr.others[ip]; cached {
		return p, p.PodName != ""
	}
	if pr, isPR := fr.policy().(PodResolver); isPR {
		if ns, name, found := pr.PodByIP(ip.String()); found {
			p = flows.Peer{Namespace: ns, PodName: name}
		}
	}
	if len(fr.others) < 65536 {
		fr.others[ip] = p
	}
	return p, p.PodName != ""
}

// IdentityLabels implements flows.Resolver.
func (fr *FlowResolver) IdentityLabels(id uint32) ([]string, bool) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.fresh(false)
	l, ok := fr.idLabels[id]
	if !ok {
		if l = LabelStrings(identity.ReservedLabels(datapath.Identity(id))); len(l) > 0 {
			return l, true
		}
	}
	return l, ok
}

// Rule implements flows.Resolver.
func (fr *FlowResolver) Rule(cookie uint32) (apitypes.PolicyRule, bool) {
	pv := fr.policy()
	if pv == nil {
		return apitypes.PolicyRule{}, false
	}
	return pv.Rule(cookie)
}

// EnforcedBy implements flows.Resolver; answers are cached for a second.
func (fr *FlowResolver) EnforcedBy(epID uint32, dir datapath.Direction) []string {
	pv := fr.policy()
	if pv == nil {
		return nil
	}
	k := enforceKey{epID, dir}
	fr.mu.Lock()
	e, ok := fr.enforced[k]
	fr.mu.Unlock()
	if ok && time.Since(e.at) < time.Second {
		return e.pol
	}
	pol := pv.EnforcedBy(epID, dir)
	fr.mu.Lock()
	if len(fr.enforced) > 4096 {
		fr.enforced = map[enforceKey]enforceEntry{}
	}
	fr.enforced[k] = enforceEntry{at: time.Now(), pol: pol}
	fr.mu.Unlock()
	return pol
}

// IdentityCount is the number of identities the agent knows (the policy
// engine's, or the reserved and local ones without it).
func (s *Server) IdentityCount() int { return len(s.identityList()) }

// PrefilterModes reads where the XDP prefilter pinned under pinDir is
// attached, and in which mode; nil when it is not.
func PrefilterModes(pinDir string) map[string]string {
	if pinDir == "" {
		return nil
	}
	att, err := datapath.PrefilterAttachments(pinDir)
	if err != nil || len(att) == 0 {
		return nil
	}
	out := make(map[string]string, len(att))
	for ifName, mode := range att {
		out[ifName] = string(mode)
	}
	return out
}

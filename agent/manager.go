// Package agent is the node agent's endpoint manager, its local API server
// and the CNI installation it does on start.
package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/ipam"
)

// Error is an endpoint-manager error with an API code.
type Error struct {
	Code string
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func errf(code, format string, a ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}

// MaxEndpointID bounds endpoint IDs (the datapath's policy outer map size).
const MaxEndpointID = 4095

// Config configures a Manager.
type Config struct {
	// StateDir holds ipam.db, endpoints/*.json and identities.json.
	StateDir string
	// PodCIDR is the node's IPv4 pod CIDR.
	PodCIDR netip.Prefix
	// Gateway overrides the pod gateway (default: first usable address).
	Gateway netip.Addr
	// Datapath is driven for every endpoint.
	Datapath Datapath
	// Labels resolves pod labels (default RequestLabels{}).
	Labels LabelSource
	// Identities allocates identities (default LocalIdentities in StateDir).
	Identities IdentityAllocator
	// LinkExists reports whether the host interface still exists with that
	// index (default: a netlink lookup in the agent's netns).
	LinkExists func(name string, index int) bool
	// PolicyFlags returns the EP_F_* enforcement flags for a new endpoint.
	// Hook for the policy engine; default: 0 (no policy selects it).
	PolicyFlags func(ep *apitypes.Endpoint) uint32
	// AfterIPAM is a fault-injection hook run after the address is
	// committed and before any map is written (tests only).
	AfterIPAM func(ep *apitypes.Endpoint)
	Logger    *slog.Logger
}

type epKey struct{ cid, ifName string }

// Manager owns the node's endpoints.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	dp    Datapath
	store *ipam.Store
	pool  ipam.Pool
	epDir string

	mu    sync.Mutex
	eps   map[epKey]*apitypes.Endpoint
	ready atomic.Bool
}

// NewManager opens the state (IPAM store, identity file) but does not
// restore endpoints: call Restore.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: state dir is required")
	}
	if cfg.Datapath == nil {
		return nil, errors.New("agent: datapath is required")
	}
	pool, err := ipam.NewPool(cfg.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("agent: pod CIDR: %w", err)
	}
	if cfg.Gateway.IsValid() {
		if !pool.Prefix.Contains(cfg.Gateway) {
			return nil, fmt.Errorf("agent: gateway %s not in pod CIDR %s", cfg.Gateway, pool.Prefix)
		}
		pool.Gateway = cfg.Gateway
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	epDir := filepath.Join(cfg.StateDir, "endpoints")
	if err := os.MkdirAll(epDir, 0o700); err != nil {
		return nil, err
	}
	if cfg.Labels == nil {
		cfg.Labels = RequestLabels{}
	}
	if cfg.Identities == nil {
		ids, err := OpenLocalIdentities(filepath.Join(cfg.StateDir, "identities.json"))
		if err != nil {
			return nil, err
		}
		cfg.Identities = ids
	}
	if cfg.LinkExists == nil {
		cfg.LinkExists = netlinkLinkExists
	}
	if cfg.PolicyFlags == nil {
		cfg.PolicyFlags = func(*apitypes.Endpoint) uint32 { return 0 }
	}
	store, err := ipam.Open(filepath.Join(cfg.StateDir, "ipam.db"))
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, log: cfg.Logger, dp: cfg.Datapath, store: store, pool: pool,
		epDir: epDir, eps: map[epKey]*apitypes.Endpoint{}}, nil
}

// Close releases the state files; endpoints and the datapath stay as they
// are, so traffic keeps flowing while the agent is down.
func (m *Manager) Close() error { return m.store.Close() }

// Ready reports whether Restore has completed.
func (m *Manager) Ready() bool { return m.ready.Load() }

// Pool returns the IPv4 pool.
func (m *Manager) Pool() ipam.Pool { return m.pool }

func stateFile(dir string, k epKey) string {
	h := sha256.Sum256([]byte(k.cid + "\x00" + k.ifName))
	return filepath.Join(dir, hex.EncodeToString(h[:16])+".json")
}

func (m *Manager) saveState(ep *apitypes.Endpoint) error {
	data, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(stateFile(m.epDir, epKey{ep.ContainerID, ep.IfName}), data, 0o600)
}

func (m *Manager) removeState(k epKey) error {
	err := os.Remove(stateFile(m.epDir, k))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(m.epDir)
}

func validName(s string, max int) bool {
	return s != "" && len(s) <= max && !strings.ContainsAny(s, "/\x00")
}

func (m *Manager) validate(req *apitypes.EndpointRequest) error {
	switch {
	case !validName(req.ContainerID, 256):
		return errf(apitypes.CodeInvalid, "containerID must be 1-256 characters without '/'")
	case !validName(req.IfName, 15):
		return errf(apitypes.CodeInvalid, "ifName must be 1-15 characters without '/'")
	case !validName(req.HostIfName, 15):
		return errf(apitypes.CodeInvalid, "hostIfName must be 1-15 characters without '/'")
	case req.HostIfIndex <= 0:
		return errf(apitypes.CodeInvalid, "hostIfIndex must be positive")
	}
	if _, err := net.ParseMAC(req.MAC); err != nil {
		return errf(apitypes.CodeInvalid, "mac %q: %v", req.MAC, err)
	}
	if _, err := net.ParseMAC(req.HostMAC); err != nil {
		return errf(apitypes.CodeInvalid, "hostMAC %q: %v", req.HostMAC, err)
	}
	return nil
}

func (m *Manager) freeID() (uint32, error) {
	used := make(map[uint32]bool, len(m.eps))
	for _, ep := range m.eps {
		used[ep.ID] = true
	}
	for id := uint32(1); id <= MaxEndpointID; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, errf(apitypes.CodeInternal, "no free endpoint ID (all %d in use)", MaxEndpointID)
}

func epIPs(ep *apitypes.Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, a := range ep.Addresses {
		out = append(out, a.IP)
	}
	return out
}

// Create creates the endpoint of req, or returns it unchanged when it
// already exists on the same host interface (a retried ADD).
func (m *Manager) Create(req apitypes.EndpointRequest) (apitypes.Endpoint, error) {
	if !m.Ready() {
		return apitypes.Endpoint{}, errf(apitypes.CodeNotReady, "agent is still restoring its state")
	}
	if err := m.validate(&req); err != nil {
		return apitypes.Endpoint{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := epKey{req.ContainerID, req.IfName}
	var keepID uint32
	if old := m.eps[k]; old != nil {
		if old.HostIfIndex == req.HostIfIndex && old.HostIfName == req.HostIfName &&
			strings.EqualFold(old.MAC, req.MAC) {
			return *old, nil
		}
		// Same attachment on a new veth (a retried ADD after the old
		// pair vanished): move the endpoint, keep its address and ID.
		m.log.Info("endpoint moved to a new host interface", "container", req.ContainerID,
			"if", req.IfName, "old", old.HostIfName, "new", req.HostIfName)
		m.teardownDatapath(old)
		keepID = old.ID
		delete(m.eps, k)
	}
	ep, err := m.create(req, keepID)
	if err != nil {
		return apitypes.Endpoint{}, err
	}
	return *ep, nil
}

func (m *Manager) create(req apitypes.EndpointRequest, keepID uint32) (_ *apitypes.Endpoint, err error) {
	owner := ipam.Owner{ContainerID: req.ContainerID, IfName: req.IfName}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	t0 := time.Now()
	alloc, err := m.store.Allocate(m.pool, owner)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return nil, errf(apitypes.CodePoolExhaust, "pod CIDR %s is exhausted: all %d addresses are allocated", m.pool.Prefix, m.pool.Size())
		}
		return nil, errf(apitypes.CodeInternal, "ipam: %v", err)
	}
	undo = append(undo, func() {
		if _, err := m.store.Release(owner); err != nil {
			m.log.Error("rollback: release address", "owner", owner.String(), "err", err)
		}
	})

	id := keepID
	if id == 0 {
		if id, err = m.freeID(); err != nil {
			return nil, err
		}
	}
	labels, err := m.cfg.Labels.PodLabels(req)
	if err != nil {
		return nil, errf(apitypes.CodeInvalid, "labels: %v", err)
	}
	identity, err := m.cfg.Identities.AllocateIdentity(labels)
	if err != nil {
		return nil, errf(apitypes.CodeInternal, "identity: %v", err)
	}
	ep := &apitypes.Endpoint{
		ID: id, Identity: identity, ContainerID: req.ContainerID, IfName: req.IfName,
		NetNS: req.NetNS, HostIfName: req.HostIfName, HostIfIndex: req.HostIfIndex,
		HostMAC: strings.ToLower(req.HostMAC), MAC: strings.ToLower(req.MAC),
		PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: req.PodUID,
		Labels:    labels,
		Addresses: []apitypes.Address{{IP: alloc.IP, Pool: alloc.Prefix, Gateway: alloc.Gateway}},
		CreatedAt: time.Now().UTC(),
	}
	ep.PolicyFlags = m.cfg.PolicyFlags(ep)
	if m.cfg.AfterIPAM != nil {
		m.cfg.AfterIPAM(ep)
	}
	undo = append(undo, func() { m.teardownDatapath(ep) })
	t1 := time.Now()
	if err := m.applyDatapath(ep); err != nil {
		return nil, err
	}
	t2 := time.Now()
	if err := m.saveState(ep); err != nil {
		return nil, errf(apitypes.CodeInternal, "persist endpoint: %v", err)
	}
	m.eps[epKey{ep.ContainerID, ep.IfName}] = ep
	m.log.Info("endpoint created", "id", ep.ID, "container", ep.ContainerID, "if", ep.IfName,
		"ip", alloc.IP, "identity", identity, "hostIf", ep.HostIfName, "pod", ep.PodNamespace+"/"+ep.PodName,
		"ipamTook", t1.Sub(t0).String(), "datapathTook", t2.Sub(t1).String(), "stateTook", time.Since(t2).String())
	return ep, nil
}

func (m *Manager) applyDatapath(ep *apitypes.Endpoint) error {
	mac, _ := net.ParseMAC(ep.MAC)
	hmac, _ := net.ParseMAC(ep.HostMAC)
	for _, ip := range epIPs(ep) {
		if err := m.dp.UpsertLocalIdentity(ip, ep.Identity); err != nil {
			return errf(apitypes.CodeDatapath, "ipcache entry for %s: %v", ip, err)
		}
	}
	if err := m.dp.SyncPolicy(ep.ID); err != nil {
		return errf(apitypes.CodeDatapath, "policy map of endpoint %d: %v", ep.ID, err)
	}
	for _, ip := range epIPs(ep) {
		info := EndpointInfo{ID: ep.ID, IfIndex: uint32(ep.HostIfIndex), Identity: ep.Identity,
			Flags: ep.PolicyFlags, MAC: mac, NodeMAC: hmac}
		if err := m.dp.UpsertEndpoint(ip, info); err != nil {
			return errf(apitypes.CodeDatapath, "endpoints map entry for %s: %v", ip, err)
		}
	}
	if err := m.dp.Attach(ep.HostIfName, ep.HostIfIndex); err != nil {
		return errf(apitypes.CodeDatapath, "attach programs to %s (ifindex %d): %v", ep.HostIfName, ep.HostIfIndex, err)
	}
	return nil
}

// teardownDatapath removes everything applyDatapath wrote; best effort.
func (m *Manager) teardownDatapath(ep *apitypes.Endpoint) {
	logErr := func(what string, err error) {
		if err != nil {
			m.log.Warn("endpoint teardown", "what", what, "container", ep.ContainerID, "err", err)
		}
	}
	logErr("detach", m.dp.Detach(ep.HostIfName))
	for _, ip := range epIPs(ep) {
		logErr("endpoints map", m.dp.DeleteEndpoint(ip))
		logErr("ipcache", m.dp.DeleteIPCache(netip.PrefixFrom(ip, ip.BitLen())))
		logErr("conntrack", m.dp.FlushConntrack(ip))
	}
	logErr("policy map", m.dp.RemovePolicy(ep.ID))
}

// Get returns an endpoint.
func (m *Manager) Get(cid, ifName string) (apitypes.Endpoint, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep := m.eps[epKey{cid, ifName}]
	if ep == nil {
		return apitypes.Endpoint{}, false
	}
	return *ep, true
}

// List returns every endpoint, sorted by ID.
func (m *Manager) List() []apitypes.Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]apitypes.Endpoint, 0, len(m.eps))
	for _, ep := range m.eps {
		out = append(out, *ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Delete removes an endpoint and releases its addresses. Deleting an
// unknown endpoint still releases any address its owner holds and succeeds.
func (m *Manager) Delete(cid, ifName string) (apitypes.DeleteResult, error) {
	if !m.Ready() {
		return apitypes.DeleteResult{}, errf(apitypes.CodeNotReady, "agent is still restoring its state")
	}
	if !validName(cid, 256) || !validName(ifName, 15) {
		return apitypes.DeleteResult{}, errf(apitypes.CodeInvalid, "bad containerID or ifName")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.delete(epKey{cid, ifName})
}

func (m *Manager) delete(k epKey) (apitypes.DeleteResult, error) {
	var res apitypes.DeleteResult
	if ep := m.eps[k]; ep != nil {
		res.Found = true
		m.teardownDatapath(ep)
		if err := m.removeState(k); err != nil {
			return res, errf(apitypes.CodeInternal, "remove endpoint state: %v", err)
		}
		delete(m.eps, k)
		m.log.Info("endpoint deleted", "id", ep.ID, "container", k.cid, "if", k.ifName)
	}
	rel, err := m.store.Release(ipam.Owner{ContainerID: k.cid, IfName: k.ifName})
	if err != nil {
		return res, errf(apitypes.CodeInternal, "ipam release: %v", err)
	}
	for _, a := range rel {
		res.ReleasedIPs = append(res.ReleasedIPs, a.IP)
	}
	return res, nil
}

// GC removes every endpoint and allocation not in valid.
func (m *Manager) GC(valid []apitypes.Attachment) (apitypes.GCResult, error) {
	if !m.Ready() {
		return apitypes.GCResult{}, errf(apitypes.CodeNotReady, "agent is still restoring its state")
	}
	keep := map[epKey]bool{}
	for _, a := range valid {
		keep[epKey{a.ContainerID, a.IfName}] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var res apitypes.GCResult
	for k := range m.eps {
		if keep[k] {
			continue
		}
		r, err := m.delete(k)
		if err != nil {
			return res, err
		}
		res.RemovedEndpoints = append(res.RemovedEndpoints, apitypes.Attachment{ContainerID: k.cid, IfName: k.ifName})
		res.ReleasedIPs = append(res.ReleasedIPs, r.ReleasedIPs...)
	}
	rel, err := m.store.GC(func(o ipam.Owner) bool { return keep[epKey{o.ContainerID, o.IfName}] })
	if err != nil {
		return res, errf(apitypes.CodeInternal, "ipam gc: %v", err)
	}
	for _, a := range rel {
		res.ReleasedIPs = append(res.ReleasedIPs, a.IP)
	}
	if len(res.RemovedEndpoints)+len(res.ReleasedIPs) > 0 {
		m.log.Info("gc", "removedEndpoints", len(res.RemovedEndpoints), "releasedIPs", len(res.ReleasedIPs))
	}
	return res, nil
}

// Allocations lists the IPAM allocations.
func (m *Manager) Allocations() ([]ipam.Allocation, error) { return m.store.List() }

// Restore loads the endpoints from the state directory, re-applies them to
// the datapath (the pinned maps normally still hold them), removes
// endpoints whose host interface is gone, removes datapath entries and IPAM
// allocations that belong to no endpoint, and marks the manager ready.
func (m *Manager) Restore() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	entries, err := os.ReadDir(m.epDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(m.epDir, name)
		if strings.HasPrefix(name, ".") { // an interrupted atomic write
			os.Remove(path)
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var ep apitypes.Endpoint
		if err := json.Unmarshal(data, &ep); err != nil || ep.ContainerID == "" {
			m.log.Warn("removing unreadable endpoint state", "file", path, "err", err)
			os.Remove(path)
			continue
		}
		k := epKey{ep.ContainerID, ep.IfName}
		if !m.cfg.LinkExists(ep.HostIfName, ep.HostIfIndex) {
			m.log.Info("restore: host interface gone, removing endpoint", "container", ep.ContainerID, "hostIf", ep.HostIfName)
			m.teardownDatapath(&ep)
			os.Remove(path)
			continue
		}
		for _, a := range ep.Addresses {
			if _, err := m.store.AllocateIP(m.pool, ipam.Owner{ContainerID: ep.ContainerID, IfName: ep.IfName}, a.IP); err != nil {
				m.log.Warn("restore: re-reserving address", "ip", a.IP, "err", err)
			}
		}
		if err := m.applyDatapath(&ep); err != nil {
			m.log.Error("restore: re-applying endpoint", "container", ep.ContainerID, "err", err)
		}
		m.eps[k] = &ep
	}
	// Remove what belongs to no endpoint.
	ips := map[netip.Addr]bool{}
	ids := map[uint32]bool{}
	links := map[string]bool{}
	for _, ep := range m.eps {
		for _, ip := range epIPs(ep) {
			ips[ip] = true
		}
		ids[ep.ID] = true
		links[ep.HostIfName] = true
	}
	if dpEps, err := m.dp.ListEndpoints(); err == nil {
		for ip := range dpEps {
			if !ips[ip] {
				m.log.Info("restore: removing stale endpoints map entry", "ip", ip)
				m.dp.DeleteEndpoint(ip)
				m.dp.FlushConntrack(ip)
			}
		}
	} else {
		m.log.Warn("restore: list endpoints map", "err", err)
	}
	if pfx, err := m.dp.ListLocalIPCache(); err == nil {
		for _, p := range pfx {
			if p.IsSingleIP() && !ips[p.Addr()] {
				m.log.Info("restore: removing stale ipcache entry", "prefix", p)
				m.dp.DeleteIPCache(p)
			}
		}
	}
	if pids, err := m.dp.PolicyEndpoints(); err == nil {
		for _, id := range pids {
			if !ids[id] {
				m.dp.RemovePolicy(id)
			}
		}
	}
	if att, err := m.dp.Attached(); err == nil {
		for _, n := range att {
			if !links[n] {
				m.log.Info("restore: detaching stale programs", "if", n)
				m.dp.Detach(n)
			}
		}
	}
	// Addresses committed by a create that never finished (the agent died
	// between IPAM and the endpoint state) belong to no endpoint: the
	// CNI call that asked for them has failed, so they are free again.
	rel, err := m.store.GC(func(o ipam.Owner) bool { return m.eps[epKey{o.ContainerID, o.IfName}] != nil })
	if err != nil {
		return err
	}
	for _, a := range rel {
		m.log.Info("restore: released orphan address", "ip", a.IP, "owner", a.Owner.String())
	}
	m.ready.Store(true)
	m.log.Info("endpoints restored", "endpoints", len(m.eps), "releasedOrphans", len(rel))
	return nil
}

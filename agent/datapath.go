package agent

import (
	"net"
	"net/netip"
	"sort"
	"sync"
)

// EndpointInfo is what the datapath's endpoints map holds for a pod IP.
type EndpointInfo struct {
	ID       uint32
	IfIndex  uint32
	Identity uint32
	Flags    uint32
	MAC      net.HardwareAddr
	NodeMAC  net.HardwareAddr
}

// Datapath is the part of the eBPF datapath the endpoint manager drives.
// The production implementation wraps package datapath (NewBPFDatapath);
// MemDatapath is an in-memory stand-in for tests and for --datapath=none.
//
// Every delete must tolerate a missing entry, and Attach must be idempotent
// (a second Attach of the same interface replaces the programs).
type Datapath interface {
	UpsertEndpoint(ip netip.Addr, info EndpointInfo) error
	DeleteEndpoint(ip netip.Addr) error
	ListEndpoints() (map[netip.Addr]EndpointInfo, error)

	// UpsertLocalIdentity maps ip/32 (ip/128) to identity in the ipcache,
	// marked as a local endpoint.
	UpsertLocalIdentity(ip netip.Addr, identity uint32) error
	DeleteIPCache(prefix netip.Prefix) error
	// ListLocalIPCache lists the ipcache entries marked local-endpoint.
	ListLocalIPCache() ([]netip.Prefix, error)

	// SyncPolicy writes the endpoint's policy map. Until the policy engine
	// exists the desired policy is always empty (no policy selects a new
	// endpoint, flags 0: allow).
	SyncPolicy(epID uint32) error
	RemovePolicy(epID uint32) error
	PolicyEndpoints() ([]uint32, error)

	Attach(ifName string, ifIndex int) error
	Detach(ifName string) error
	Attached() ([]string, error)

	FlushConntrack(ip netip.Addr) error
	Close() error
}

// MemDatapath is an in-memory Datapath.
type MemDatapath struct {
	mu       sync.Mutex
	Eps      map[netip.Addr]EndpointInfo
	IPC      map[netip.Prefix]uint32
	Policies map[uint32]bool
	Links    map[string]int
	// FailAttach, when set, makes Attach fail (fault injection in tests).
	FailAttach error
}

// NewMemDatapath returns an empty in-memory datapath.
func NewMemDatapath() *MemDatapath {
	return &MemDatapath{Eps: map[netip.Addr]EndpointInfo{}, IPC: map[netip.Prefix]uint32{},
		Policies: map[uint32]bool{}, Links: map[string]int{}}
}

func (m *MemDatapath) UpsertEndpoint(ip netip.Addr, info EndpointInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Eps[ip] = info
	return nil
}

func (m *MemDatapath) DeleteEndpoint(ip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.Eps, ip)
	return nil
}

func (m *MemDatapath) ListEndpoints() (map[netip.Addr]EndpointInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[netip.Addr]EndpointInfo, len(m.Eps))
	for k, v := range m.Eps {
		out[k] = v
	}
	return out, nil
}

func (m *MemDatapath) UpsertLocalIdentity(ip netip.Addr, identity uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.IPC[netip.PrefixFrom(ip, ip.BitLen())] = identity
	return nil
}

func (m *MemDatapath) DeleteIPCache(p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.IPC, p)
	return nil
}

func (m *MemDatapath) ListLocalIPCache() ([]netip.Prefix, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Prefix
	for p := range m.IPC {
		out = append(out, p)
	}
	return out, nil
}

func (m *MemDatapath) SyncPolicy(epID uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Policies[epID] = true
	return nil
}

func (m *MemDatapath) RemovePolicy(epID uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.Policies, epID)
	return nil
}

func (m *MemDatapath) PolicyEndpoints() ([]uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint32
	for id := range m.Policies {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func (m *MemDatapath) Attach(ifName string, ifIndex int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.FailAttach != nil {
		return m.FailAttach
	}
	m.Links[ifName] = ifIndex
	return nil
}

func (m *MemDatapath) Detach(ifName string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.Links, ifName)
	return nil
}

func (m *MemDatapath) Attached() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for n := range m.Links {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

func (m *MemDatapath) FlushConntrack(netip.Addr) error { return nil }
func (m *MemDatapath) Close() error                    { return nil }

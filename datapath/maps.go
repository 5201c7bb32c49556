package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Pinned map names, as in bpf/lib/maps.h and bpf/lib/events.h.
const (
	MapEndpoints = "sigil_endpoints"
	MapIPCache   = "sigil_ipcache"
	MapTunnel    = "sigil_tunnel"
	MapPolicy    = "sigil_policy"
	MapCT4       = "sigil_ct4"
	MapFrag4     = "sigil_frag4"
	MapMetrics   = "sigil_metrics"
	MapConfig    = "sigil_config"
	MapEvents    = "sigil_events"
	MapEvStats   = "sigil_evstats"
	MapEvRate    = "sigil_evrate"
)

// pinnedMaps lists every map pinned under the pin directory.
var pinnedMaps = []string{MapEndpoints, MapIPCache, MapTunnel, MapPolicy, MapCT4, MapFrag4,
	MapMetrics, MapConfig, MapEvents, MapEvStats, MapEvRate}

// ErrNotFound is returned by lookups of keys that are not in a map.
var ErrNotFound = ebpf.ErrKeyNotExist

// Maps gives typed access to Sigil's BPF maps. It is what a loaded Datapath
// embeds, and what OpenPinned returns for tools (the CLI) that read the
// pinned maps while the agent is down.
type Maps struct {
	Endpoints *EndpointMap
	IPCache   *IPCache
	Tunnel    *TunnelMap
	Policy    *PolicyMap
	Conntrack *Conntrack
	Metrics   *Metrics
	Config    *ConfigMap

	raw    map[string]*ebpf.Map
	pinDir string
}

// OpenPinned opens the maps pinned under pinDir, without loading programs.
func OpenPinned(pinDir string) (*Maps, error) {
	raw := make(map[string]*ebpf.Map, len(pinnedMaps))
	for _, name := range pinnedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			closeAll(raw)
			return nil, fmt.Errorf("open pinned map %s: %w (is the agent's pin directory %s right?)", name, err, pinDir)
		}
		raw[name] = m
	}
	return newMaps(raw, pinDir), nil
}

func newMaps(raw map[string]*ebpf.Map, pinDir string) *Maps {
	return &Maps{
		Endpoints: &EndpointMap{m: raw[MapEndpoints]},
		IPCache:   &IPCache{m: raw[MapIPCache]},
		Tunnel:    &TunnelMap{m: raw[MapTunnel]},
		Policy:    &PolicyMap{outer: raw[MapPolicy]},
		Conntrack: &Conntrack{m: raw[MapCT4]},
		Metrics:   &Metrics{m: raw[MapMetrics], evstats: raw[MapEvStats]},
		Config:    &ConfigMap{m: raw[MapConfig]},
		raw:       raw,
		pinDir:    pinDir,
	}
}

// PinDir is the bpffs directory the maps are pinned under.
func (ms *Maps) PinDir() string { return ms.pinDir }

// Map returns the raw map by pinned name, or nil.
func (ms *Maps) Map(name string) *ebpf.Map { return ms.raw[name] }

// Pressure reports, for each hash-like map, its current entry count and
// capacity. Counting walks the keys; call it for status and metrics scrapes,
// not per packet or per event.
func (ms *Maps) Pressure() (map[string][2]int, error) {
	out := map[string][2]int{}
	for _, name := range []string{MapEndpoints, MapIPCache, MapTunnel, MapPolicy, MapCT4, MapFrag4} {
		m := ms.raw[name]
		n, err := countEntries(m)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", name, err)
		}
		out[name] = [2]int{n, int(m.MaxEntries())}
	}
	return out, nil
}

// Close releases the file descriptors (the pinned maps stay).
func (ms *Maps) Close() error {
	closeAll(ms.raw)
	return nil
}

func closeAll(raw map[string]*ebpf.Map) {
	for _, m := range raw {
		m.Close()
	}
}

// countEntries counts the keys of m by walking them (one syscall each, no
// value reads), at most twice its capacity: a hash map changed during the
// walk can make it restart.
func countEntries(m *ebpf.Map) (int, error) {
	limit := 2*int(m.MaxEntries()) + 1
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var prev any // nil: from the first key
	n := 0
	for n < limit {
		err := m.NextKey(prev, next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		copy(key, next)
		prev = key
	}
	return n, nil
}

// --- endpoints --------------------------------------------------------------

// EndpointInfo is a local endpoint as the datapath sees it.
type EndpointInfo struct {
	ID       uint32
	IfIndex  uint32 // host-side veth
	Identity Identity
	Flags    EndpointFlags
	MAC      net.HardwareAddr // the pod's interface
	NodeMAC  net.HardwareAddr // the host-side veth
}

// EndpointMap is the endpoints map: pod IP -> local endpoint.
type EndpointMap struct{ m *ebpf.Map }

func epKey(ip netip.Addr) endpointKey {
	b, fam := addrBytes(ip)
	return endpointKey{Addr: b, Family: fam}
}

// Upsert creates or replaces the endpoint for ip.
func (e *EndpointMap) Upsert(ip netip.Addr, info EndpointInfo) error {
	v := endpointValue{EpID: info.ID, IfIndex: info.IfIndex, Identity: uint32(info.Identity), Flags: uint32(info.Flags)}
	copy(v.MAC[:], info.MAC)
	copy(v.NodeMAC[:], info.NodeMAC)
	if err := e.m.Put(epKey(ip), v); err != nil {
		return fmt.Errorf("endpoints map: put %s: %w", ip, err)
	}
	return nil
}

// Delete removes the endpoint for ip; a missing entry is not an error.
func (e *EndpointMap) Delete(ip netip.Addr) error {
	if err := e.m.Delete(epKey(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("endpoints map: delete %s: %w", ip, err)
	}
	return nil
}

// Lookup returns the endpoint for ip, or ErrNotFound.
func (e *EndpointMap) Lookup(ip netip.Addr) (EndpointInfo, error) {
	var v endpointValue
	if err := e.m.Lookup(epKey(ip), &v); err != nil {
		return EndpointInfo{}, err
	}
	return v.info(), nil
}

func (v endpointValue) info() EndpointInfo {
	return EndpointInfo{ID: v.EpID, IfIndex: v.IfIndex, Identity: Identity(v.Identity),
		Flags: EndpointFlags(v.Flags), MAC: net.HardwareAddr(v.MAC[:]), NodeMAC: net.HardwareAddr(v.NodeMAC[:])}
}

// List returns every endpoint by IP.
func (e *EndpointMap) List() (map[netip.Addr]EndpointInfo, error) {
	out := map[netip.Addr]EndpointInfo{}
	var k endpointKey
	var v endpointValue
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		out[addrFrom(k.Addr, k.Family)] = v.info()
	}
	return out, it.Err()
}

// --- ipcache ----------------------------------------------------------------

// IPCacheEntry is what a prefix resolves to.
type IPCacheEntry struct {
	Identity Identity
	// TunnelEndpoint is the underlay address of the node behind which the
	// prefix lives, for the overlay; invalid when not tunnelled.
	TunnelEndpoint netip.Addr
	// LocalEndpoint marks the addresses of this node's endpoints.
	LocalEndpoint bool
}

const ipcacheFlagLocalEndpoint = 1 << 0

// IPCache is the ipcache LPM trie: IP prefix -> identity.
type IPCache struct{ m *ebpf.Map }

func ipcKey(p netip.Prefix) ipcacheKey {
	p = p.Masked()
	b, fam := addrBytes(p.Addr())
	return ipcacheKey{PrefixLen: ipcacheStaticPrefix + uint32(p.Bits()), Family: fam, Addr: b}
}

// Upsert creates or replaces the entry for prefix.
func (c *IPCache) Upsert(prefix netip.Prefix, e IPCacheEntry) error {
	if !prefix.IsValid() {
		return fmt.Errorf("ipcache: invalid prefix %v", prefix)
	}
	v := ipcacheValue{Identity: uint32(e.Identity)}
	if e.TunnelEndpoint.IsValid() {
		v.TunnelEndpoint, v.TunnelFamily = addrBytes(e.TunnelEndpoint)
	}
	if e.LocalEndpoint {
		v.Flags |= ipcacheFlagLocalEndpoint
	}
	if err := c.m.Put(ipcKey(prefix), v); err != nil {
		return fmt.Errorf("ipcache: put %s: %w", prefix, err)
	}
	return nil
}

// Delete removes the entry for prefix; a missing entry is not an error.
func (c *IPCache) Delete(prefix netip.Prefix) error {
	if err := c.m.Delete(ipcKey(prefix)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache: delete %s: %w", prefix, err)
	}
	return nil
}

// Lookup resolves ip by longest-prefix match, as the datapath does. ok is
// false when no prefix matches (the datapath then uses IdentityWorld).
func (c *IPCache) Lookup(ip netip.Addr) (e IPCacheEntry, ok bool, err error) {
	var v ipcacheValue
	bitsLen := 32
	if !ip.Unmap().Is4() {
		bitsLen = 128
	}
	err = c.m.Lookup(ipcKey(netip.PrefixFrom(ip.Unmap(), bitsLen)), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return IPCacheEntry{}, false, nil
	}
	if err != nil {
		return IPCacheEntry{}, false, err
	}
	return v.entry(), true, nil
}

func (v ipcacheValue) entry() IPCacheEntry {
	e := IPCacheEntry{Identity: Identity(v.Identity), LocalEndpoint: v.Flags&ipcacheFlagLocalEndpoint != 0}
	if v.TunnelFamily != 0 {
		e.TunnelEndpoint = addrFrom(v.TunnelEndpoint, v.TunnelFamily)
	}
	return e
}

// List returns every entry by prefix.
func (c *IPCache) List() (map[netip.Prefix]IPCacheEntry, error) {
	out := map[netip.Prefix]IPCacheEntry{}
	var k ipcacheKey
	var v ipcacheValue
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		addr := addrFrom(k.Addr, k.Family)
		out[netip.PrefixFrom(addr, int(k.PrefixLen)-ipcacheStaticPrefix)] = v.entry()
	}
	return out, it.Err()
}

// --- runtime configuration ----------------------------------------------------

// ConfigMap holds the datapath's runtime configuration.
type ConfigMap struct{ m *ebpf.Map }

// Set writes the runtime configuration; programs see it on their next packet.
func (c *ConfigMap) Set(rc RuntimeConfig) error {
	v := runtimeConfigValue{EnforcementMode: uint32(rc.Enforcement), Flags: rc.Flags, EventRateLimit: rc.EventRateLimit,
		TunnelIfIndex: rc.TunnelIfIndex}
	if len(rc.ServiceCIDRs) > serviceCIDRsMax {
		return fmt.Errorf("config map: %d service CIDRs, at most %d", len(rc.ServiceCIDRs), serviceCIDRsMax)
	}
	for i, p := range rc.ServiceCIDRs {
		if !p.IsValid() || !p.Addr().Is4() || p.Bits() == 0 {
			return fmt.Errorf("config map: service CIDR %s: want an IPv4 prefix longer than /0", p)
		}
		v.SvcNet4[i] = p.Masked().Addr().As4()
		mask := net.CIDRMask(p.Bits(), 32)
		copy(v.SvcMask4[i][:], mask)
	}
	if err := c.m.Put(uint32(0), v); err != nil {
		return fmt.Errorf("config map: %w", err)
	}
	return nil
}

// Get reads the runtime configuration.
func (c *ConfigMap) Get() (RuntimeConfig, error) {
	var v runtimeConfigValue
	if err := c.m.Lookup(uint32(0), &v); err != nil {
		return RuntimeConfig{}, fmt.Errorf("config map: %w", err)
	}
	rc := RuntimeConfig{Enforcement: EnforcementMode(v.EnforcementMode), Flags: v.Flags, EventRateLimit: v.EventRateLimit,
		TunnelIfIndex: v.TunnelIfIndex}
	for i := range v.SvcMask4 {
		if v.SvcMask4[i] == [4]byte{} {
			continue
		}
		bits, _ := net.IPMask(v.SvcMask4[i][:]).Size()
		rc.ServiceCIDRs = append(rc.ServiceCIDRs, netip.PrefixFrom(netip.AddrFrom4(v.SvcNet4[i]), bits))
	}
	return rc, nil
}

// --- tunnel ------------------------------------------------------------------

type tunnelValue struct {
	Family   uint8
	Pad      [3]uint8
	Endpoint [16]byte
}

// TunnelMap maps remote pod CIDRs and node addresses to the underlay address
// of the node behind them, for the overlay.
type TunnelMap struct{ m *ebpf.Map }

// Upsert routes prefix through the tunnel to node.
func (t *TunnelMap) Upsert(prefix netip.Prefix, node netip.Addr) error {
	var v tunnelValue
	v.Endpoint, v.Family = addrBytes(node)
	if err := t.m.Put(ipcKey(prefix), v); err != nil {
		return fmt.Errorf("tunnel map: put %s: %w", prefix, err)
	}
	return nil
}

// Delete removes prefix; a missing entry is not an error.
func (t *TunnelMap) Delete(prefix netip.Prefix) error {
	if err := t.m.Delete(ipcKey(prefix)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("tunnel map: delete %s: %w", prefix, err)
	}
	return nil
}

// List returns every prefix and its node.
func (t *TunnelMap) List() (map[netip.Prefix]netip.Addr, error) {
	out := map[netip.Prefix]netip.Addr{}
	var k ipcacheKey
	var v tunnelValue
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		out[netip.PrefixFrom(addrFrom(k.Addr, k.Family), int(k.PrefixLen)-ipcacheStaticPrefix)] = addrFrom(v.Endpoint, v.Family)
	}
	return out, it.Err()
}

// Sync makes the map hold exactly want.
func (t *TunnelMap) Sync(want map[netip.Prefix]netip.Addr) error {
	have, err := t.List()
	if err != nil {
		return err
	}
	for p, n := range want {
		if have[p.Masked()] != n {
			if err := t.Upsert(p, n); err != nil {
				return err
			}
		}
	}
	for p := range have {
		if _, ok := want[p]; !ok {
			if err := t.Delete(p); err != nil {
				return err
			}
		}
	}
	return nil
}

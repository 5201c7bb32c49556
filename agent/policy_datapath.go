package agent

import (
	"errors"
	"net/netip"

	"github.com/sigil-net/sigil/datapath"
)

// PolicyDatapath is the part of the datapath the policy enforcer drives on
// top of what the endpoint manager needs: whole policy maps, non-local
// ipcache entries, endpoint lookups and conntrack. BPFDatapath implements
// it.
type PolicyDatapath interface {
	Datapath

	// HasPolicyMap reports whether the endpoint has a policy map.
	HasPolicyMap(epID uint32) bool
	// PolicyEntries returns the installed entries; nil when the endpoint
	// has no policy map.
	PolicyEntries(epID uint32) (datapath.PolicyMapEntries, error)
	// SyncPolicyEntries makes the endpoint's map hold exactly entries,
	// writing only the difference (datapath.PolicyMap.Sync).
	SyncPolicyEntries(epID uint32, entries datapath.PolicyMapEntries) (datapath.SyncStats, error)

	// LookupEndpoint returns the endpoints map entry of ip.
	LookupEndpoint(ip netip.Addr) (EndpointInfo, bool, error)

	// UpsertIPCache writes an ipcache entry.
	UpsertIPCache(prefix netip.Prefix, e datapath.IPCacheEntry) error
	// ListIPCache returns every ipcache entry.
	ListIPCache() (map[netip.Prefix]datapath.IPCacheEntry, error)
	// LookupIPCache resolves ip by longest prefix, as the datapath does.
	LookupIPCache(ip netip.Addr) (datapath.IPCacheEntry, bool, error)

	// ListConntrack returns every conntrack entry.
	ListConntrack() ([]datapath.CTEntry, error)
	// DeleteConntrack deletes one conntrack entry.
	DeleteConntrack(t datapath.CTTuple) error

	// RuntimeConfig returns the datapath's runtime configuration.
	RuntimeConfig() (datapath.RuntimeConfig, error)
}

var _ PolicyDatapath = (*BPFDatapath)(nil)

// HasPolicyMap implements PolicyDatapath.
func (b *BPFDatapath) HasPolicyMap(epID uint32) bool { return b.DP.Policy.Has(epID) }

// PolicyEntries implements PolicyDatapath.
func (b *BPFDatapath) PolicyEntries(epID uint32) (datapath.PolicyMapEntries, error) {
	return b.DP.Policy.List(epID)
}

// SyncPolicyEntries implements PolicyDatapath.
func (b *BPFDatapath) SyncPolicyEntries(epID uint32, entries datapath.PolicyMapEntries) (datapath.SyncStats, error) {
	return b.DP.Policy.Sync(epID, entries)
}

// LookupEndpoint implements PolicyDatapath.
func (b *BPFDatapath) LookupEndpoint(ip netip.Addr) (EndpointInfo, bool, error) {
	e, err := b.DP.Endpoints.Lookup(ip)
	if errors.Is(err, datapath.ErrNotFound) {
		return EndpointInfo{}, false, nil
	}
	if err != nil {
		return EndpointInfo{}, false, err
	}
	return EndpointInfo{ID: e.ID, IfIndex: e.IfIndex, Identity: uint32(e.Identity), Flags: uint32(e.Flags),
		MAC: e.MAC, NodeMAC: e.NodeMAC}, true, nil
}

// UpsertIPCache implements PolicyDatapath.
func (b *BPFDatapath) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	return b.DP.IPCache.Upsert(p, e)
}

// ListIPCache implements PolicyDatapath.
func (b *BPFDatapath) ListIPCache() (map[netip.Prefix]datapath.IPCacheEntry, error) {
	return b.DP.IPCache.List()
}

// LookupIPCache implements PolicyDatapath.
func (b *BPFDatapath) LookupIPCache(ip netip.Addr) (datapath.IPCacheEntry, bool, error) {
	return b.DP.IPCache.Lookup(ip)
}

// ListConntrack implements PolicyDatapath.
func (b *BPFDatapath) ListConntrack() ([]datapath.CTEntry, error) { return b.DP.Conntrack.List() }

// DeleteConntrack implements PolicyDatapath.
func (b *BPFDatapath) DeleteConntrack(t datapath.CTTuple) error { return b.DP.Conntrack.Delete(t) }

// RuntimeConfig implements PolicyDatapath.
func (b *BPFDatapath) RuntimeConfig() (datapath.RuntimeConfig, error) { return b.DP.Config.Get() }

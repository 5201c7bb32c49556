package agent

import (
	"net/netip"
	"slices"

	"github.com/sigil-net/sigil/datapath"
)

// BPFDatapath drives the real eBPF datapath (package datapath).
type BPFDatapath struct {
	DP *datapath.Datapath
}

// NewBPFDatapath wraps a loaded datapath.
func NewBPFDatapath(dp *datapath.Datapath) *BPFDatapath { return &BPFDatapath{DP: dp} }

var _ Datapath = (*BPFDatapath)(nil)

func (b *BPFDatapath) UpsertEndpoint(ip netip.Addr, info EndpointInfo) error {
	return b.DP.Endpoints.Upsert(ip, datapath.EndpointInfo{
		ID: info.ID, IfIndex: info.IfIndex, Identity: datapath.Identity(info.Identity),
		Flags: datapath.EndpointFlags(info.Flags), MAC: info.MAC, NodeMAC: info.NodeMAC,
	})
}

func (b *BPFDatapath) DeleteEndpoint(ip netip.Addr) error { return b.DP.Endpoints.Delete(ip) }

func (b *BPFDatapath) ListEndpoints() (map[netip.Addr]EndpointInfo, error) {
	in, err := b.DP.Endpoints.List()
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]EndpointInfo, len(in))
	for ip, e := range in {
		out[ip] = EndpointInfo{ID: e.ID, IfIndex: e.IfIndex, Identity: uint32(e.Identity),
			Flags: uint32(e.Flags), MAC: e.MAC, NodeMAC: e.NodeMAC}
	}
	return out, nil
}

func (b *BPFDatapath) UpsertLocalIdentity(ip netip.Addr, identity uint32) error {
	return b.DP.IPCache.Upsert(netip.PrefixFrom(ip, ip.BitLen()),
		datapath.IPCacheEntry{Identity: datapath.Identity(identity), LocalEndpoint: true})
}

func (b *BPFDatapath) DeleteIPCache(p netip.Prefix) error { return b.DP.IPCache.Delete(p) }

func (b *BPFDatapath) ListLocalIPCache() ([]netip.Prefix, error) {
	all, err := b.DP.IPCache.List()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for p, e := range all {
		if e.LocalEndpoint {
			out = append(out, p)
		}
	}
	return out, nil
}

// SyncPolicy is the policy engine's hook: until it exists, no policy
// selects an endpoint and its desired policy is empty. An empty policy map
// is not created: every write to the map-in-map outer map waits for an RCU
// grace period (~10-20 ms here), and the datapath treats a missing map like
// an empty one (drop when enforcing, with reason "no policy map"; never
// consulted when not enforcing).
func (b *BPFDatapath) SyncPolicy(epID uint32) error {
	if !b.DP.Policy.Has(epID) {
		return nil
	}
	_, err := b.DP.Policy.Sync(epID, datapath.PolicyMapEntries{})
	return err
}

// RemovePolicy deletes the endpoint's policy map if it has one (a delete
// of a missing key would still wait for an RCU grace period).
func (b *BPFDatapath) RemovePolicy(epID uint32) error {
	if !b.DP.Policy.Has(epID) {
		return nil
	}
	return b.DP.Policy.Remove(epID)
}

func (b *BPFDatapath) PolicyEndpoints() ([]uint32, error) { return b.DP.Policy.Endpoints() }

func (b *BPFDatapath) Attach(ifName string, ifIndex int) error {
	return b.DP.AttachEndpoint(ifName, ifIndex)
}

func (b *BPFDatapath) Detach(ifName string) error { return b.DP.DetachEndpoint(ifName) }

// Attached lists the endpoint interfaces with programs; the node's tunnel
// device (NewOverlay) carries programs too but is no endpoint, so restore
// never detaches it as stale.
func (b *BPFDatapath) Attached() ([]string, error) {
	names, err := b.DP.AttachedInterfaces()
	if dev, ok := tunnelDevices.Load(b.DP); ok {
		names = slices.DeleteFunc(names, func(n string) bool { return n == dev.(string) })
	}
	return names, err
}

func (b *BPFDatapath) FlushConntrack(ip netip.Addr) error {
	_, err := b.DP.Conntrack.FlushAddr(ip)
	return err
}

// Close closes the Go handles; pinned maps and links stay, so traffic
// keeps flowing while the agent is down.
func (b *BPFDatapath) Close() error { return b.DP.Close() }

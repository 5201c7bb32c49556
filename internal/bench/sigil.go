package bench

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/sigil-net/sigil/datapath"
)

// AgentRuntimeConfig is the runtime configuration sigil-agent writes
// (cmd/sigil-agent): default enforcement, host ingress allowed, an event for
// every allowed new flow, no rate limit.
var AgentRuntimeConfig = datapath.RuntimeConfig{
	Enforcement: datapath.EnforceDefault,
	Flags:       datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows,
}

// nodePod is a pod as the datapath knows it.
type nodePod struct {
	IP       netip.Addr
	EpID     uint32
	IfIndex  int
	Identity datapath.Identity
	// MAC and NodeMAC (the pod's and its host veth's), as the agent
	// records them: with both, same-node traffic is delivered straight
	// into the pod (bpf_redirect_peer) instead of through the host stack.
	MAC, NodeMAC net.HardwareAddr
}

func (p nodePod) info() datapath.EndpointInfo {
	return datapath.EndpointInfo{ID: p.EpID, IfIndex: uint32(p.IfIndex), Identity: p.Identity, MAC: p.MAC, NodeMAC: p.NodeMAC}
}

// installNode writes what the agent would for a node with pods: runtime
// configuration rc, endpoints, the ipcache (gateway as host, the pods, and the
// decoy peers of the largest policy so that every size resolves the same
// ipcache).
func installNode(dp *datapath.Datapath, rc datapath.RuntimeConfig, gateway netip.Addr, pods []nodePod, maxSize int) error {
	if err := dp.SetRuntimeConfig(rc); err != nil {
		return err
	}
	if err := dp.IPCache.Upsert(netip.PrefixFrom(gateway, 32), datapath.IPCacheEntry{Identity: datapath.IdentityHost}); err != nil {
		return err
	}
	for _, p := range pods {
		if err := dp.Endpoints.Upsert(p.IP, p.info()); err != nil {
			return err
		}
		if err := dp.IPCache.Upsert(netip.PrefixFrom(p.IP, 32), datapath.IPCacheEntry{Identity: p.Identity, LocalEndpoint: true}); err != nil {
			return err
		}
	}
	for i := 0; i < decoyPeers(maxSize); i++ {
		id, ip := decoyPeer(i)
		if err := dp.IPCache.Upsert(netip.PrefixFrom(ip, 32), datapath.IPCacheEntry{Identity: id}); err != nil {
			return err
		}
	}
	return nil
}

// setPolicy gives pod an ingress policy of size entries allowing peer on the
// benchmark ports, or none (size 0). Order matters as in the agent: the map
// is filled before the endpoint is marked enforced, and unmarked before the
// map goes.
func setPolicy(dp *datapath.Datapath, p nodePod, size int, peer datapath.Identity) error {
	info := p.info()
	if size == 0 {
		if err := dp.Endpoints.Upsert(p.IP, info); err != nil {
			return err
		}
		return dp.Policy.Remove(p.EpID)
	}
	if _, err := dp.Policy.Sync(p.EpID, SigilPolicy(size, peer)); err != nil {
		return err
	}
	info.Flags = datapath.EndpointEnforceIngress
	return dp.Endpoints.Upsert(p.IP, info)
}

// eventDrain reads the datapath's flow events as a flow observer would, so
// the ring buffer is consumed at the rate it fills, and counts them.
type eventDrain struct {
	rd       *datapath.EventReader
	wg       sync.WaitGroup
	total    atomic.Int64
	verdicts atomic.Int64 // allowed new flows into dst
	err      atomic.Pointer[error]
	dst      netip.Addr
}

func startEventDrain(dp *datapath.Datapath, dst netip.Addr) (*eventDrain, error) {
	rd, err := dp.NewEventReader()
	if err != nil {
		return nil, err
	}
	d := &eventDrain{rd: rd, dst: dst}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			e, err := rd.Read()
			if err != nil {
				// Closed, or an undecodable record: stop; events that
				// then fail to fit show in the datapath's lost count.
				if !errors.Is(err, datapath.ErrClosed) {
					d.err.Store(&err)
				}
				return
			}
			d.total.Add(1)
			if e.Type == datapath.EventPolicyVerdict && e.Direction == datapath.Ingress && e.Dst == d.dst {
				d.verdicts.Add(1)
			}
		}
	}()
	return d, nil
}

func (d *eventDrain) Close() error {
	err := d.rd.Close()
	d.wg.Wait()
	return err
}

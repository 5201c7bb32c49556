package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/sigil-net/sigil/datapath"
)

// OverlayConfig is the node's multi-node forwarding configuration
// (docs/datapath.md, "Forwarding and the multi-node datapath").
type OverlayConfig struct {
	// Mode is tunnel (VXLAN) or native routing. Empty: tunnel.
	Mode datapath.RoutingMode
	// Device is the VXLAN device (default datapath.DefaultTunnelDevice).
	Device string
	// Port is the VXLAN UDP port (default datapath.DefaultTunnelPort).
	Port int
	// MTU is the underlay MTU (default 1500); the tunnel device and pods get
	// MTU - datapath.VXLANOverhead in tunnel mode (PodMTU).
	MTU int
	// ClusterPoolCIDRs are destinations never masqueraded, besides node
	// addresses and the nodes' pod CIDRs.
	ClusterPoolCIDRs []netip.Prefix
	// Masquerade: pod traffic leaving the cluster takes the node's address.
	Masquerade bool
	// DeferServices: the datapath defers pods' service traffic to the host
	// stack's DNAT (datapath.ConfigServiceDefer, kube-proxy). Sync then
	// attaches to_netdev to the devices traffic to other nodes leaves
	// through (and the default route's), where that traffic's egress is
	// judged when its backend is not on this node. (In native routing
	// mode Sync attaches from_netdev to the ingress of those devices
	// whatever this says: pod traffic from other nodes is judged there and
	// handed straight to the local pod, skipping the host stack.)
	DeferServices bool
	Logger        *slog.Logger
}

func (c *OverlayConfig) defaults() {
	if c.Mode == "" {
		c.Mode = datapath.RoutingTunnel
	}
	if c.Device == "" {
		c.Device = datapath.DefaultTunnelDevice
	}
	if c.Port == 0 {
		c.Port = datapath.DefaultTunnelPort
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// PodMTU is the MTU pods get (the CNI conflist's): the underlay MTU, less
// the VXLAN overhead in tunnel mode.
func PodMTU(mode datapath.RoutingMode, underlayMTU int) int {
	if mode == datapath.RoutingNative {
		return underlayMTU
	}
	return underlayMTU - datapath.VXLANOverhead
}

// OverlayNode is one node of the cluster as the overlay needs it (from its
// SigilNode).
type OverlayNode struct {
	Name           string
	InternalIP     netip.Addr
	TunnelEndpoint netip.Addr // zero: InternalIP
	PodCIDRs       []netip.Prefix
}

func (n OverlayNode) tunnelEndpoint() netip.Addr {
	if n.TunnelEndpoint.IsValid() {
		return n.TunnelEndpoint
	}
	return n.InternalIP
}

// Overlay programs the node's forwarding to other nodes: the tunnel device
// and runtime flags (NewOverlay), and from the cluster's nodes the tunnel
// map, Sigil's routes and the masquerade chain (Sync). Nothing is removed
// when the agent stops: traffic keeps flowing while it is down, and Sync is
// idempotent, so a restarted agent converges. CleanupOverlay removes it all.
type Overlay struct {
	cfg     OverlayConfig
	dp      *datapath.Datapath
	ifIndex int

	mu          sync.Mutex
	masqRemoved bool           // masquerading off and the chain removed
	netdevs     map[string]int // devices with to_netdev attached (DeferServices)
	ingressDevs map[string]int // devices with from_netdev attached (native)
	fastOn      bool           // ConfigNativeFast set
}

// NewOverlay sets up the node's routing mode on a loaded datapath: in tunnel
// mode it creates (or reuses) the VXLAN device and sets the ConfigTunnel
// flag and its ifindex in the runtime config, keeping every other setting;
// in native mode it clears them and removes a tunnel device an earlier run
// left.
func NewOverlay(dp *datapath.Datapath, cfg OverlayConfig) (*Overlay, error) {
	cfg.defaults()
	if _, err := datapath.ParseRoutingMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	o := &Overlay{cfg: cfg, dp: dp}
	rc, err := dp.Config.Get()
	if err != nil {
		return nil, err
	}
	if cfg.Mode == datapath.RoutingTunnel {
		// Native routing's fast path is for native mode only; there it
		// comes on once from_netdev is attached (Sync).
		rc.Flags &^= datapath.ConfigNativeFast
		idx, err := dp.EnsureTunnel(cfg.Device, cfg.Port, PodMTU(cfg.Mode, cfg.MTU))
		if err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
		o.ifIndex = idx
		tunnelDevices.Store(dp, cfg.Device)
		rc.Flags |= datapath.ConfigTunnel
		rc.TunnelIfIndex = uint32(idx)
	} else {
		rc.Flags &^= datapath.ConfigTunnel
		rc.TunnelIfIndex = 0
	}
	if err := dp.SetRuntimeConfig(rc); err != nil {
		return nil, err
	}
	if cfg.Mode == datapath.RoutingTunnel {
		// from_netdev of an earlier native-mode run (it would pass
		// everything in tunnel mode anyway).
		devs, err := dp.NativeIngressDevices()
		for _, dev := range devs {
			err = errors.Join(err, dp.DetachNativeIngress(dev))
		}
		if err != nil {
			return nil, fmt.Errorf("overlay: detach from_netdev of an earlier native run: %w", err)
		}
	}
	if cfg.Mode == datapath.RoutingNative {
		if err := dp.RemoveTunnel(cfg.Device); err != nil {
			return nil, fmt.Errorf("overlay: remove the tunnel device of an earlier run: %w", err)
		}
	}
	cfg.Logger.Info("overlay ready", "routingMode", string(cfg.Mode), "tunnelDevice", cfg.Device,
		"tunnelIfIndex", o.ifIndex, "podMTU", PodMTU(cfg.Mode, cfg.MTU), "masquerade", cfg.Masquerade)
	return o, nil
}

// tunnelDevices maps a datapath to its tunnel device, which has programs
// attached but is not an endpoint (BPFDatapath.Attached leaves it out).
var tunnelDevices sync.Map

// Mode is the routing mode.
func (o *Overlay) Mode() datapath.RoutingMode { return o.cfg.Mode }

// OverlayState is what Sync programs for a set of nodes.
type OverlayState struct {
	Tunnel     map[netip.Prefix]netip.Addr
	Routes     []datapath.PodRoute
	Masquerade *datapath.MasqueradeConfig // nil: masquerading off
}

// State computes the tunnel map, routes and masquerade configuration for
// node self among nodes.
func (o *Overlay) State(self string, nodes []OverlayNode) OverlayState {
	st := OverlayState{Tunnel: map[netip.Prefix]netip.Addr{}}
	var own, all []netip.Prefix
	nonMasq := slices.Clone(o.cfg.ClusterPoolCIDRs)
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b OverlayNode) int {
		if a.Name < b.Name {
			return -1
		} else if a.Name > b.Name {
			return 1
		}
		return 0
	})
	for _, n := range sorted {
		if n.InternalIP.IsValid() {
			nonMasq = append(nonMasq, netip.PrefixFrom(n.InternalIP, n.InternalIP.BitLen()))
		}
		for _, p := range n.PodCIDRs {
			if !p.Addr().Is4() {
				continue
			}
			all = append(all, p.Masked())
			if n.Name == self {
				own = append(own, p.Masked())
			}
		}
		if n.Name == self {
			continue
		}
		tep := n.tunnelEndpoint()
		for _, p := range n.PodCIDRs {
			if !p.Addr().Is4() {
				continue
			}
			switch o.cfg.Mode {
			case datapath.RoutingTunnel:
				if tep.IsValid() {
					st.Tunnel[p.Masked()] = tep
					st.Routes = append(st.Routes, datapath.PodRoute{Dst: p.Masked(), Device: o.cfg.Device})
				}
			case datapath.RoutingNative:
				if n.InternalIP.IsValid() && n.InternalIP.Is4() {
					st.Routes = append(st.Routes, datapath.PodRoute{Dst: p.Masked(), Via: n.InternalIP})
				}
			}
		}
		if o.cfg.Mode == datapath.RoutingTunnel && tep.IsValid() && n.InternalIP.IsValid() && n.InternalIP.Is4() {
			st.Tunnel[netip.PrefixFrom(n.InternalIP, 32)] = tep
		}
	}
	if o.cfg.Masquerade {
		st.Masquerade = &datapath.MasqueradeConfig{PodCIDRs: own, NonMasquerade: append(nonMasq, all...)}
	}
	return st
}

// Sync programs the tunnel map, routes and masquerade chain for node self
// among nodes (self included). Idempotent.
func (o *Overlay) Sync(self string, nodes []OverlayNode) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	st := o.State(self, nodes)
	var errs []error
	if err := o.dp.Tunnel.Sync(st.Tunnel); err != nil {
		errs = append(errs, fmt.Errorf("tunnel map: %w", err))
	}
	if err := o.syncRoutes(st.Routes); err != nil {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	if o.cfg.DeferServices || o.cfg.Mode == datapath.RoutingNative {
		if err := o.attachNetdevs(self, nodes); err != nil {
			errs = append(errs, fmt.Errorf("native devices: %w", err))
		}
	}
	if st.Masquerade != nil {
		// Without an own pod CIDR there is nothing to masquerade yet.
		if len(st.Masquerade.PodCIDRs) > 0 {
			if err := o.dp.SyncMasquerade(*st.Masquerade); err != nil {
				errs = append(errs, fmt.Errorf("masquerade: %w", err))
			}
		}
	} else if !o.masqRemoved {
		if err := o.dp.RemoveMasquerade(); err != nil {
			errs = append(errs, fmt.Errorf("masquerade: %w", err))
		} else {
			o.masqRemoved = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	o.cfg.Logger.Debug("overlay synced", "nodes", len(nodes), "tunnelEntries", len(st.Tunnel), "routes", len(st.Routes))
	return nil
}

// attachNetdevs attaches programs to the devices traffic leaves through
// towards the other nodes (their addresses, Sigil's routes, the default
// route; not the tunnel device), once per device (and again when its
// ifindex changed). With DeferServices, to_netdev on their egress: a pod's
// service traffic kube-proxy sends there (a backend pod in native mode, a
// host-network backend on another node in either mode) has its deferred
// egress judged on the way out. In native routing mode, from_netdev on
// their ingress, where pod traffic from the other nodes arrives: judged by
// the local pod's ingress policy and redirected into it.
func (o *Overlay) attachNetdevs(self string, nodes []OverlayNode) error {
	var dsts []netip.Addr
	for _, n := range nodes {
		if n.Name != self && n.InternalIP.IsValid() && n.InternalIP.Is4() {
			dsts = append(dsts, n.InternalIP)
		}
	}
	skip := ""
	if o.cfg.Mode == datapath.RoutingTunnel {
		skip = o.cfg.Device
	}
	devs, err := o.dp.RouteDevices(dsts, skip)
	if err != nil {
		return err
	}
	if o.netdevs == nil {
		o.netdevs = map[string]int{}
		o.ingressDevs = map[string]int{}
	}
	var errs []error
	for name, idx := range devs {
		if o.cfg.DeferServices && o.netdevs[name] != idx {
			if err := o.dp.AttachNativeDevice(name, idx); err != nil {
				errs = append(errs, err)
			} else {
				o.netdevs[name] = idx
				o.cfg.Logger.Info("deferred service egress judged on native device", "device", name)
			}
		}
		if o.cfg.Mode == datapath.RoutingNative && o.ingressDevs[name] != idx {
			if err := o.dp.AttachNativeIngress(name, idx); err != nil {
				errs = append(errs, err)
			} else {
				o.ingressDevs[name] = idx
				o.cfg.Logger.Info("pod traffic from other nodes judged and delivered on native device", "device", name)
			}
		}
	}
	if len(o.ingressDevs) > 0 && !o.fastOn {
		// from_netdev is in place: flows with remote pods may skip the
		// stack both ways from now on.
		rc, err := o.dp.Config.Get()
		if err == nil {
			rc.Flags |= datapath.ConfigNativeFast
			err = o.dp.SetRuntimeConfig(rc)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("native fast path: %w", err))
		} else {
			o.fastOn = true
		}
	}
	return errors.Join(errs...)
}

// syncRoutes is SyncRoutes that does not let one route the kernel refuses
// (a node whose address is unreachable from here) keep the others out: the
// refused route is left out and the rest synced; the error is still
// returned, so the caller retries.
func (o *Overlay) syncRoutes(routes []datapath.PodRoute) error {
	var refused []error
	for {
		err := o.dp.SyncRoutes(routes)
		if err == nil {
			return errors.Join(refused...)
		}
		i := slices.IndexFunc(routes, func(r datapath.PodRoute) bool {
			return strings.HasPrefix(err.Error(), "route "+r.Dst.String()+":")
		})
		if i < 0 {
			return errors.Join(append(refused, err)...)
		}
		refused = append(refused, err)
		routes = slices.Delete(slices.Clone(routes), i, i+1)
	}
}

// CleanupOverlay removes what the overlay installed on the node: Sigil's
// routes, the masquerade chain, the tunnel map entries, to_netdev and
// from_netdev on native devices and the tunnel device
// (for uninstall; `sigil-agent --cleanup`).
func CleanupOverlay(dp *datapath.Datapath, device string) error {
	if device == "" {
		device = datapath.DefaultTunnelDevice
	}
	errs := []error{dp.SyncRoutes(nil), dp.RemoveMasquerade(), dp.Tunnel.Sync(nil)}
	devs, err := dp.NativeDevices()
	errs = append(errs, err, dp.DetachLocalIngress())
	for _, dev := range devs {
		errs = append(errs, dp.DetachNativeDevice(dev))
	}
	devs, err = dp.NativeIngressDevices()
	errs = append(errs, err)
	for _, dev := range devs {
		errs = append(errs, dp.DetachNativeIngress(dev))
	}
	if rc, err := dp.Config.Get(); err == nil {
		rc.Flags &^= datapath.ConfigTunnel | datapath.ConfigNativeFast
		rc.TunnelIfIndex = 0
		errs = append(errs, dp.SetRuntimeConfig(rc))
	}
	errs = append(errs, dp.RemoveTunnel(device))
	return errors.Join(errs...)
}

package agent

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/sigil-net/sigil/datapath"
)

// TestOverlayState checks what the overlay derives from the cluster's nodes,
// in both routing modes, without touching a datapath.
func TestOverlayState(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	nodes := []OverlayNode{
		{Name: "n2", InternalIP: addr("198.19.0.2"), TunnelEndpoint: addr("198.19.1.2"),
			PodCIDRs: []netip.Prefix{pfx("198.18.2.0/24"), pfx("198.18.12.0/24")}},
		{Name: "n1", InternalIP: addr("198.19.0.1"), PodCIDRs: []netip.Prefix{pfx("198.18.1.0/24")}},
		{Name: "n3", InternalIP: addr("198.19.0.3"), PodCIDRs: []netip.Prefix{pfx("198.18.3.0/24")}},
		{Name: "empty"}, // no addresses yet: contributes nothing
	}
	pool := []netip.Prefix{pfx("198.18.0.0/16")}
	wantMasq := &datapath.MasqueradeConfig{PodCIDRs: []netip.Prefix{pfx("198.18.1.0/24")},
		NonMasquerade: []netip.Prefix{pfx("198.18.0.0/16"),
			pfx("198.19.0.1/32"), pfx("198.19.0.2/32"), pfx("198.19.0.3/32"),
			pfx("198.18.1.0/24"), pfx("198.18.2.0/24"), pfx("198.18.12.0/24"), pfx("198.18.3.0/24")}}

	tun := &Overlay{cfg: OverlayConfig{ClusterPoolCIDRs: pool, Masquerade: true}}
	tun.cfg.defaults()
	st := tun.State("n1", nodes)
	wantTunnel := map[netip.Prefix]netip.Addr{
		pfx("198.18.2.0/24"): addr("198.19.1.2"), pfx("198.18.12.0/24"): addr("198.19.1.2"),
		pfx("198.19.0.2/32"): addr("198.19.1.2"),
		pfx("198.18.3.0/24"): addr("198.19.0.3"), pfx("198.19.0.3/32"): addr("198.19.0.3"),
	}
	if !reflect.DeepEqual(st.Tunnel, wantTunnel) {
		t.Errorf("tunnel map %v, want %v", st.Tunnel, wantTunnel)
	}
	dev := datapath.DefaultTunnelDevice
	wantRoutes := []datapath.PodRoute{{Dst: pfx("198.18.2.0/24"), Device: dev}, {Dst: pfx("198.18.12.0/24"), Device: dev},
		{Dst: pfx("198.18.3.0/24"), Device: dev}}
	if !reflect.DeepEqual(st.Routes, wantRoutes) {
		t.Errorf("tunnel routes %v, want %v", st.Routes, wantRoutes)
	}
	if !reflect.DeepEqual(st.Masquerade, wantMasq) {
		t.Errorf("masquerade %+v, want %+v", st.Masquerade, wantMasq)
	}

	nat := &Overlay{cfg: OverlayConfig{Mode: datapath.RoutingNative, ClusterPoolCIDRs: pool}}
	nat.cfg.defaults()
	st = nat.State("n1", nodes)
	if len(st.Tunnel) != 0 || st.Masquerade != nil {
		t.Errorf("native, no masquerade: tunnel %v masquerade %+v, want neither", st.Tunnel, st.Masquerade)
	}
	wantRoutes = []datapath.PodRoute{{Dst: pfx("198.18.2.0/24"), Via: addr("198.19.0.2")},
		{Dst: pfx("198.18.12.0/24"), Via: addr("198.19.0.2")}, {Dst: pfx("198.18.3.0/24"), Via: addr("198.19.0.3")}}
	if !reflect.DeepEqual(st.Routes, wantRoutes) {
		t.Errorf("native routes %v, want %v", st.Routes, wantRoutes)
	}

	if PodMTU(datapath.RoutingTunnel, 1500) != 1450 || PodMTU(datapath.RoutingNative, 9000) != 9000 {
		t.Errorf("PodMTU: %d %d", PodMTU(datapath.RoutingTunnel, 1500), PodMTU(datapath.RoutingNative, 9000))
	}
}

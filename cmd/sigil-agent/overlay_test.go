package main

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

func TestOverlayFlags(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := overlayFlags{routingMode: "native", clusterPool: "198.18.0.0/16, 198.19.0.0/24", masquerade: true}
	cfg, err := f.overlayConfig(9000, log)
	if err != nil || cfg.Mode != datapath.RoutingNative || len(cfg.ClusterPoolCIDRs) != 2 || cfg.MTU != 9000 {
		t.Errorf("native: %+v %v", cfg, err)
	}
	for _, bad := range []overlayFlags{{routingMode: "vxlan"}, {routingMode: "tunnel", clusterPool: "nope"}} {
		if _, err := bad.overlayConfig(1500, log); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if _, err := (&overlayFlags{routingMode: "tunnel"}).overlayConfig(600, log); err == nil {
		t.Error("an MTU leaving pods less than 576 accepted")
	}
	if _, on, err := (&overlayFlags{prefilterCIDRs: "198.19.9.0/24"}).prefilterConfig("/x", log); err == nil || on {
		t.Error("--prefilter-cidrs without devices accepted")
	}
	pc, on, err := (&overlayFlags{prefilterDevices: "eth0,eth1", prefilterCIDRs: "198.19.9.0/24"}).prefilterConfig("/x", log)
	if err != nil || !on || len(pc.Devices) != 2 || len(pc.Static) != 1 || pc.PinDir != "/x" {
		t.Errorf("prefilter config %+v %v %v", pc, on, err)
	}
}

// TestCleanup programs a node as the agent does (tunnel, routes,
// masquerade, prefilter) and removes it all with sigil-agent --cleanup's
// function.
func TestCleanup(t *testing.T) {
	testnet.RequireRoot(t)
	dt.RequireBPF(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tn, err := testnet.CreateNode(netip.MustParseAddr("198.18.41.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Delete() })
	peer := testnet.NewNS(t, "sgpeer")
	testnet.Veth(t, tn.NS, "ul0", peer, "ul0")
	tn.NS.MustRun(t, "ip", "addr", "add", "198.19.41.1/24", "dev", "ul0")
	pin := dt.PinDir(t)

	d, err := datapath.Load(datapath.Config{PinDir: pin, NetNS: tn.NS.Path, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ov, err := agent.NewOverlay(d, agent.OverlayConfig{Masquerade: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := ov.Sync("n1", []agent.OverlayNode{
		{Name: "n1", InternalIP: netip.MustParseAddr("198.19.41.1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.41.0/24")}},
		{Name: "n2", InternalIP: netip.MustParseAddr("198.19.41.2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.42.0/24")}},
	}); err != nil {
		t.Fatal(err)
	}
	pf, err := agent.NewPrefilter(agent.PrefilterConfig{PinDir: pin, NetNS: tn.NS.Path, Devices: []string{"ul0"},
		Static: []netip.Prefix{netip.MustParsePrefix("198.19.99.0/24")}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	pf.Close()
	d.Close()
	routes := func() string { return tn.NS.MustRun(t, "ip", "-4", "route", "show", "proto", "0xa7") }
	if !strings.Contains(routes(), "198.18.42.0/24 dev sigil_vxlan") ||
		!strings.Contains(tn.NS.MustRun(t, "iptables", "-t", "nat", "-S"), "SIGIL-MASQ") ||
		!strings.Contains(tn.NS.MustRun(t, "ip", "link", "show", "ul0"), "xdp") {
		t.Fatalf("node not programmed: routes %q", routes())
	}

	if err := cleanupNode(pin, "auto", tn.NS.Path, "", log); err != nil {
		t.Fatal(err)
	}
	if r := routes(); r != "" {
		t.Errorf("routes after cleanup: %q", r)
	}
	if out := tn.NS.MustRun(t, "iptables", "-t", "nat", "-S"); strings.Contains(out, "SIGIL-MASQ") {
		t.Errorf("nat table after cleanup:\n%s", out)
	}
	if _, err := tn.NS.InterfaceIndex(datapath.DefaultTunnelDevice); err == nil {
		t.Error("tunnel device after cleanup")
	}
	if out := tn.NS.MustRun(t, "ip", "link", "show", "ul0"); strings.Contains(out, "xdp") {
		t.Errorf("prefilter still attached: %s", out)
	}
	if att, err := datapath.PrefilterAttachments(pin); err != nil || len(att) != 0 {
		t.Errorf("prefilter attachments after cleanup: %v %v", att, err)
	}
}

// TestDeferredServicesDevices: with deferred service egress the overlay
// attaches to_netdev to the device towards the other nodes (in tunnel mode
// not to the tunnel device), the agent attaches local_ingress, and --cleanup
// removes both.
func TestDeferredServicesDevices(t *testing.T) {
	testnet.RequireRoot(t)
	dt.RequireBPF(t)
	for _, mode := range []datapath.RoutingMode{datapath.RoutingNative, datapath.RoutingTunnel} {
		t.Run(string(mode), func(t *testing.T) { testDeferredServicesDevices(t, mode) })
	}
}

func testDeferredServicesDevices(t *testing.T, mode datapath.RoutingMode) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tn, err := testnet.CreateNode(netip.MustParseAddr("198.18.43.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Delete() })
	peer := testnet.NewNS(t, "sgpeer")
	testnet.Veth(t, tn.NS, "ul0", peer, "ul0")
	tn.NS.MustRun(t, "ip", "addr", "add", "198.19.43.1/24", "dev", "ul0")
	pin := dt.PinDir(t)
	d, err := datapath.Load(datapath.Config{PinDir: pin, NetNS: tn.NS.Path, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ov, err := agent.NewOverlay(d, agent.OverlayConfig{Mode: mode, DeferServices: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := ov.Sync("n1", []agent.OverlayNode{
		{Name: "n1", InternalIP: netip.MustParseAddr("198.19.43.1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.43.0/24")}},
		{Name: "n2", InternalIP: netip.MustParseAddr("198.19.43.2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.44.0/24")}},
	}); err != nil {
		t.Fatal(err)
	}
	if devs, err := d.NativeDevices(); err != nil || len(devs) != 1 || devs[0] != "ul0" {
		t.Fatalf("native devices %v, %v; want ul0", devs, err)
	}
	// from_netdev: on ul0's ingress in native mode only.
	wantIn := 0
	if mode == datapath.RoutingNative {
		wantIn = 1
	}
	if devs, err := d.NativeIngressDevices(); err != nil || len(devs) != wantIn || wantIn == 1 && devs[0] != "ul0" {
		t.Fatalf("from_netdev devices %v, %v; want %d (ul0)", devs, err, wantIn)
	}
	// The fast path is on once from_netdev is (native mode only).
	if rc, err := d.Config.Get(); err != nil || (rc.Flags&datapath.ConfigNativeFast != 0) != (wantIn == 1) {
		t.Errorf("runtime flags %#x, %v: want ConfigNativeFast %v", rc.Flags, err, wantIn == 1)
	}
	// Neither is an endpoint interface (restore would detach it as stale).
	if ifs, err := d.AttachedInterfaces(); err != nil || slices.Contains(ifs, "ul0") || slices.ContainsFunc(ifs, func(s string) bool { return strings.HasPrefix(s, "ul0-") }) {
		t.Errorf("endpoint interfaces %v, %v: the native device's programs are listed", ifs, err)
	}
	// As the agent does with deferral on: the cgroup program too.
	if err := (serviceFlags{cgroup: datapath.DefaultCgroup2}).localIngress(d, true, log); err != nil {
		t.Fatal(err)
	}
	localPin := filepath.Join(pin, "links", "cgroup-local_ingress")
	if _, err := os.Stat(localPin); err != nil {
		t.Fatalf("local_ingress not attached: %v", err)
	}
	if err := cleanupNode(pin, "auto", tn.NS.Path, "", log); err != nil {
		t.Fatal(err)
	}
	if devs, err := d.NativeDevices(); err != nil || len(devs) != 0 {
		t.Errorf("native devices after cleanup %v, %v", devs, err)
	}
	if devs, err := d.NativeIngressDevices(); err != nil || len(devs) != 0 {
		t.Errorf("from_netdev devices after cleanup %v, %v", devs, err)
	}
	if rc, err := d.Config.Get(); err != nil || rc.Flags&datapath.ConfigNativeFast != 0 {
		t.Errorf("runtime flags after cleanup %#x, %v: fast path still on", rc.Flags, err)
	}
	if _, err := os.Stat(localPin); !os.IsNotExist(err) {
		t.Errorf("local_ingress still attached after cleanup: %v", err)
	}
}

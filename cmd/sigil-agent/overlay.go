package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/datapath"
)

// overlayFlags are the multi-node forwarding and prefilter flags.
type overlayFlags struct {
	routingMode      string
	tunnelDevice     string
	tunnelPort       int
	clusterPool      string
	masquerade       bool
	prefilterDevices string
	prefilterCIDRs   string
	cleanup          bool
}

func (f *overlayFlags) register() {
	flag.StringVar(&f.routingMode, "routing-mode", string(datapath.RoutingTunnel), "how pods reach other nodes: tunnel (VXLAN) or native (routed over the underlay)")
	flag.StringVar(&f.tunnelDevice, "tunnel-device", datapath.DefaultTunnelDevice, "VXLAN device name (tunnel mode)")
	flag.IntVar(&f.tunnelPort, "tunnel-port", datapath.DefaultTunnelPort, "VXLAN UDP port (tunnel mode)")
	flag.StringVar(&f.clusterPool, "cluster-pool-cidr", "", "comma-separated cluster pod CIDR pool(s): destinations never masqueraded (besides node addresses and the nodes' pod CIDRs)")
	flag.BoolVar(&f.masquerade, "masquerade", true, "masquerade pod traffic leaving the cluster to the node's address")
	flag.StringVar(&f.prefilterDevices, "prefilter-devices", "", "comma-separated node interfaces to attach the XDP prefilter to (empty: off)")
	flag.StringVar(&f.prefilterCIDRs, "prefilter-cidrs", "", "comma-separated source CIDRs the prefilter always drops (with the clusterwide policies' deny list)")
	flag.BoolVar(&f.cleanup, "cleanup", false, "remove Sigil's routes, masquerade chain, tunnel device, native-device programs and prefilter from the node, then exit (uninstall)")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parsePrefixes(flagName, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flagName, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// overlayConfig validates the flags into the overlay's configuration.
func (f *overlayFlags) overlayConfig(mtu int, log *slog.Logger) (agent.OverlayConfig, error) {
	mode, err := datapath.ParseRoutingMode(f.routingMode)
	if err != nil {
		return agent.OverlayConfig{}, fmt.Errorf("--routing-mode: %w", err)
	}
	pool, err := parsePrefixes("cluster-pool-cidr", f.clusterPool)
	if err != nil {
		return agent.OverlayConfig{}, err
	}
	if agent.PodMTU(mode, mtu) < 576 {
		return agent.OverlayConfig{}, fmt.Errorf("--mtu %d leaves pods an MTU of %d", mtu, agent.PodMTU(mode, mtu))
	}
	return agent.OverlayConfig{Mode: mode, Device: f.tunnelDevice, Port: f.tunnelPort, MTU: mtu,
		ClusterPoolCIDRs: pool, Masquerade: f.masquerade, Logger: log}, nil
}

func (f *overlayFlags) prefilterConfig(pinDir string, log *slog.Logger) (agent.PrefilterConfig, bool, error) {
	devs := splitList(f.prefilterDevices)
	static, err := parsePrefixes("prefilter-cidrs", f.prefilterCIDRs)
	if err != nil {
		return agent.PrefilterConfig{}, false, err
	}
	if len(devs) == 0 {
		if len(static) > 0 {
			return agent.PrefilterConfig{}, false, errors.New("--prefilter-cidrs needs --prefilter-devices")
		}
		return agent.PrefilterConfig{}, false, nil
	}
	return agent.PrefilterConfig{PinDir: pinDir, Devices: devs, Static: static, Logger: log}, true, nil
}

// cleanupNode is sigil-agent --cleanup: everything the overlay and the
// prefilter installed on the node goes (the tc datapath and endpoints are
// not touched).
// netns is the node's network namespace ("": the agent's own).
func cleanupNode(pinDir, attachMode, netns, tunnelDevice string, log *slog.Logger) error {
	d, err := datapath.Load(datapath.Config{PinDir: pinDir, NetNS: netns, AttachMode: datapath.AttachMode(attachMode), Logger: log})
	if err != nil {
		return err
	}
	defer d.Close()
	err = errors.Join(agent.CleanupOverlay(d, tunnelDevice), agent.CleanupPrefilter(pinDir, netns))
	if err == nil {
		log.Info("removed Sigil's routes, masquerade chain, tunnel device and prefilter")
	}
	return err
}

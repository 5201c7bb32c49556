package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RoutingMode is how pods on different nodes reach each other.
type RoutingMode string

const (
	// RoutingTunnel encapsulates pod traffic between nodes in VXLAN, with
	// the source identity in the VNI.
	RoutingTunnel RoutingMode = "tunnel"
	// RoutingNative routes pod CIDRs over the underlay; receivers resolve
	// the source identity from their ipcache.
	RoutingNative RoutingMode = "native"
)

// ParseRoutingMode parses "tunnel" or "native".
func ParseRoutingMode(s string) (RoutingMode, error) {
	switch RoutingMode(s) {
	case RoutingTunnel, RoutingNative:
		return RoutingMode(s), nil
	}
	return "", fmt.Errorf("unknown routing mode %q (want tunnel or native)", s)
}

// VXLAN defaults. Port 8472 is the one Linux and Flannel/Cilium use for
// VXLAN overlays; the overhead is outer IPv4 (20) + UDP (8) + VXLAN (8) +
// inner Ethernet (14).
const (
	DefaultTunnelDevice = "sigil_vxlan"
	DefaultTunnelPort   = 8472
	VXLANOverhead       = 50
)

var overlayHooks = []hook{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(d *Datapath) *ebpf.Program { return d.fromOverlay }},
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(d *Datapath) *ebpf.Program { return d.toOverlay }},
}

// EnsureTunnel creates (or reuses) the node's VXLAN device in
// collect-metadata mode, attaches from_overlay and to_overlay to it, and
// returns its ifindex for RuntimeConfig.TunnelIfIndex. The device learns
// nothing and does no ARP: BPF sets every packet's tunnel key, and MACs are
// rewritten on delivery.
func (d *Datapath) EnsureTunnel(name string, port, mtu int) (int, error) {
	var ifIndex int
	err := d.inNetNS(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			if vx, ok := l.(*netlink.Vxlan); !ok || !vx.FlowBased || vx.Port != port {
				return fmt.Errorf("tunnel device %s exists but is not a collect-metadata VXLAN on port %d", name, port)
			}
		} else {
			vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, FlowBased: true, Port: port, Learning: false}
			if err := netlink.LinkAdd(vx); err != nil {
				return fmt.Errorf("create tunnel device %s: %w", name, err)
			}
			if l, err = netlink.LinkByName(name); err != nil {
				return err
			}
		}
		if mtu > 0 && l.Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(l, mtu); err != nil {
				return fmt.Errorf("tunnel device MTU: %w", err)
			}
		}
		if err := netlink.LinkSetARPOff(l); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		ifIndex = l.Attrs().Index
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := d.attachHooks(name, ifIndex, overlayHooks); err != nil {
		return 0, err
	}
	return ifIndex, nil
}

// RemoveTunnel detaches the programs and deletes the VXLAN device.
func (d *Datapath) RemoveTunnel(name string) error {
	errs := []error{d.detachHooks(name, overlayHooks)}
	errs = append(errs, d.inNetNS(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil
		}
		return netlink.LinkDel(l)
	}))
	return errors.Join(errs...)
}

// RouteProtocol marks the routes Sigil owns, so it can find and remove its
// own routes and no others.
const RouteProtocol = netlink.RouteProtocol(0xa7)

// PodRoute routes a remote node's pod CIDR: via the node's underlay address
// (native routing) or into the tunnel device (tunnel mode, for the node's own
// traffic to remote pods; pod traffic is redirected in BPF).
type PodRoute struct {
	Dst    netip.Prefix
	Via    netip.Addr // native: the remote node's underlay address
	Device string     // tunnel: the VXLAN device
}

// SyncRoutes makes the routes Sigil owns in the node's main table exactly
// routes: missing ones are added, changed ones replaced, stale ones removed.
func (d *Datapath) SyncRoutes(routes []PodRoute) error {
	return d.inNetNS(func() error {
		want := map[string]bool{}
		for _, r := range routes {
			nr := &netlink.Route{Dst: prefixIPNet(r.Dst), Protocol: RouteProtocol}
			switch {
			case r.Device != "":
				l, err := netlink.LinkByName(r.Device)
				if err != nil {
					return fmt.Errorf("route %s: %w", r.Dst, err)
				}
				nr.LinkIndex = l.Attrs().Index
				nr.Scope = netlink.SCOPE_LINK
			case r.Via.IsValid():
				nr.Gw = r.Via.AsSlice()
			default:
				return fmt.Errorf("route %s: neither a gateway nor a device", r.Dst)
			}
			if err := netlink.RouteReplace(nr); err != nil {
				return fmt.Errorf("route %s: %w", r.Dst, err)
			}
			want[r.Dst.Masked().String()] = true
		}
		existing, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		var errs []error
		for _, r := range existing {
			if r.Dst == nil || want[r.Dst.String()] {
				continue
			}
			if err := netlink.RouteDel(&r); err != nil {
				errs = append(errs, fmt.Errorf("remove stale route %s: %w", r.Dst, err))
			}
		}
		return errors.Join(errs...)
	})
}

// RouteDevices returns the interfaces (name -> ifindex) that traffic leaves
// the node through towards other nodes: the devices of Sigil's routes (in
// native routing mode, those carrying pod traffic to other nodes), the
// devices routing each of dsts (the other nodes' addresses), and the default
// route's. They are where AttachNativeDevice is needed with
// ConfigServiceDefer, and where AttachNativeIngress goes in native routing
// mode. The device named skip (the tunnel device) is left out.
func (d *Datapath) RouteDevices(dsts []netip.Addr, skip string) (map[string]int, error) {
	out := map[string]int{}
	err := d.inNetNS(func() error {
		add := func(idx int) error {
			if idx == 0 {
				return nil
			}
			l, err := netlink.LinkByIndex(idx)
			if err != nil {
				return err
			}
			if name := l.Attrs().Name; name != skip && name != "lo" {
				out[name] = idx
			}
			return nil
		}
		for _, dst := range dsts {
			rs, err := netlink.RouteGet(dst.AsSlice())
			if err != nil {
				continue // unreachable from here: no device to judge on
			}
			for _, r := range rs {
				if err := add(r.LinkIndex); err != nil {
					return err
				}
			}
		}
		if defs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_TABLE); err == nil {
			for _, r := range defs {
				if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
					if err := add(r.LinkIndex); err != nil {
						return err
					}
				}
			}
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if err := add(r.LinkIndex); err != nil {
				return fmt.Errorf("route %s: %w", r.Dst, err)
			}
		}
		return nil
	})
	return out, err
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// Masquerade: pod traffic leaving the cluster takes the node's address, done
// by an iptables chain the agent owns (docs/datapath.md says why not BPF SNAT
// yet). Traffic to any cluster CIDR (pod CIDRs, node addresses) keeps its
// source so policy elsewhere sees the pod.
const masqChain = "SIGIL-MASQ"

// MasqueradeConfig says whose traffic is masqueraded and where not.
type MasqueradeConfig struct {
	// PodCIDRs are this node's pod CIDRs (the sources to masquerade).
	PodCIDRs []netip.Prefix
	// NonMasquerade are destinations that keep the pod's address: the
	// cluster's pod CIDR pool and the node addresses.
	NonMasquerade []netip.Prefix
}

// SyncMasquerade installs or updates the masquerade chain in the node's nat
// table, atomically (one iptables-restore transaction).
func (d *Datapath) SyncMasquerade(mc MasqueradeConfig) error {
	var b strings.Builder
	b.WriteString("*nat\n:" + masqChain + " - [0:0]\n-F " + masqChain + "\n")
	for _, p := range mc.NonMasquerade {
		fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", masqChain, p.Masked())
	}
	fmt.Fprintf(&b, "-A %s -j MASQUERADE\n", masqChain)
	b.WriteString("COMMIT\n")
	return d.inNetNS(func() error {
		if err := iptablesRestore(b.String()); err != nil {
			return err
		}
		want := map[string]bool{}
		for _, p := range mc.PodCIDRs {
			want[p.Masked().String()] = true
			rule := masqRule(p.Masked().String())
			if exec.Command("iptables", append([]string{"-t", "nat", "-C"}, rule...)...).Run() == nil {
				continue
			}
			if out, err := exec.Command("iptables", append([]string{"-t", "nat", "-A"}, rule...)...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables: %w: %s", err, out)
			}
		}
		// Rules for pod CIDRs the node no longer has go.
		srcs, err := masqSources()
		if err != nil {
			return err
		}
		for _, src := range srcs {
			if want[src] {
				continue
			}
			if out, err := exec.Command("iptables", append([]string{"-t", "nat", "-D"}, masqRule(src)...)...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables -D: %w: %s", err, out)
			}
		}
		return nil
	})
}

// masqRule is the POSTROUTING rule sending a pod CIDR's traffic to the chain.
func masqRule(src string) []string {
	return []string{"POSTROUTING", "-s", src, "-m", "comment", "--comment", "sigil masquerade", "-j", masqChain}
}

// masqSources lists the pod CIDRs that have a masquerade rule.
func masqSources() ([]string, error) {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save: %w", err)
	}
	var srcs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "-A" || f[1] != "POSTROUTING" || !strings.Contains(line, "-j "+masqChain) {
			continue
		}
		for i := 2; i+1 < len(f); i++ {
			if f[i] == "-s" {
				srcs = append(srcs, f[i+1])
			}
		}
	}
	return srcs, nil
}

// RemoveMasquerade removes Sigil's masquerade rules and chain.
func (d *Datapath) RemoveMasquerade() error {
	return d.inNetNS(func() error {
		srcs, err := masqSources()
		if err != nil {
			return err
		}
		for _, src := range srcs {
			if out, err := exec.Command("iptables", append([]string{"-t", "nat", "-D"}, masqRule(src)...)...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables -D: %w: %s", err, out)
			}
		}
		exec.Command("iptables", "-t", "nat", "-F", masqChain).Run()
		exec.Command("iptables", "-t", "nat", "-X", masqChain).Run()
		return nil
	})
}

func iptablesRestore(rules string) error {
	cmd := exec.Command("iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, out)
	}
	return nil
}

package bench

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// MultinodeOptions configures the multi-node benchmark.
type MultinodeOptions struct {
	Duration   time.Duration // of each traffic figure
	CRRClients int
	Progress   io.Writer // nil: quiet
}

// DefaultMultinodeOptions are the defaults of `make bench-multinode`.
func DefaultMultinodeOptions() MultinodeOptions {
	return MultinodeOptions{Duration: 5 * time.Second, CRRClients: 2}
}

// MultinodeRow is one way of carrying traffic between two nodes.
type MultinodeRow struct {
	Name    string
	Figures Figures
}

// MultinodeReport is the outcome of RunMultinode.
type MultinodeReport struct {
	Machine  Machine
	Started  time.Time
	Duration time.Duration
	Rows     []MultinodeRow // physical, plain VXLAN, the same pods without Sigil, Sigil tunnel, native (stack path, fast path)
}

// Underlay and overlay addresses of the benchmark (198.18.0.0/15 only).
var (
	mnUnderlay = [2]netip.Addr{netip.MustParseAddr("198.19.60.1"), netip.MustParseAddr("198.19.60.2")}
	mnVXLAN    = [2]netip.Addr{netip.MustParseAddr("198.18.160.1"), netip.MustParseAddr("198.18.160.2")}
	mnPodCIDR  = [2]netip.Prefix{netip.MustParsePrefix("198.18.161.0/24"), netip.MustParsePrefix("198.18.162.0/24")}
)

// mnPair is two node namespaces on an underlay veth, with a pod each.
type mnPair struct {
	nodes [2]*testnet.Node
	pods  [2]*testnet.Pod
}

func newPair(cl *Cleanup) (*mnPair, error) {
	p := &mnPair{}
	for i := range p.nodes {
		gw := mnPodCIDR[i].Addr().Next()
		n, err := testnet.CreateNode(gw)
		if err != nil {
			return nil, err
		}
		cl.Add("delete node "+n.NS.Name, n.Delete)
		p.nodes[i] = n
		if p.pods[i], err = n.AddPod(gw.Next().Next(), "lxc0"); err != nil {
			return nil, err
		}
	}
	if err := testnet.CreateVeth(p.nodes[0].NS, "ul0", p.nodes[1].NS, "ul0"); err != nil {
		return nil, err
	}
	for i, n := range p.nodes {
		if _, err := n.NS.Run("ip", "addr", "add", mnUnderlay[i].String()+"/24", "dev", "ul0"); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// RunMultinode measures, in one run, TCP throughput, RR and CRR between two
// nodes carried several ways: node to node over the underlay (the physical
// baseline), a plain kernel VXLAN between the nodes with no BPF (what a
// Flannel-style overlay costs), the same pods without Sigil, and pod to pod
// through Sigil in tunnel and in native routing mode (with its fast path off,
// i.e. through the host stack, and on).
func RunMultinode(ctx context.Context, o MultinodeOptions) (*MultinodeReport, error) {
	if err := checkHost("ip", "nsenter", "sysctl", "iperf3"); err != nil {
		return nil, err
	}
	rep := &MultinodeReport{Machine: machine(), Started: time.Now()}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	for _, sc := range []struct {
		name string
		run  func(context.Context, *Cleanup) (server, client *testnet.NS, ip netip.Addr, err error)
	}{
		{"physical: node to node, no Sigil", physical},
		{"plain VXLAN: node to node, no BPF", plainVXLAN},
		{"pods, plain routing: pod to pod, no Sigil", podsRouted},
		{"pods, plain VXLAN: pod to pod, no BPF", podsVXLAN},
		{"sigil tunnel: pod to pod across nodes", func(ctx context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
			return sigilPair(ctx, cl, datapath.RoutingTunnel)
		}},
		{"sigil native, stack path: pod to pod across nodes, fast path off", func(ctx context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
			return sigilPairFast(ctx, cl, datapath.RoutingNative, false)
		}},
		{"sigil native: pod to pod across nodes", func(ctx context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
			return sigilPair(ctx, cl, datapath.RoutingNative)
		}},
	} {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		progress("%s ...", sc.name)
		f, err := func() (f Figures, err error) {
			cl := NewCleanup(o.Progress)
			defer func() {
				if cerr := cl.Run(); cerr != nil && err == nil {
					err = fmt.Errorf("cleanup: %w", cerr)
				}
			}()
			server, client, ip, err := sc.run(ctx, cl)
			if err != nil {
				return f, err
			}
			return measurePair(ctx, o, server, client, ip)
		}()
		if err != nil {
			return rep, fmt.Errorf("%s: %w", sc.name, err)
		}
		progress("  %.2f Gbit/s, RR %.0f/s, CRR %.0f/s", f.BitsPerSecond/1e9, f.RR.PerSec(), f.CRR.PerSec())
		rep.Rows = append(rep.Rows, MultinodeRow{Name: sc.name, Figures: f})
	}
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

func measurePair(ctx context.Context, o MultinodeOptions, server, client *testnet.NS, ip netip.Addr) (Figures, error) {
	var f Figures
	srv, err := StartEchoServer(server, ip, append([]uint16{PortRR}, CRRPortList()...))
	if err != nil {
		return f, err
	}
	defer srv.Close()
	if _, err := Probe(client, netip.AddrPortFrom(ip, PortRR), 5*time.Second); err != nil {
		return f, fmt.Errorf("no connectivity before measuring: %w", err)
	}
	tp, err := RunIperf3(ctx, server, client, ip, PortIperf3, o.Duration)
	if err != nil {
		return f, err
	}
	f.BitsPerSecond, f.Retransmits = tp.BitsPerSecond, tp.Retransmits
	if f.RR, err = RunRR(ctx, client, netip.AddrPortFrom(ip, PortRR), rrSize, o.Duration); err != nil {
		return f, err
	}
	f.CRR, err = RunCRR(ctx, client, ip, CRRPortList(), o.CRRClients, rrSize, o.Duration)
	return f, err
}

func physical(_ context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
	p, err := newPair(cl)
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	return p.nodes[1].NS, p.nodes[0].NS, mnUnderlay[1], nil
}

func plainVXLAN(_ context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
	p, err := newPair(cl)
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	for i, n := range p.nodes {
		for _, cmd := range [][]string{
			{"ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "ul0",
				"local", mnUnderlay[i].String(), "remote", mnUnderlay[1-i].String()},
			{"ip", "link", "set", "vx0", "mtu", fmt.Sprint(1500 - datapath.VXLANOverhead), "up"},
			{"ip", "addr", "add", mnVXLAN[i].String() + "/24", "dev", "vx0"},
		} {
			if _, err := n.NS.Run(cmd...); err != nil {
				return nil, nil, netip.Addr{}, err
			}
		}
	}
	return p.nodes[1].NS, p.nodes[0].NS, mnVXLAN[1], nil
}

// podsRouted is the native-routing baseline with pods: the same pods and
// veths, each pod CIDR routed via its node's underlay address, no programs.
func podsRouted(_ context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
	p, err := newPair(cl)
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	for i, n := range p.nodes {
		if _, err := n.NS.Run("ip", "route", "add", mnPodCIDR[1-i].String(), "via", mnUnderlay[1-i].String()); err != nil {
			return nil, nil, netip.Addr{}, err
		}
	}
	return p.pods[1].NS, p.pods[0].NS, p.pods[1].IP, nil
}

// podsVXLAN is a Flannel-style overlay with pods: a kernel VXLAN device per
// node, each remote pod CIDR routed through it, no BPF.
func podsVXLAN(ctx context.Context, cl *Cleanup) (*testnet.NS, *testnet.NS, netip.Addr, error) {
	p, err := newPair(cl)
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	for i, n := range p.nodes {
		for _, cmd := range [][]string{
			{"ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "ul0",
				"local", mnUnderlay[i].String(), "remote", mnUnderlay[1-i].String()},
			{"ip", "link", "set", "vx0", "mtu", fmt.Sprint(1500 - datapath.VXLANOverhead), "up"},
			{"ip", "addr", "add", mnVXLAN[i].String() + "/24", "dev", "vx0"},
			{"ip", "route", "add", mnPodCIDR[1-i].String(), "via", mnVXLAN[1-i].String(), "dev", "vx0"},
		} {
			if _, err := n.NS.Run(cmd...); err != nil {
				return nil, nil, netip.Addr{}, err
			}
		}
	}
	for _, pod := range p.pods {
		if _, err := pod.NS.Run("ip", "link", "set", "eth0", "mtu", fmt.Sprint(1500-datapath.VXLANOverhead)); err != nil {
			return nil, nil, netip.Addr{}, err
		}
	}
	return p.pods[1].NS, p.pods[0].NS, p.pods[1].IP, nil
}

// sigilPair programs both nodes as the agent does (docs/datapath.md,
// "Forwarding and the multi-node datapath") and returns the pods.
func sigilPair(ctx context.Context, cl *Cleanup, mode datapath.RoutingMode) (*testnet.NS, *testnet.NS, netip.Addr, error) {
	return sigilPairFast(ctx, cl, mode, true)
}

// sigilPairFast is sigilPair with native routing's fast path on or off (off:
// from_netdev attached but ConfigNativeFast clear, so pod traffic crosses
// the host stack and to_container, as before the fast path existed).
func sigilPairFast(_ context.Context, cl *Cleanup, mode datapath.RoutingMode, fast bool) (*testnet.NS, *testnet.NS, netip.Addr, error) {
	p, err := newPair(cl)
	if err != nil {
		return nil, nil, netip.Addr{}, err
	}
	for i, n := range p.nodes {
		if err := programNode(cl, p, i, mode, fast); err != nil {
			return nil, nil, netip.Addr{}, fmt.Errorf("node %s: %w", n.NS.Name, err)
		}
	}
	return p.pods[1].NS, p.pods[0].NS, p.pods[1].IP, nil
}

func programNode(cl *Cleanup, p *mnPair, i int, mode datapath.RoutingMode, fast bool) error {
	n, remote := p.nodes[i], 1-i
	pinDir := filepath.Join(datapathtest.BPFFSRoot, "sigil-bench-"+randHex())
	cl.Add("unpin "+pinDir, func() error { return datapath.Unpin(pinDir) })
	var dp *datapath.Datapath
	if err := n.NS.Do(func() error {
		var err error
		dp, err = datapath.Load(datapath.Config{PinDir: pinDir, NetNS: n.NS.Path})
		return err
	}); err != nil {
		return err
	}
	defer dp.Close()
	rc := AgentRuntimeConfig
	if mode == datapath.RoutingTunnel {
		ifIndex, err := dp.EnsureTunnel(datapath.DefaultTunnelDevice, datapath.DefaultTunnelPort, 1500-datapath.VXLANOverhead)
		if err != nil {
			return err
		}
		rc.Flags |= datapath.ConfigTunnel
		rc.TunnelIfIndex = uint32(ifIndex)
		if err := dp.Tunnel.Sync(map[netip.Prefix]netip.Addr{mnPodCIDR[remote]: mnUnderlay[remote],
			netip.PrefixFrom(mnUnderlay[remote], 32): mnUnderlay[remote]}); err != nil {
			return err
		}
		// The pods' MTU leaves room for the encapsulation, as sigil-cni sets it.
		for _, pod := range p.pods {
			if _, err := pod.NS.Run("ip", "link", "set", "eth0", "mtu", fmt.Sprint(1500-datapath.VXLANOverhead)); err != nil {
				return err
			}
		}
		if err := dp.SyncRoutes([]datapath.PodRoute{{Dst: mnPodCIDR[remote], Device: datapath.DefaultTunnelDevice}}); err != nil {
			return err
		}
	} else {
		if err := dp.SyncRoutes([]datapath.PodRoute{{Dst: mnPodCIDR[remote], Via: mnUnderlay[remote]}}); err != nil {
			return err
		}
		// As the agent's overlay does: from_netdev on the underlay, then
		// the fast path on.
		ifIndex, err := n.NS.InterfaceIndex("ul0")
		if err != nil {
			return err
		}
		if err := dp.AttachNativeIngress("ul0", ifIndex); err != nil {
			return err
		}
		if fast {
			rc.Flags |= datapath.ConfigNativeFast
		}
	}
	if err := dp.SetRuntimeConfig(rc); err != nil {
		return err
	}
	pod := p.pods[i]
	hostMAC, err := n.NS.HardwareAddr(pod.HostIf)
	if err != nil {
		return err
	}
	ids := [2]datapath.Identity{pod1Identity, pod2Identity}
	if err := dp.Endpoints.Upsert(pod.IP, datapath.EndpointInfo{ID: 1, IfIndex: uint32(pod.IfIndex), Identity: ids[i],
		MAC: pod.MAC, NodeMAC: hostMAC}); err != nil {
		return err
	}
	for _, e := range []struct {
		p  netip.Prefix
		id datapath.Identity
	}{
		{netip.PrefixFrom(pod.IP, 32), ids[i]},
		{netip.PrefixFrom(p.pods[remote].IP, 32), ids[remote]},
		{netip.PrefixFrom(mnUnderlay[i], 32), datapath.IdentityHost},
		{netip.PrefixFrom(n.Gateway, 32), datapath.IdentityHost},
		{netip.PrefixFrom(mnUnderlay[remote], 32), datapath.IdentityRemoteNode},
	} {
		if err := dp.IPCache.Upsert(e.p, datapath.IPCacheEntry{Identity: e.id, LocalEndpoint: e.p.Addr() == pod.IP}); err != nil {
			return err
		}
	}
	return dp.AttachEndpoint(pod.HostIf, pod.IfIndex)
}

// WriteText prints the report (as its markdown, which reads as text).
func (r *MultinodeReport) WriteText(w io.Writer) error {
	_, err := io.WriteString(w, r.Markdown("sigil-bench multinode"))
	return err
}

// Markdown renders the report as the "Multi-node datapath" section;
// command is how it was run.
func (r *MultinodeReport) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Multi-node datapath\n\n`%s`\n\n", command)
	m := r.Machine
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), Linux %s, load average %s at start, %s\n- run: %s, took %s\n\n",
		m.CPUs, m.CPUModel, m.Kernel, m.LoadAvg, m.GoVersion, r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Duration.Round(time.Second))
	b.WriteString("| carried as | throughput Gbit/s | RR trans/s | CRR conn/s | ×physical (tp / RR / CRR) | ×plain VXLAN (tp / RR / CRR) | ×same pods without Sigil (tp / RR / CRR) |\n|---|---:|---:|---:|---|---|---|\n")
	byPrefix := func(prefix string) *Figures {
		for i := range r.Rows {
			if strings.HasPrefix(r.Rows[i].Name, prefix) {
				return &r.Rows[i].Figures
			}
		}
		return nil
	}
	phys, vx := byPrefix("physical"), byPrefix("plain VXLAN")
	ratio := func(a, base *Figures) string {
		if base == nil || base.BitsPerSecond == 0 || base.RR.PerSec() == 0 || base.CRR.PerSec() == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f / %.2f / %.2f", a.BitsPerSecond/base.BitsPerSecond, a.RR.PerSec()/base.RR.PerSec(), a.CRR.PerSec()/base.CRR.PerSec())
	}
	for i := range r.Rows {
		f := &r.Rows[i].Figures
		var same *Figures
		switch {
		case strings.HasPrefix(r.Rows[i].Name, "sigil tunnel"):
			same = byPrefix("pods, plain VXLAN")
		case strings.HasPrefix(r.Rows[i].Name, "sigil native"):
			same = byPrefix("pods, plain routing")
		}
		fmt.Fprintf(&b, "| %s | %.2f | %s | %s | %s | %s | %s |\n", r.Rows[i].Name, f.BitsPerSecond/1e9,
			groupInt(int64(f.RR.PerSec())), groupInt(int64(f.CRR.PerSec())), ratio(f, phys), ratio(f, vx), ratio(f, same))
	}
	b.WriteString("\nTargets: Sigil tunnel ≥ 0.9× plain VXLAN, Sigil native ≥ 0.9× physical, on all three figures. " +
		"Physical: the two node namespaces over their underlay veth. Plain VXLAN: a kernel VXLAN device in each node (VNI 42, " +
		"no BPF), node to node. The Sigil rows carry pod to pod traffic, which also crosses each pod's veth pair; the " +
		"\"same pods without Sigil\" rows (plain routing, and a Flannel-style kernel VXLAN) carry the same pod to pod " +
		"traffic with no programs, so the last column is what Sigil itself costs. Sigil: a pod on each node, programmed as the agent does, with Sigil's per-endpoint programs, " +
		"flow events, (tunnel) the VXLAN device with identity in the VNI (the pods' MTU leaves room for the encapsulation), " +
		"(native) from_netdev on the underlay and the fast path on (\"stack path\": off, so pod traffic crosses the host stack and to_container as before the fast path). " +
		"Figures as in the datapath benchmark (iperf3, 1-byte RR, CRR with 2 clients).\n")
	return b.String()
}

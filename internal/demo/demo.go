// Package demo is Sigil's datapath demo: a node with three pods in network
// namespaces, the real BPF programs attached to their veths, a policy applied
// live, and the verdicts, flow events and map entries behind them printed.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/internal/testnet"
)

type pod struct {
	name     string
	ip       netip.Addr
	identity datapath.Identity
	epID     uint32
	tp       *testnet.Pod
}

// Run builds the demo, prints it to w, and removes everything it made.
func Run(ctx context.Context, w io.Writer) (err error) {
	gw := netip.MustParseAddr("198.18.20.1")
	node, err := testnet.CreateNode(gw)
	if err != nil {
		return fmt.Errorf("create node namespace: %w", err)
	}
	pinDir := filepath.Join("/sys/fs/bpf", testnet.Unique("sigil-demo-"))
	defer func() {
		err = errors.Join(err, node.Delete(), datapath.Unpin(pinDir))
	}()

	pods := []*pod{
		{name: "frontend", ip: netip.MustParseAddr("198.18.20.10"), identity: 1001, epID: 1},
		{name: "backend", ip: netip.MustParseAddr("198.18.20.20"), identity: 1002, epID: 2},
		{name: "intruder", ip: netip.MustParseAddr("198.18.20.30"), identity: 1003, epID: 3},
	}
	for i, p := range pods {
		if p.tp, err = node.AddPod(p.ip, fmt.Sprintf("lxc%d", i+1)); err != nil {
			return err
		}
	}

	dp, err := datapath.Load(datapath.Config{PinDir: pinDir, NetNS: node.NS.Path})
	if err != nil {
		return err
	}
	defer dp.Close()
	if err := dp.SetRuntimeConfig(datapath.RuntimeConfig{Flags: datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows}); err != nil {
		return err
	}
	events, err := dp.NewEventReader()
	if err != nil {
		return err
	}
	defer events.Close()
	if err := dp.IPCache.Upsert(netip.PrefixFrom(gw, 32), datapath.IPCacheEntry{Identity: datapath.IdentityHost}); err != nil {
		return err
	}
	for _, p := range pods {
		if err := installEndpoint(dp, node, p, 0); err != nil {
			return err
		}
		srv, err := p.tp.NS.StartServer(p.ip.String() + ":8080")
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	fmt.Fprintf(w, "Sigil datapath demo: node %s (gateway %s), pods on veths, programs attached with %s\n\n", node.NS.Name, gw, dp.Mode())
	fmt.Fprintln(w, "1. No policy selects any pod: everything is delivered.")
	printMatrix(w, pods)

	fmt.Fprintln(w, "\n2. Policy: backend accepts only frontend, on TCP 8080 (ingress enforced, one allow entry).")
	backend := pods[1]
	entries := datapath.PolicyMapEntries{
		{Identity: pods[0].identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
	}
	if _, err := dp.Policy.Sync(backend.epID, entries); err != nil {
		return err
	}
	if err := installEndpoint(dp, node, backend, datapath.EndpointEnforceIngress); err != nil {
		return err
	}
	printMatrix(w, pods)

	fmt.Fprintln(w, "\n3. Flow events from the ring buffer (drops always; allowed flows once per connection):")
	printEvents(w, events, pods)

	fmt.Fprintln(w, "\n4. The map entries behind the verdicts:")
	return printMaps(w, dp, pods)
}

func installEndpoint(dp *datapath.Datapath, node *testnet.Node, p *pod, flags datapath.EndpointFlags) error {
	hostMAC, err := node.NS.HardwareAddr(p.tp.HostIf)
	if err != nil {
		return err
	}
	if err := dp.Endpoints.Upsert(p.ip, datapath.EndpointInfo{ID: p.epID, IfIndex: uint32(p.tp.IfIndex),
		Identity: p.identity, Flags: flags, MAC: p.tp.MAC, NodeMAC: hostMAC}); err != nil {
		return err
	}
	if err := dp.IPCache.Upsert(netip.PrefixFrom(p.ip, 32), datapath.IPCacheEntry{Identity: p.identity, LocalEndpoint: true}); err != nil {
		return err
	}
	return dp.AttachEndpoint(p.tp.HostIf, p.tp.IfIndex)
}

func printMatrix(w io.Writer, pods []*pod) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "   from \\ to")
	for _, dst := range pods {
		fmt.Fprintf(tw, "\t%s", dst.name)
	}
	fmt.Fprintln(tw, "\t(TCP 8080 / UDP 8080 / ping)")
	for _, src := range pods {
		fmt.Fprintf(tw, "   %s", src.name)
		for _, dst := range pods {
			if src == dst {
				fmt.Fprint(tw, "\t-")
				continue
			}
			addr := dst.ip.String() + ":8080"
			fmt.Fprintf(tw, "\t%s %s %s", mark(src.tp.NS.TCP(addr, 500*time.Millisecond)),
				mark(src.tp.NS.UDP(addr, 500*time.Millisecond)), mark(src.tp.NS.Ping(dst.ip.String())))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func mark(err error) string {
	if err == nil {
		return "ok"
	}
	return "--"
}

func name(pods []*pod, id datapath.Identity) string {
	for _, p := range pods {
		if p.identity == id {
			return p.name
		}
	}
	if id == datapath.IdentityHost {
		return "host"
	}
	return fmt.Sprintf("identity %d", id)
}

func printEvents(w io.Writer, rd *datapath.EventReader, pods []*pod) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   VERDICT\tFROM\tTO\tPROTO/PORT\tDIRECTION\tREASON")
	seen := map[string]bool{}
	for {
		rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
		e, err := rd.Read()
		if err != nil {
			break
		}
		if e.Verdict != datapath.VerdictDropped {
			continue
		}
		line := fmt.Sprintf("   %s\t%s (%s)\t%s (%s)\t%s\t%s\t%s", e.Verdict, name(pods, e.SrcIdentity), e.Src,
			name(pods, e.DstIdentity), e.Dst, protoPort(e), e.Direction, e.Reason)
		if !seen[line] {
			seen[line] = true
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
}

func protoPort(e datapath.FlowEvent) string {
	switch e.Proto {
	case datapath.ProtoTCP:
		return fmt.Sprintf("TCP/%d", e.DstPort)
	case datapath.ProtoUDP:
		return fmt.Sprintf("UDP/%d", e.DstPort)
	case datapath.ProtoICMP:
		return fmt.Sprintf("ICMP type %d", e.DstPort>>8)
	}
	return fmt.Sprintf("proto %d", e.Proto)
}

func printMaps(w io.Writer, dp *datapath.Datapath, pods []*pod) error {
	eps, err := dp.Endpoints.List()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "   %s (pinned at %s)\n", datapath.MapEndpoints, dp.PinDir())
	fmt.Fprintln(tw, "   IP\tENDPOINT\tIFINDEX\tIDENTITY\tENFORCED")
	ips := make([]netip.Addr, 0, len(eps))
	for ip := range eps {
		ips = append(ips, ip)
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	for _, ip := range ips {
		e := eps[ip]
		fmt.Fprintf(tw, "   %s\t%d\t%d\t%d (%s)\t%s\n", ip, e.ID, e.IfIndex, e.Identity, name(pods, e.Identity), enforced(e.Flags))
	}
	fmt.Fprintf(tw, "\n   %s\n   PREFIX\tIDENTITY\n", datapath.MapIPCache)
	ipc, err := dp.IPCache.List()
	if err != nil {
		return err
	}
	prefixes := make([]netip.Prefix, 0, len(ipc))
	for p := range ipc {
		prefixes = append(prefixes, p)
	}
	sort.Slice(prefixes, func(i, j int) bool { return prefixes[i].Addr().Less(prefixes[j].Addr()) })
	for _, p := range prefixes {
		fmt.Fprintf(tw, "   %s\t%d (%s)\n", p, ipc[p].Identity, name(pods, ipc[p].Identity))
	}
	fmt.Fprintf(tw, "\n   %s (endpoint 2, backend)\n   KEY\tVERDICT\n", datapath.MapPolicy)
	pol, err := dp.Policy.List(2)
	if err != nil {
		return err
	}
	for k, e := range pol {
		v := "allow"
		if e.Deny {
			v = "deny"
		}
		fmt.Fprintf(tw, "   %s\t%s (cookie %d)\n", strings.Replace(k.String(), fmt.Sprintf("identity %d", k.Identity),
			fmt.Sprintf("identity %d (%s)", k.Identity, name(pods, k.Identity)), 1), v, e.Cookie)
	}
	fmt.Fprintln(tw, "   anything else to backend\tdefault deny (ingress enforced)")
	return tw.Flush()
}

func enforced(f datapath.EndpointFlags) string {
	var s []string
	if f&datapath.EndpointEnforceIngress != 0 {
		s = append(s, "ingress")
	}
	if f&datapath.EndpointEnforceEgress != 0 {
		s = append(s, "egress")
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/client"
)

// Funcs returns the skel callbacks.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: CmdAdd, Del: CmdDel, Check: CmdCheck, GC: CmdGC, Status: CmdStatus}
}

func newClient(conf *NetConf) *client.Client { return client.New(conf.Socket, conf.Timeout()) }

// agentErr turns an agent client error into a CNI error.
func agentErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, client.ErrUnreachable) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("sigil-cni %s: %v", op, err), "")
	}
	var ae *client.APIError
	if errors.As(err, &ae) {
		code := ErrAgentRejected
		switch ae.Code {
		case apitypes.CodePoolExhaust:
			code = ErrPoolExhausted
		case apitypes.CodeDatapath:
			code = ErrDatapath
		case apitypes.CodeNotReady:
			code = types.ErrTryAgainLater
		case apitypes.CodeInvalid:
			code = types.ErrInvalidNetworkConfig
		}
		return types.NewError(code, fmt.Sprintf("sigil-cni %s: agent: %s", op, ae.Message), ae.Code)
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("sigil-cni %s: %v", op, err), "")
}

func internal(format string, a ...any) error {
	return types.NewError(types.ErrInternal, "sigil-cni: "+fmt.Sprintf(format, a...), "")
}

func writeSysctl(name, value string) error {
	return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0o644)
}

// CmdAdd wires the pod and registers its endpoint.
func CmdAdd(args *skel.CmdArgs) (retErr error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	k8s, err := ParseArgs(args.Args)
	if err != nil {
		return err
	}
	if args.IfName == "" || len(args.IfName) > 15 {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "sigil-cni: CNI_IFNAME must be 1-15 characters", "")
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("sigil-cni: cannot open pod netns %q: %v", args.Netns, err), "")
	}
	defer netns.Close()
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return internal("open host netns: %v", err)
	}
	defer hostNS.Close()

	hostIfName := HostIfName(args.ContainerID, args.IfName)
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout())
	defer cancel()
	c := newClient(conf)

	// A retried ADD starts from a clean slate; IPAM is keyed by container
	// and interface, so the address stays the same.
	cleanupLinks(netns, hostIfName, args.IfName)

	var agentCalled bool
	defer func() {
		if retErr == nil {
			return
		}
		if agentCalled {
			dctx, dcancel := context.WithTimeout(context.Background(), conf.Timeout())
			c.DeleteEndpoint(dctx, args.ContainerID, args.IfName)
			dcancel()
		}
		cleanupLinks(netns, hostIfName, args.IfName)
	}()

	var hostIf, contIf net.Interface
	err = netns.Do(func(hostNSHandle ns.NetNS) error {
		var err error
		hostIf, contIf, err = setupVeth(args.IfName, hostIfName, conf.MTU, hostNSHandle)
		if err != nil {
			return err
		}
		// The datapath drops IPv6; keep the pod from emitting any.
		writeSysctl("net.ipv6.conf.all.disable_ipv6", "1")
		writeSysctl("net.ipv6.conf.default.disable_ipv6", "1")
		return nil
	})
	if err != nil {
		return internal("create veth pair %s/%s: %v", hostIfName, args.IfName, err)
	}
	hostLink, err := linkByName(hostIfName)
	if err != nil {
		return internal("look up host veth %s: %v", hostIfName, err)
	}
	writeSysctl("net.ipv6.conf."+hostIfName+".disable_ipv6", "1")
	if err := netlink.LinkSetUp(hostLink); err != nil {
		return internal("set %s up: %v", hostIfName, err)
	}

	labels := map[string]string{}
	for k, v := range conf.Args.CNI.Labels {
		labels[k] = v
	}
	for k, v := range conf.RuntimeConfig.Labels {
		labels[k] = v
	}
	agentCalled = true
	ep, err := c.PutEndpoint(ctx, apitypes.EndpointRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns,
		HostIfName: hostIfName, HostIfIndex: hostIf.Index, HostMAC: hostIf.HardwareAddr.String(),
		MAC: contIf.HardwareAddr.String(), PodNamespace: string(k8s.K8S_POD_NAMESPACE),
		PodName: string(k8s.K8S_POD_NAME), PodUID: string(k8s.K8S_POD_UID), Labels: labels,
	})
	if err != nil {
		return agentErr("ADD", err)
	}
	if len(ep.Addresses) == 0 {
		return internal("agent returned endpoint %d without an address", ep.ID)
	}
	addr := ep.Addresses[0]
	podIP := net.IP(addr.IP.AsSlice())
	gw := net.IP(addr.Gateway.AsSlice())

	err = netns.Do(func(ns.NetNS) error { return configurePod(args.IfName, podIP, gw, hostIf.HardwareAddr) })
	if err != nil {
		return internal("configure pod interface %s: %v", args.IfName, err)
	}
	if err := configureHost(hostLink, podIP, contIf.HardwareAddr); err != nil {
		return internal("configure host side %s: %v", hostIfName, err)
	}

	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIfName, Mac: hostIf.HardwareAddr.String()},
			{Name: args.IfName, Mac: contIf.HardwareAddr.String(), Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{
			Address:   net.IPNet{IP: podIP, Mask: net.CIDRMask(addr.IP.BitLen(), addr.IP.BitLen())},
			Gateway:   gw,
			Interface: current.Int(1),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: gw}},
		DNS:    conf.DNS,
	}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "sigil-cni: prevResult: "+err.Error(), "")
		}
		off := len(prev.Interfaces)
		for _, ipc := range res.IPs {
			ipc.Interface = current.Int(*ipc.Interface + off)
		}
		prev.Interfaces = append(prev.Interfaces, res.Interfaces...)
		prev.IPs = append(prev.IPs, res.IPs...)
		prev.Routes = append(prev.Routes, res.Routes...)
		res = prev
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// configurePod runs in the pod netns: address/32, a link-scope route to
// the gateway, the default route through it and a permanent neighbour entry
// for the gateway pointing at the host veth (no bridge, no proxy ARP).
func configurePod(ifName string, podIP, gw net.IP, hostMAC net.HardwareAddr) error {
	link, err := linkByName(ifName)
	if err != nil {
		return err
	}
	bits := len(podIP) * 8
	if v4 := podIP.To4(); v4 != nil {
		podIP, bits = v4, 32
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: podIP, Mask: net.CIDRMask(bits, bits)}}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s: %w", podIP, err)
	}
	idx := link.Attrs().Index
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(bits, bits)}}); err != nil {
		return fmt.Errorf("route to gateway %s: %w", gw, err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: gw,
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
		return fmt.Errorf("neighbour %s -> %s: %w", gw, hostMAC, err)
	}
	return nil
}

// configureHost adds the /32 route to the pod through its veth and a
// permanent neighbour entry for the pod.
func configureHost(hostLink netlink.Link, podIP net.IP, podMAC net.HardwareAddr) error {
	idx := hostLink.Attrs().Index
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: podIP.To4(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("route to pod %s: %w", podIP, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: podIP.To4(), HardwareAddr: podMAC}); err != nil {
		return fmt.Errorf("neighbour %s -> %s: %w", podIP, podMAC, err)
	}
	return nil
}

// cleanupLinks removes the attachment's veth pair from both sides; missing
// links and a missing netns are fine.
func cleanupLinks(netns ns.NetNS, hostIfName, ifName string) {
	if l, err := linkByName(hostIfName); err == nil {
		netlink.LinkDel(l)
	}
	if netns != nil {
		netns.Do(func(ns.NetNS) error {
			if l, err := linkByName(ifName); err == nil && l.Type() == "veth" {
				netlink.LinkDel(l)
			}
			return nil
		})
	}
}

// CmdDel removes the endpoint (the agent releases the address and map
// entries) and the veth pair. It is idempotent and tolerates a missing
// netns, missing links and an agent that does not know the endpoint. An
// unreachable agent is an error (code 11) so the runtime retries: the
// address could not be released.
func CmdDel(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout())
	defer cancel()
	_, aerr := newClient(conf).DeleteEndpoint(ctx, args.ContainerID, args.IfName)
	var netns ns.NetNS
	if args.Netns != "" {
		if n, err := ns.GetNS(args.Netns); err == nil {
			netns = n
			defer n.Close()
		}
	}
	cleanupLinks(netns, HostIfName(args.ContainerID, args.IfName), args.IfName)
	return agentErr("DEL", aerr)
}

// CmdCheck verifies the attachment against the agent's endpoint.
func CmdCheck(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "sigil-cni CHECK: prevResult is missing", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "sigil-cni CHECK: prevResult: "+err.Error(), "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout())
	defer cancel()
	ep, err := newClient(conf).GetEndpoint(ctx, args.ContainerID, args.IfName)
	if err != nil {
		if client.IsCode(err, apitypes.CodeNotFound) {
			return types.NewError(types.ErrUnknownContainer,
				fmt.Sprintf("sigil-cni CHECK: the agent has no endpoint for container %s interface %s", args.ContainerID, args.IfName), "")
		}
		return agentErr("CHECK", err)
	}
	fail := func(format string, a ...any) error {
		return types.NewError(types.ErrInternal, "sigil-cni CHECK: "+fmt.Sprintf(format, a...), "")
	}
	if len(ep.Addresses) == 0 {
		return fail("endpoint %d has no address", ep.ID)
	}
	podIP := ep.Addresses[0].IP
	gw := ep.Addresses[0].Gateway
	found := false
	for _, ipc := range prev.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap() == podIP {
			found = true
		}
	}
	if !found {
		return fail("prevResult does not contain the endpoint address %s", podIP)
	}
	hostIfName := HostIfName(args.ContainerID, args.IfName)
	hl, err := linkByName(hostIfName)
	if err != nil {
		return fail("host veth %s is missing: %v", hostIfName, err)
	}
	if hl.Attrs().Index != ep.HostIfIndex {
		return fail("host veth %s has ifindex %d, the agent's endpoint says %d", hostIfName, hl.Attrs().Index, ep.HostIfIndex)
	}
	if hl.Attrs().OperState != netlink.OperUp && hl.Attrs().Flags&net.FlagUp == 0 {
		return fail("host veth %s is down", hostIfName)
	}
	routes, err := routeListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: hl.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		return fail("list host routes: %v", err)
	}
	if !hasRoute(routes, podIP, 32, nil) {
		return fail("host route %s/32 dev %s is missing", podIP, hostIfName)
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("sigil-cni CHECK: cannot open pod netns %q: %v", args.Netns, err), "")
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error {
		l, err := linkByName(args.IfName)
		if err != nil {
			return fail("pod interface %s is missing: %v", args.IfName, err)
		}
		if l.Type() != "veth" {
			return fail("pod interface %s is a %s, not a veth", args.IfName, l.Type())
		}
		if !strings.EqualFold(l.Attrs().HardwareAddr.String(), ep.MAC) {
			return fail("pod interface %s has MAC %s, the endpoint says %s", args.IfName, l.Attrs().HardwareAddr, ep.MAC)
		}
		addrs, err := addrList(l, netlink.FAMILY_V4)
		if err != nil {
			return fail("list addresses: %v", err)
		}
		ok := false
		for _, a := range addrs {
			if ones, _ := a.Mask.Size(); a.IP.Equal(net.IP(podIP.AsSlice())) && ones == 32 {
				ok = true
			}
		}
		if !ok {
			return fail("pod interface %s lacks address %s/32", args.IfName, podIP)
		}
		routes, err := routeList(l, netlink.FAMILY_V4)
		if err != nil {
			return fail("list pod routes: %v", err)
		}
		if !hasRoute(routes, gw, 32, nil) {
			return fail("pod route to gateway %s is missing", gw)
		}
		g := net.IP(gw.AsSlice())
		if !hasRoute(routes, netip.IPv4Unspecified(), 0, g) {
			return fail("pod default route via %s is missing", gw)
		}
		return nil
	})
}

func hasRoute(routes []netlink.Route, dst netip.Addr, bits int, gw net.IP) bool {
	for _, r := range routes {
		if bits == 0 {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && gw.Equal(r.Gw) {
				return true
			}
			continue
		}
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok && a.Unmap() == dst && ones == bits {
			return true
		}
	}
	return false
}

// CmdStatus reports whether the agent is ready to serve ADDs.
func CmdStatus(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout())
	defer cancel()
	if _, err := newClient(conf).Health(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("sigil-cni STATUS: sigil agent not ready: %v", err), "")
	}
	return nil
}

// CmdGC removes the endpoints, addresses and host veths of every
// attachment not in cni.dev/valid-attachments.
func CmdGC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout())
	defer cancel()
	valid := make([]apitypes.Attachment, 0, len(conf.ValidAttachments))
	keep := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid = append(valid, apitypes.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
		keep[HostIfName(a.ContainerID, a.IfName)] = true
	}
	if _, err := newClient(conf).GC(ctx, valid); err != nil {
		return agentErr("GC", err)
	}
	links, err := linkList()
	if err != nil {
		return internal("GC: list links: %v", err)
	}
	for _, l := range links {
		n := l.Attrs().Name
		if l.Type() == "veth" && len(n) == len(HostIfPrefix)+11 && strings.HasPrefix(n, HostIfPrefix) && !keep[n] {
			netlink.LinkDel(l)
		}
	}
	return nil
}

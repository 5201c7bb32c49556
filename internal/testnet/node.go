package testnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Node is a node namespace with pods on veth pairs, wired the way sigil-cni
// wires them: each pod has its /32 on eth0, a link route to the node's
// gateway address and a default route via it, and a permanent neighbour for
// the gateway; the node owns the gateway address, routes each pod /32 to the
// pod's host-side veth and forwards. IPv6 is off, as the CNI sets it.
type Node struct {
	NS      *NS
	Gateway netip.Addr
	Pods    []*Pod
}

// Pod is one pod namespace of a Node.
type Pod struct {
	NS      *NS
	IP      netip.Addr
	HostIf  string // host-side veth, in the node namespace
	IfIndex int    // of HostIf
	MAC     net.HardwareAddr
}

// CreateNode makes a node namespace that owns gateway.
func CreateNode(gateway netip.Addr) (*Node, error) {
	ns, err := CreateNS("sgnode")
	if err != nil {
		return nil, err
	}
	nd := &Node{NS: ns, Gateway: gateway}
	for _, cmd := range [][]string{
		{"ip", "addr", "add", gateway.String() + "/32", "dev", "lo"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
	} {
		if _, err := ns.Run(cmd...); err != nil {
			nd.Delete()
			return nil, err
		}
	}
	return nd, nil
}

// AddPod makes a pod namespace with ip, connected through host veth hostIf.
func (nd *Node) AddPod(ip netip.Addr, hostIf string) (*Pod, error) {
	ns, err := CreateNS("sgpod")
	if err != nil {
		return nil, err
	}
	p := &Pod{NS: ns, IP: ip, HostIf: hostIf}
	nd.Pods = append(nd.Pods, p)
	if _, err := ns.Run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		return nil, err
	}
	if err := CreateVeth(nd.NS, hostIf, ns, "eth0"); err != nil {
		return nil, err
	}
	hostMAC, err := nd.NS.HardwareAddr(hostIf)
	if err != nil {
		return nil, err
	}
	if p.MAC, err = ns.HardwareAddr("eth0"); err != nil {
		return nil, err
	}
	if p.IfIndex, err = nd.NS.InterfaceIndex(hostIf); err != nil {
		return nil, err
	}
	gw := nd.Gateway.String()
	for _, step := range []struct {
		ns  *NS
		cmd []string
	}{
		{ns, []string{"ip", "addr", "add", ip.String() + "/32", "dev", "eth0"}},
		{ns, []string{"ip", "route", "add", gw, "dev", "eth0", "scope", "link"}},
		{ns, []string{"ip", "route", "add", "default", "via", gw}},
		{ns, []string{"ip", "neigh", "add", gw, "lladdr", hostMAC.String(), "dev", "eth0", "nud", "permanent"}},
		{nd.NS, []string{"ip", "route", "add", ip.String() + "/32", "dev", hostIf}},
		{nd.NS, []string{"ip", "neigh", "add", ip.String(), "lladdr", p.MAC.String(), "dev", hostIf, "nud", "permanent"}},
	} {
		if _, err := step.ns.Run(step.cmd...); err != nil {
			return nil, fmt.Errorf("wire pod %s: %w", ip, err)
		}
	}
	return p, nil
}

// Delete removes the node's and its pods' namespaces.
func (nd *Node) Delete() error {
	var errs []error
	for _, p := range nd.Pods {
		errs = append(errs, p.NS.Delete())
	}
	errs = append(errs, nd.NS.Delete())
	return errors.Join(errs...)
}

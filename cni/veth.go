package cni

import (
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// setupVeth runs in the pod netns: it creates the pair with contName here
// and hostName directly in hostNS (no rename race), and brings both up.
// It is what plugins' ip.SetupVethWithName does, without that package's
// iptables/nftables dependencies.
func setupVeth(contName, hostName string, mtu int, hostNS ns.NetNS) (hostIf, contIf net.Interface, err error) {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: contName, MTU: mtu},
		PeerName:      hostName,
		PeerNamespace: netlink.NsFd(int(hostNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return hostIf, contIf, fmt.Errorf("add veth %s/%s: %w", contName, hostName, err)
	}
	cl, err := linkByName(contName)
	if err != nil {
		return hostIf, contIf, err
	}
	if err := netlink.LinkSetUp(cl); err != nil {
		return hostIf, contIf, err
	}
	err = hostNS.Do(func(ns.NetNS) error {
		hl, err := linkByName(hostName)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(hl); err != nil {
			return err
		}
		hostIf = ifaceOf(hl)
		return nil
	})
	return hostIf, ifaceOf(cl), err
}

func ifaceOf(l netlink.Link) net.Interface {
	a := l.Attrs()
	return net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}

package cni

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Dumps can be interrupted by concurrent changes (many parallel ADDs);
// retry them, as plugins' netlinksafe does.
func retryDump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for i := 0; i < 10; i++ {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func linkByName(name string) (netlink.Link, error) {
	return retryDump(func() (netlink.Link, error) { return netlink.LinkByName(name) })
}

func linkList() ([]netlink.Link, error) { return retryDump(netlink.LinkList) }

func addrList(l netlink.Link, fam int) ([]netlink.Addr, error) {
	return retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, fam) })
}

func routeList(l netlink.Link, fam int) ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) { return netlink.RouteList(l, fam) })
}

func routeListFiltered(fam int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return retryDump(func() ([]netlink.Route, error) { return netlink.RouteListFiltered(fam, filter, mask) })
}

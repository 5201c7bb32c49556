package agent

import "github.com/vishvananda/netlink"

// netlinkLinkExists reports whether an interface with that name and index
// exists in the calling thread's network namespace.
func netlinkLinkExists(name string, index int) bool {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return false
	}
	return l.Attrs().Name == name
}

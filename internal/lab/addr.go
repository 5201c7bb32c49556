package lab

import (
	"fmt"
	"net/netip"
)

// prefixOf writes a as an address with p's length, e.g. 198.18.0.1/24.
func prefixOf(a netip.Addr, p netip.Prefix) string { return fmt.Sprintf("%s/%d", a, p.Bits()) }

// nthAddr is the n-th address of p (p's first address plus n).
func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for i := 0; i < n; i++ {
		a = a.Next()
	}
	return a
}

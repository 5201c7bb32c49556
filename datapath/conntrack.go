package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Conntrack lifetimes, as in bpf/lib/maps.h.
const (
	CTLifetimeTCPSyn     = 60 * time.Second
	CTLifetimeTCP        = 21600 * time.Second
	CTLifetimeTCPClosing = 10 * time.Second
	CTLifetimeNonTCP     = 60 * time.Second
)

// Conntrack entry flags.
const (
	CTSeenReply uint8 = 1 << 0
	CTClosing   uint8 = 1 << 1
	// CTViaStack: the host stack translated the flow (kube-proxy, with
	// ConfigServiceDefer); its replies are handed to the stack for the
	// reverse NAT instead of being redirected into the client.
	CTViaStack uint8 = 1 << 2
	// CTService: the tuple of a service flow as the client sent it
	// (ConfigLBTC); Backend is where the flow is translated to. It carries
	// no policy verdict.
	CTService uint8 = 1 << 3
	// CTFast: a flow with a remote pod that skips the host stack in both
	// directions (ConfigNativeFast).
	CTFast uint8 = 1 << 4
)

// CTTuple is a tracked flow as first seen, and the direction (relative to
// the endpoint whose program created it) it was seen in.
type CTTuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
	Direction        Direction
}

func (t CTTuple) String() string {
	return fmt.Sprintf("%s %d %s:%d -> %s:%d", t.Direction, t.Proto, t.Src, t.SrcPort, t.Dst, t.DstPort)
}

// CTEntry is the state of a tracked flow.
type CTEntry struct {
	Tuple       CTTuple
	Expires     time.Duration // remaining lifetime; negative when expired
	Packets     uint64
	Bytes       uint64
	Cookie      uint32 // the policy entry that allowed the flow
	SrcIdentity Identity
	DstIdentity Identity
	TCPFlags    uint8
	Flags       uint8
	// RevNATIndex names the service frontend a translated flow came from
	// (0: none); its replies get the frontend as their source.
	RevNATIndex uint16
	// Backend is the backend of a CTService entry.
	Backend netip.AddrPort
}

// Conntrack is the IPv4 connection tracking map.
type Conntrack struct{ m *ebpf.Map }

// monotonicNow is the clock bpf_ktime_get_ns() reads.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func (k ct4Key) tuple() CTTuple {
	return CTTuple{Src: netip.AddrFrom4(k.Saddr), Dst: netip.AddrFrom4(k.Daddr),
		SrcPort: fromBE16(k.Sport), DstPort: fromBE16(k.Dport), Proto: k.Proto, Direction: Direction(k.Direction)}
}

func ct4KeyOf(t CTTuple) ct4Key {
	return ct4Key{Saddr: t.Src.Unmap().As4(), Daddr: t.Dst.Unmap().As4(), Sport: be16(t.SrcPort),
		Dport: be16(t.DstPort), Proto: t.Proto, Direction: uint8(t.Direction)}
}

// List returns every entry, expired ones included.
func (c *Conntrack) List() ([]CTEntry, error) {
	now := monotonicNow()
	var out []CTEntry
	var k ct4Key
	var v ctValue
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		e := CTEntry{Tuple: k.tuple(), Expires: time.Duration(int64(v.Expires) - int64(now)),
			Packets: v.Packets, Bytes: v.Bytes, Cookie: v.Cookie, SrcIdentity: Identity(v.SrcIdentity),
			DstIdentity: Identity(v.DstIdentity), TCPFlags: v.TCPFlags, Flags: v.Flags, RevNATIndex: v.RevNATIndex}
		if v.Flags&CTService != 0 {
			e.Backend = netip.AddrPortFrom(netip.AddrFrom4(v.NATAddr), fromBE16(v.NATPort))
		}
		out = append(out, e)
	}
	return out, it.Err()
}

// Delete removes one flow entry; a missing entry is not an error.
func (c *Conntrack) Delete(t CTTuple) error {
	if err := c.m.Delete(ct4KeyOf(t)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Flush deletes the entries for which match returns true (all when match is
// nil) and returns how many it deleted. The next packet of a flushed flow is
// judged by policy again.
func (c *Conntrack) Flush(match func(CTEntry) bool) (int, error) {
	entries, err := c.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if match != nil && !match(e) {
			continue
		}
		if err := c.Delete(e.Tuple); err != nil {
			return n, fmt.Errorf("conntrack: delete %s: %w", e.Tuple, err)
		}
		n++
	}
	return n, nil
}

// FlushAddr deletes every flow from or to ip, so that policy judges them
// again. Service translations (CTService) stay: they hold no verdict, and
// deleting one would move a live connection to another backend.
func (c *Conntrack) FlushAddr(ip netip.Addr) (int, error) {
	return c.Flush(func(e CTEntry) bool {
		return e.Flags&CTService == 0 && (e.Tuple.Src == ip || e.Tuple.Dst == ip)
	})
}

// GC deletes expired entries and returns how many.
func (c *Conntrack) GC() (int, error) {
	return c.Flush(func(e CTEntry) bool { return e.Expires < 0 })
}

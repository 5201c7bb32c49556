package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

func newBPFCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bpf",
		Short: "Read the datapath's pinned BPF maps directly (works while the agent is down)",
		Long: `Reads the maps the datapath pins under --pin-dir (default /sys/fs/bpf/sigil).
These commands do not talk to the agent, so they show what the kernel
enforces even while the agent is down or restarting. Needs root.`,
	}
	cmd.AddCommand(newBPFEndpointCommand(o), newBPFIPCacheCommand(o), newBPFPolicyCommand(o),
		newBPFCTCommand(o), newBPFMetricsCommand(o), newBPFPrefilterCommand(o), newBPFLBCommand(o))
	return cmd
}

func (o *options) openMaps() (*datapath.Maps, error) {
	ms, err := datapath.OpenPinned(o.pinDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no Sigil maps pinned under %s: has the agent ever run on this node? (--pin-dir selects another directory)", o.pinDir)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("reading the maps under %s needs root: %v", o.pinDir, err)
		}
		return nil, err
	}
	return ms, nil
}

func identityName(id datapath.Identity) string {
	if n := identity.ReservedName(id); n != "" {
		return fmt.Sprintf("%d (%s)", id, n)
	}
	return strconv.FormatUint(uint64(id), 10)
}

// --- endpoints map ----------------------------------------------------------------

// BPFEndpoint is one entry of the endpoints map.
type BPFEndpoint struct {
	IP       netip.Addr `json:"ip"`
	ID       uint32     `json:"id"`
	IfIndex  uint32     `json:"ifIndex"`
	Identity uint32     `json:"identity"`
	Enforced string     `json:"enforced"`
	Flags    uint32     `json:"flags"`
	MAC      string     `json:"mac"`
	NodeMAC  string     `json:"nodeMAC"`
}

func newBPFEndpointCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "endpoint", Aliases: []string{"endpoints"}, Short: "The endpoints map (pod IP -> endpoint)"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "List the endpoints map",
		Example: "  sigil bpf endpoint list\n  sigil bpf endpoint list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			all, err := ms.Endpoints.List()
			if err != nil {
				return err
			}
			out := make([]BPFEndpoint, 0, len(all))
			for ip, e := range all {
				out = append(out, BPFEndpoint{IP: ip, ID: e.ID, IfIndex: e.IfIndex, Identity: uint32(e.Identity),
					Enforced: enforced(e.Flags), Flags: uint32(e.Flags), MAC: e.MAC.String(), NodeMAC: e.NodeMAC.String()})
			}
			sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
			return o.render(cmd.OutOrStdout(), out, func(w io.Writer) error {
				fmt.Fprintln(w, "IP\tENDPOINT\tIFINDEX\tIDENTITY\tENFORCED\tMAC\tNODE MAC")
				for _, e := range out {
					fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", e.IP, e.ID, e.IfIndex, identityName(datapath.Identity(e.Identity)),
						e.Enforced, e.MAC, e.NodeMAC)
				}
				return nil
			})
		},
	})
	return cmd
}

// --- ipcache ----------------------------------------------------------------------

// BPFIPCacheEntry is one entry of the ipcache.
type BPFIPCacheEntry struct {
	Prefix         netip.Prefix `json:"prefix"`
	Identity       uint32       `json:"identity"`
	LocalEndpoint  bool         `json:"localEndpoint"`
	TunnelEndpoint string       `json:"tunnelEndpoint,omitempty"`
}

func ipcacheEntries(ms *datapath.Maps) ([]BPFIPCacheEntry, error) {
	all, err := ms.IPCache.List()
	if err != nil {
		return nil, err
	}
	out := make([]BPFIPCacheEntry, 0, len(all))
	for p, e := range all {
		be := BPFIPCacheEntry{Prefix: p, Identity: uint32(e.Identity), LocalEndpoint: e.LocalEndpoint}
		if e.TunnelEndpoint.IsValid() {
			be.TunnelEndpoint = e.TunnelEndpoint.String()
		}
		out = append(out, be)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Prefix.Addr() != out[j].Prefix.Addr() {
			return out[i].Prefix.Addr().Less(out[j].Prefix.Addr())
		}
		return out[i].Prefix.Bits() < out[j].Prefix.Bits()
	})
	return out, nil
}

func ipcacheTable(out []BPFIPCacheEntry) func(io.Writer) error {
	return func(w io.Writer) error {
		fmt.Fprintln(w, "PREFIX\tIDENTITY\tLOCAL ENDPOINT\tTUNNEL ENDPOINT")
		for _, e := range out {
			local := "no"
			if e.LocalEndpoint {
				local = "yes"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Prefix, identityName(datapath.Identity(e.Identity)), local, dash(e.TunnelEndpoint))
		}
		return nil
	}
}

func newBPFIPCacheCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "ipcache", Short: "The ipcache (IP prefix -> identity)"}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the ipcache",
		Example: "  sigil bpf ipcache list\n  sigil bpf ipcache list -o yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			out, err := ipcacheEntries(ms)
			if err != nil {
				return err
			}
			return o.render(cmd.OutOrStdout(), out, ipcacheTable(out))
		},
	}
	get := &cobra.Command{
		Use:   "get <ip>",
		Short: "Resolve an IP by longest-prefix match, as the datapath does",
		Long: `Resolves an address the way the datapath does (longest prefix match). An
address no prefix matches is identity 2 (world).`,
		Example: "  sigil bpf ipcache get 198.18.1.7",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ip, err := netip.ParseAddr(args[0])
			if err != nil {
				return fmt.Errorf("%q: want an IP address", args[0])
			}
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			e, ok, err := ms.IPCache.Lookup(ip)
			if err != nil {
				return err
			}
			res := BPFIPCacheEntry{Identity: uint32(datapath.IdentityWorld)}
			if ok {
				res = BPFIPCacheEntry{Identity: uint32(e.Identity), LocalEndpoint: e.LocalEndpoint}
				if e.TunnelEndpoint.IsValid() {
					res.TunnelEndpoint = e.TunnelEndpoint.String()
				}
				// Name the prefix that matched: the longest listed one containing ip.
				all, err := ipcacheEntries(ms)
				if err != nil {
					return err
				}
				for _, c := range all {
					if c.Prefix.Contains(ip) && (!res.Prefix.IsValid() || c.Prefix.Bits() > res.Prefix.Bits()) {
						res.Prefix = c.Prefix
					}
				}
			}
			return o.render(cmd.OutOrStdout(), res, func(w io.Writer) error {
				if !ok {
					fmt.Fprintf(w, "%s:\tno prefix matches: identity %s\n", ip, identityName(datapath.IdentityWorld))
					return nil
				}
				return ipcacheTable([]BPFIPCacheEntry{res})(w)
			})
		},
	}
	cmd.AddCommand(list, get)
	return cmd
}

// --- policy map -------------------------------------------------------------------

// BPFPolicyEntry is one entry of an endpoint's policy map.
type BPFPolicyEntry struct {
	Direction string `json:"direction"`
	Identity  uint32 `json:"identity"`
	Protocol  string `json:"protocol"`
	Port      uint16 `json:"port"`
	PrefixLen uint8  `json:"portPrefixLen"`
	Ports     string `json:"ports"`
	Verdict   string `json:"verdict"`
	Cookie    uint32 `json:"cookie"`
}

// BPFPolicy is an endpoint's policy state in the maps.
type BPFPolicy struct {
	Endpoint uint32           `json:"endpoint"`
	Enforced string           `json:"enforced"`
	HasMap   bool             `json:"hasMap"`
	Entries  []BPFPolicyEntry `json:"entries"`
}

func portsString(k datapath.PolicyKey) string {
	switch {
	case k.Protocol == datapath.ProtoAny || k.PortPrefixLen == 0:
		return "any"
	case k.Protocol == datapath.ProtoICMP:
		if k.PortPrefixLen == 16 {
			return fmt.Sprintf("type %d code %d", k.Port>>8, k.Port&0xff)
		}
		return fmt.Sprintf("type %d", k.Port>>8)
	case k.PortPrefixLen == 16:
		return strconv.Itoa(int(k.Port))
	}
	hi := uint32(k.Port) | (1<<(16-uint32(k.PortPrefixLen)) - 1)
	return fmt.Sprintf("%d-%d", k.Port, hi)
}

func newBPFPolicyCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Endpoints' policy maps"}
	cmd.AddCommand(&cobra.Command{
		Use:   "get <endpoint-id>",
		Short: "Show an endpoint's policy map and enforcement flags",
		Long: `Lists the entries of an endpoint's policy map (peer identity, direction,
protocol, port prefix -> allow or deny, cookie) and which directions the
endpoints map says are enforced. Identity 0 matches any peer. ` + "`sigil policy get`" + ` and
flow events name the rule behind a cookie.`,
		Example:           "  sigil bpf policy get 3\n  sigil bpf policy get 3 -o json",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeBPFEndpoints,
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil {
				return fmt.Errorf("endpoint %q: want a numeric endpoint ID (see sigil bpf endpoint list)", args[0])
			}
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			res := BPFPolicy{Endpoint: uint32(id), Enforced: "-", Entries: []BPFPolicyEntry{}}
			eps, err := ms.Endpoints.List()
			if err != nil {
				return err
			}
			found := false
			for _, e := range eps {
				if e.ID == uint32(id) {
					res.Enforced, found = enforced(e.Flags), true
				}
			}
			res.HasMap = ms.Policy.Has(uint32(id))
			if !found && !res.HasMap {
				return fmt.Errorf("endpoint %d is neither in the endpoints map nor has a policy map (see sigil bpf endpoint list)", id)
			}
			if res.HasMap {
				entries, err := ms.Policy.List(uint32(id))
				if err != nil {
					return err
				}
				for k, e := range entries {
					v := "allow"
					if e.Deny {
						v = "deny"
					}
					res.Entries = append(res.Entries, BPFPolicyEntry{Direction: k.Direction.String(), Identity: uint32(k.Identity),
						Protocol: datapath.ProtoName(k.Protocol), Port: k.Port, PrefixLen: k.PortPrefixLen, Ports: portsString(k),
						Verdict: v, Cookie: e.Cookie})
				}
			}
			sort.Slice(res.Entries, func(i, j int) bool {
				a, b := res.Entries[i], res.Entries[j]
				if a.Direction != b.Direction {
					return a.Direction < b.Direction
				}
				if a.Identity != b.Identity {
					return a.Identity < b.Identity
				}
				if a.Protocol != b.Protocol {
					return a.Protocol < b.Protocol
				}
				if a.Port != b.Port {
					return a.Port < b.Port
				}
				return a.PrefixLen < b.PrefixLen
			})
			return o.render(cmd.OutOrStdout(), res, func(w io.Writer) error {
				fmt.Fprintf(w, "Endpoint %d, enforced: %s", res.Endpoint, res.Enforced)
				if !res.HasMap {
					fmt.Fprint(w, ", no policy map (an enforced direction drops everything)")
				}
				fmt.Fprintln(w)
				if !res.HasMap {
					return nil
				}
				fmt.Fprintln(w, "DIRECTION\tIDENTITY\tPROTOCOL\tPORTS\tVERDICT\tCOOKIE")
				for _, e := range res.Entries {
					peer := identityName(datapath.Identity(e.Identity))
					if e.Identity == 0 {
						peer = "0 (any)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", e.Direction, peer, e.Protocol, e.Ports, e.Verdict, e.Cookie)
				}
				return nil
			})
		},
	})
	return cmd
}

func (o *options) completeBPFEndpoints(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ms, err := datapath.OpenPinned(o.pinDir)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer ms.Close()
	eps, _ := ms.Endpoints.List()
	var out []string
	for ip, e := range eps {
		out = append(out, fmt.Sprintf("%d\t%s", e.ID, ip))
	}
	sort.Strings(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// --- conntrack --------------------------------------------------------------------

// BPFCTEntry is one conntrack entry.
type BPFCTEntry struct {
	Direction   string     `json:"direction"`
	Protocol    string     `json:"protocol"`
	Src         netip.Addr `json:"src"`
	SrcPort     uint16     `json:"srcPort"`
	Dst         netip.Addr `json:"dst"`
	DstPort     uint16     `json:"dstPort"`
	ExpiresSec  int64      `json:"expiresInSeconds"`
	Packets     uint64     `json:"packets"`
	Bytes       uint64     `json:"bytes"`
	SrcIdentity uint32     `json:"srcIdentity"`
	DstIdentity uint32     `json:"dstIdentity"`
	TCPFlags    uint8      `json:"tcpFlags"`
	SeenReply   bool       `json:"seenReply"`
	Closing     bool       `json:"closing"`
	Cookie      uint32     `json:"cookie"`
	// ViaStack: the host stack translated the flow (kube-proxy).
	ViaStack bool `json:"viaStack,omitempty"`
	// Fast: a flow with a remote pod that skips the host stack both ways
	// (native routing's fast path).
	Fast bool `json:"fast,omitempty"`
	// Backend: a service flow (tc translation) as the client sent it,
	// translated to this backend.
	Backend *netip.AddrPort `json:"backend,omitempty"`
	// RevNATIndex: the service frontend a translated flow's replies get.
	RevNATIndex uint16 `json:"revNatIndex,omitempty"`
}

func newBPFCTCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "ct", Aliases: []string{"conntrack"}, Short: "The connection tracking map"}
	var expired bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List tracked flows",
		Example: `  sigil bpf ct list
  sigil bpf ct list --expired
  sigil bpf ct list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			all, err := ms.Conntrack.List()
			if err != nil {
				return err
			}
			out := []BPFCTEntry{}
			for _, e := range all {
				if e.Expires < 0 && !expired {
					continue
				}
				t := e.Tuple
				out = append(out, BPFCTEntry{Direction: t.Direction.String(), Protocol: datapath.ProtoName(t.Proto),
					Src: t.Src, SrcPort: t.SrcPort, Dst: t.Dst, DstPort: t.DstPort, ExpiresSec: int64(e.Expires.Seconds()),
					Packets: e.Packets, Bytes: e.Bytes, SrcIdentity: uint32(e.SrcIdentity), DstIdentity: uint32(e.DstIdentity),
					TCPFlags: e.TCPFlags, SeenReply: e.Flags&datapath.CTSeenReply != 0, Closing: e.Flags&datapath.CTClosing != 0,
					Cookie: e.Cookie, ViaStack: e.Flags&datapath.CTViaStack != 0, Fast: e.Flags&datapath.CTFast != 0,
					RevNATIndex: e.RevNATIndex})
				if e.Flags&datapath.CTService != 0 {
					be := e.Backend
					out[len(out)-1].Backend = &be
				}
			}
			sort.Slice(out, func(i, j int) bool {
				a, b := out[i], out[j]
				if a.Src != b.Src {
					return a.Src.Less(b.Src)
				}
				if a.Dst != b.Dst {
					return a.Dst.Less(b.Dst)
				}
				if a.DstPort != b.DstPort {
					return a.DstPort < b.DstPort
				}
				if a.SrcPort != b.SrcPort {
					return a.SrcPort < b.SrcPort
				}
				return a.Direction < b.Direction
			})
			return o.render(cmd.OutOrStdout(), out, func(w io.Writer) error {
				fmt.Fprintln(w, "DIRECTION\tPROTO\tSOURCE\tDESTINATION\tEXPIRES\tPACKETS\tBYTES\tIDENTITIES\tSTATE\tCOOKIE")
				for _, e := range out {
					var st []string
					if e.SeenReply {
						st = append(st, "replied")
					}
					if e.Closing {
						st = append(st, "closing")
					}
					if e.ViaStack {
						st = append(st, "via-stack")
					}
					if e.Fast {
						st = append(st, "fast")
					}
					if e.Backend != nil {
						st = append(st, "service->"+e.Backend.String())
					}
					if f := tcpFlagNames(e.TCPFlags); f != "" {
						st = append(st, f)
					}
					fmt.Fprintf(w, "%s\t%s\t%s:%d\t%s:%d\t%ds\t%d\t%d\t%d->%d\t%s\t%d\n", e.Direction, e.Protocol, e.Src, e.SrcPort,
						e.Dst, e.DstPort, e.ExpiresSec, e.Packets, e.Bytes, e.SrcIdentity, e.DstIdentity, joinOrDash(st, ","), e.Cookie)
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&expired, "expired", false, "include expired entries not yet collected")
	var ip string
	flush := &cobra.Command{
		Use:   "flush",
		Short: "Delete tracked flows (all, or those of one address)",
		Long: `Deletes conntrack entries; the next packet of a flushed flow is judged by
policy again as a new flow. Without --ip every entry is deleted.`,
		Example: "  sigil bpf ct flush --ip 198.18.1.7\n  sigil bpf ct flush",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var addr netip.Addr
			if ip != "" {
				var err error
				if addr, err = netip.ParseAddr(ip); err != nil {
					return fmt.Errorf("--ip %q: want an IP address", ip)
				}
			}
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			var n int
			if addr.IsValid() {
				n, err = ms.Conntrack.FlushAddr(addr)
			} else {
				n, err = ms.Conntrack.Flush(nil)
			}
			if err != nil {
				return err
			}
			res := struct {
				Deleted int `json:"deleted"`
			}{n}
			return o.render(cmd.OutOrStdout(), res, func(w io.Writer) error {
				fmt.Fprintf(w, "Deleted %d conntrack entries\n", n)
				return nil
			})
		},
	}
	flush.Flags().StringVar(&ip, "ip", "", "only flows from or to this address")
	cmd.AddCommand(list, flush)
	return cmd
}

func tcpFlagNames(f uint8) string {
	names := []struct {
		bit  uint8
		name string
	}{{0x02, "SYN"}, {0x10, "ACK"}, {0x01, "FIN"}, {0x04, "RST"}}
	var s []string
	for _, n := range names {
		if f&n.bit != 0 {
			s = append(s, n.name)
		}
	}
	return strings.Join(s, "|")
}

// --- metrics ----------------------------------------------------------------------

// BPFMetric is one datapath counter.
type BPFMetric struct {
	Reason    string `json:"reason"`
	Direction string `json:"direction"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// BPFMetrics are the datapath's counters.
type BPFMetrics struct {
	Counters          []BPFMetric `json:"counters"`
	EventsLost        uint64      `json:"eventsLost"`
	EventsRateLimited uint64      `json:"eventsRateLimited"`
}

func newBPFMetricsCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:     "metrics",
		Short:   "Show the datapath's packet counters by reason and direction, and lost events",
		Example: "  sigil bpf metrics\n  sigil bpf metrics -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := o.openMaps()
			if err != nil {
				return err
			}
			defer ms.Close()
			samples, err := ms.Metrics.Read()
			if err != nil {
				return err
			}
			ev, err := ms.Metrics.Events()
			if err != nil {
				return err
			}
			res := BPFMetrics{Counters: []BPFMetric{}, EventsLost: ev.Lost, EventsRateLimited: ev.RateLimited}
			for _, s := range samples {
				res.Counters = append(res.Counters, BPFMetric{Reason: s.Reason.String(), Direction: s.Direction.String(),
					Packets: s.Packets, Bytes: s.Bytes})
			}
			return o.render(cmd.OutOrStdout(), res, func(w io.Writer) error {
				fmt.Fprintln(w, "REASON\tDIRECTION\tPACKETS\tBYTES")
				for _, c := range res.Counters {
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\n", c.Reason, c.Direction, c.Packets, c.Bytes)
				}
				fmt.Fprintf(w, "\nFlow events lost (ring buffer full):\t%d\n", res.EventsLost)
				fmt.Fprintf(w, "Flow events rate-limited:\t%d\n", res.EventsRateLimited)
				return nil
			})
		},
	}
}

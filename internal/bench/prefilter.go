package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// Mechanisms of the prefilter benchmark: the same deny list at three hooks.
const (
	MechXDP      = "xdp"      // xdp_prefilter, native mode on the node's veth
	MechTC       = "tc"       // tc_prefilter, tcx ingress of the node's veth
	MechIPTables = "iptables" // raw table PREROUTING, one -s CIDR -j DROP per entry
)

// PrefilterOptions configures the prefilter benchmark.
type PrefilterOptions struct {
	Duration time.Duration // per flood
	Sizes    []int         // deny-list sizes (CIDRs)
	Senders  int           // flooding sockets, one goroutine and OS thread each
	Payload  int           // UDP payload bytes per datagram
	Sources  []string      // SourceXDP and/or SourceSocket, in this order
	IPTables bool          // also run the iptables raw-table rows
	Repeat   int           // BPF_PROG_TEST_RUN repeat count per round
	Rounds   int           // test-run rounds per size and program; the median is reported
	Progress io.Writer
}

// DefaultPrefilterOptions is what `sigil-bench prefilter` runs by default.
func DefaultPrefilterOptions() PrefilterOptions {
	return PrefilterOptions{
		Duration: 5 * time.Second,
		Sizes:    []int{10, 1000, 100000},
		Senders:  max(2, runtime.NumCPU()),
		Payload:  64,
		Sources:  []string{SourceXDP, SourceSocket},
		IPTables: true,
		Repeat:   1000000,
		Rounds:   5,
	}
}

// Addresses of the prefilter topology: a sender and a node on one veth.
var (
	pfNodeIP   = netip.MustParseAddr("198.18.60.1")
	pfSenderIP = netip.MustParseAddr("198.18.60.2")
)

const (
	pfNodeIf   = "pf0"  // node side of the veth, where the filters sit
	pfSenderIf = "eth0" // sender side
	pfPort     = 9      // discard
)

// pfDecoyRanges hold the N-1 list entries that never match the flood:
// /32s from these ranges, in this order (114,688 addresses in all; none
// near 198.18.60.0/24). No traffic is ever sent to or from them.
var pfDecoyRanges = []netip.Prefix{
	netip.MustParsePrefix("198.19.0.0/16"),
	netip.MustParsePrefix("198.18.128.0/17"),
	netip.MustParsePrefix("198.18.64.0/18"),
}

// MaxPrefilterListSize is the largest list PrefilterList can build.
func MaxPrefilterListSize() int {
	n := 1
	for _, r := range pfDecoyRanges {
		n += 1 << (32 - r.Bits())
	}
	return n
}

// PrefilterList returns a deny list of n /32 prefixes: n-1 decoys and, last,
// sender's own /32, so an ordered rule list (iptables) walks every entry
// before the one that drops the flood.
func PrefilterList(n int, sender netip.Addr) ([]netip.Prefix, error) {
	if n < 1 || n > MaxPrefilterListSize() {
		return nil, fmt.Errorf("list size %d: want 1 to %d", n, MaxPrefilterListSize())
	}
	out := make([]netip.Prefix, 0, n)
	for _, r := range pfDecoyRanges {
		a := r.Addr()
		for len(out) < n-1 && r.Contains(a) {
			out = append(out, netip.PrefixFrom(a, 32))
			a = a.Next()
		}
	}
	return append(out, netip.PrefixFrom(sender, 32)), nil
}

// PrefilterIPTablesRules is list as the raw table for iptables-restore: one
// DROP per prefix in PREROUTING, in list order.
func PrefilterIPTablesRules(list []netip.Prefix) string {
	var b strings.Builder
	b.Grow(len(list) * 40)
	b.WriteString("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, p := range list {
		fmt.Fprintf(&b, "-A PREROUTING -s %s -j DROP\n", p)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

const emptyRawTable = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

// PrefilterRow is one flood: a mechanism holding a list of Size entries.
type PrefilterRow struct {
	Source  string // SourceXDP or SourceSocket
	Mech    string
	Size    int
	Flood   FloodResult
	Dropped uint64 // by the mechanism, from its own counters
	CPU     cpuUse
	// TestRunNS is the program's per-packet cost by BPF_PROG_TEST_RUN on a
	// denied frame (median over rounds); 0 for iptables.
	TestRunNS float64
	Notes     []string
}

// DropsPerSec is the mechanism's drop rate during the flood.
func (r PrefilterRow) DropsPerSec() float64 {
	if r.Flood.Elapsed <= 0 {
		return 0
	}
	return float64(r.Dropped) / r.Flood.Elapsed.Seconds()
}

// SentPerSec is the sender's rate during the flood.
func (r PrefilterRow) SentPerSec() float64 {
	if r.Flood.Elapsed <= 0 {
		return 0
	}
	return float64(r.Flood.Sent) / r.Flood.Elapsed.Seconds()
}

// CPUPerMpkt is CPU-seconds per million packets dropped, own and machine-wide.
func (r PrefilterRow) CPUPerMpkt() (own, machine float64) {
	if r.Dropped == 0 {
		return 0, 0
	}
	m := float64(r.Dropped) / 1e6
	return r.CPU.Own.Seconds() / m, r.CPU.Machine.Seconds() / m
}

// PrefilterReport is the outcome of a prefilter benchmark run.
type PrefilterReport struct {
	Started  time.Time
	Took     time.Duration
	Machine  Machine
	Options  PrefilterOptions
	XDPMode  datapath.XDPMode
	IPTables IPTables
	FrameLen int
	Rows     []PrefilterRow
}

// Row returns the row of mech at size with traffic from source, or nil.
func (r *PrefilterReport) Row(source, mech string, size int) *PrefilterRow {
	for i := range r.Rows {
		if r.Rows[i].Source == source && r.Rows[i].Mech == mech && r.Rows[i].Size == size {
			return &r.Rows[i]
		}
	}
	return nil
}

func checkPrefilterOptions(o *PrefilterOptions) error {
	if o.Duration < 100*time.Millisecond {
		return fmt.Errorf("duration %v is too short", o.Duration)
	}
	if len(o.Sizes) == 0 {
		return errors.New("no list sizes")
	}
	for _, s := range o.Sizes {
		if s < 1 || s > MaxPrefilterListSize() {
			return fmt.Errorf("list size %d: want 1 to %d", s, MaxPrefilterListSize())
		}
	}
	if o.Senders < 1 || o.Senders > 64 {
		return fmt.Errorf("senders %d: want 1 to 64", o.Senders)
	}
	if o.Payload < 1 || o.Payload > 1400 {
		return fmt.Errorf("payload %d: want 1 to 1400 bytes", o.Payload)
	}
	if len(o.Sources) == 0 {
		return errors.New("no traffic source")
	}
	for _, s := range o.Sources {
		if s != SourceSocket && s != SourceXDP {
			return fmt.Errorf("source %q: want %s or %s", s, SourceXDP, SourceSocket)
		}
	}
	if o.Repeat < 1 || o.Rounds < 1 {
		return fmt.Errorf("test-run repeat %d, rounds %d: want at least 1", o.Repeat, o.Rounds)
	}
	return nil
}

// Verdicts of the prefilter programs on a denied frame.
const (
	xdpDropVerdict = uint32(1) // XDP_DROP
	tcShotVerdict  = retDrop   // TC_ACT_SHOT
)

// RunPrefilter builds a sender and a node namespace joined by a veth, floods
// the node with UDP from an address the deny list holds last, and measures,
// at each list size, the XDP prefilter, the same list as a tc program and
// (last) as iptables raw-table rules. Everything it made is removed before
// it returns, also on error or when ctx is cancelled.
func RunPrefilter(ctx context.Context, o PrefilterOptions) (rep *PrefilterReport, err error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if err := checkPrefilterOptions(&o); err != nil {
		return nil, err
	}
	if err := checkHost("ip", "nsenter", "sysctl"); err != nil {
		return nil, err
	}
	rep = &PrefilterReport{Started: time.Now(), Machine: machine(), Options: o}
	cl := NewCleanup(o.Progress)
	defer func() {
		if cerr := cl.Run(); cerr != nil && err == nil {
			err = fmt.Errorf("cleanup: %w", cerr)
		}
		rep.Took = time.Since(rep.Started)
	}()
	logf := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }

	// Topology: sender ns --veth-- node ns.
	node, err := testnet.CreateNS("sgpfnode")
	if err != nil {
		return rep, err
	}
	cl.Add("delete namespace "+node.Name, node.Delete)
	sender, err := testnet.CreateNS("sgpfsend")
	if err != nil {
		return rep, err
	}
	cl.Add("delete namespace "+sender.Name, sender.Delete)
	if err := CreateVethPair(node, sender); err != nil {
		return rep, err
	}
	nodeIfIndex, err := node.InterfaceIndex(pfNodeIf)
	if err != nil {
		return rep, err
	}
	logf("node %s (%s on %s), sender %s (%s); %d senders, %d-byte UDP payloads to %s:%d",
		node.Name, pfNodeIP, pfNodeIf, sender.Name, pfSenderIP, o.Senders, o.Payload, pfNodeIP, pfPort)

	// The prefilter, loaded from inside the node namespace.
	pinDir := filepath.Join(datapathtest.BPFFSRoot, "sigil-bench-pf-"+randHex())
	cl.Add("unpin "+pinDir, func() error { return datapath.Unpin(pinDir) })
	maxSize := slices.Max(o.Sizes)
	var pf *datapath.Prefilter
	err = node.Do(func() error {
		var err error
		pf, err = datapath.LoadPrefilter(datapath.PrefilterConfig{PinDir: pinDir, NetNS: node.Path,
			MaxEntries: uint32(max(maxSize, datapath.DefaultPrefilterEntries))})
		return err
	})
	if err != nil {
		return rep, err
	}
	defer pf.Close()
	cl.Add("detach xdp from "+pfNodeIf, func() error { return pf.Detach(pfNodeIf) })

	// The frame the senders' kernel would build: sender's MAC to the
	// node's, UDP to port 9.
	frame := datapathtest.Packet{Src: pfSenderIP, Dst: pfNodeIP, Proto: 17, SrcPort: 40000, DstPort: pfPort,
		Payload: make([]byte, o.Payload)}.Bytes()
	nodeMAC, err := node.HardwareAddr(pfNodeIf)
	if err != nil {
		return rep, err
	}
	senderMAC, err := sender.HardwareAddr(pfSenderIf)
	if err != nil {
		return rep, err
	}
	copy(frame[0:6], nodeMAC)
	copy(frame[6:12], senderMAC)
	rep.FrameLen = len(frame)
	dst := netip.AddrPortFrom(pfNodeIP, pfPort)
	meter := newCPUMeter()

	nMech := 2
	if o.IPTables {
		nMech = 3
	}
	b := &pfBencher{o: o, rep: rep, logf: logf, meter: meter,
		total: nMech * len(o.Sizes) * len(o.Sources)}
	// A source is how packets are sent, and what tc and iptables need on
	// the node's veth to see them.
	type source struct {
		send     func(context.Context) (FloodResult, error)
		withPass func(func() error) error
	}
	sources := map[string]source{}
	for _, name := range o.Sources {
		switch name {
		case SourceSocket:
			sources[name] = source{
				send: func(ctx context.Context) (FloodResult, error) {
					return Flood(ctx, sender, dst, o.Senders, o.Payload, o.Duration)
				},
				withPass: func(fn func() error) error { return fn() },
			}
		case SourceXDP:
			src, err := newXDPSource(sender, pfSenderIf, frame)
			if err != nil {
				return rep, err
			}
			defer src.Close()
			pass, err := passProgram()
			if err != nil {
				return rep, err
			}
			defer pass.Close()
			// Injected XDP frames reach the node's veth only while an
			// XDP program is attached there: one that passes everything,
			// for tc and iptables.
			sources[name] = source{
				send: func(ctx context.Context) (FloodResult, error) { return src.flood(ctx, o.Senders, o.Duration) },
				withPass: func(fn func() error) error {
					var l link.Link
					err := node.Do(func() error {
						var err error
						l, err = link.AttachXDP(link.XDPOptions{Program: pass, Interface: nodeIfIndex, Flags: link.XDPDriverMode})
						return err
					})
					if err != nil {
						return fmt.Errorf("attach the XDP pass program to %s: %w", pfNodeIf, err)
					}
					err = fn()
					if cerr := l.Close(); cerr != nil && err == nil {
						err = fmt.Errorf("detach the XDP pass program: %w", cerr)
					}
					return err
				},
			}
		}
	}

	for _, size := range o.Sizes {
		list, err := PrefilterList(size, pfSenderIP)
		if err != nil {
			return rep, err
		}
		rules := make([]datapath.PrefilterRule, len(list))
		for i, p := range list {
			rules[i] = datapath.PrefilterRule{Prefix: p}
		}
		t0 := time.Now()
		if err := pf.Replace(rules); err != nil {
			return rep, err
		}
		logf("deny list of %s CIDRs installed (%v)", groupInt(int64(size)), time.Since(t0).Round(10*time.Millisecond))

		xdpNS, tcNS, err := prefilterTestRun(ctx, pf, frame, o.Repeat, o.Rounds)
		if err != nil {
			return rep, fmt.Errorf("test run, %d CIDRs: %w", size, err)
		}

		for _, srcName := range o.Sources {
			src := sources[srcName]
			b.send = src.send
			// XDP, native on the node's veth.
			mode, err := pf.Attach(pfNodeIf)
			if err != nil {
				return rep, err
			}
			rep.XDPMode = mode
			row := PrefilterRow{Source: srcName, Mech: MechXDP, Size: size, TestRunNS: xdpNS}
			if mode != datapath.XDPNative {
				row.Notes = append(row.Notes, "XDP in "+string(mode)+" mode")
			}
			if err := b.flood(ctx, &row, prefilterCounter(pf)); err != nil {
				return rep, err
			}
			if err := pf.Detach(pfNodeIf); err != nil {
				return rep, err
			}

			// The same list as a tc program on the veth's tcx ingress.
			var l link.Link
			err = node.Do(func() error {
				var err error
				l, err = link.AttachTCX(link.TCXOptions{Interface: nodeIfIndex, Program: pf.TCProgram(), Attach: ebpf.AttachTCXIngress})
				return err
			})
			if err != nil {
				return rep, fmt.Errorf("attach tc_prefilter to %s: %w", pfNodeIf, err)
			}
			row = PrefilterRow{Source: srcName, Mech: MechTC, Size: size, TestRunNS: tcNS}
			ferr := src.withPass(func() error { return b.flood(ctx, &row, prefilterCounter(pf)) })
			if err := l.Close(); err != nil && ferr == nil {
				ferr = fmt.Errorf("detach tc_prefilter: %w", err)
			}
			if ferr != nil {
				return rep, ferr
			}
		}
	}

	// iptables last: the raw table's hooks stay registered in the node
	// namespace once it is used, so nothing measured after would be clean.
	if o.IPTables {
		ipt, err := DetectIPTables(node)
		if err != nil {
			return rep, err
		}
		rep.IPTables = ipt
		cl.Add("flush raw table in "+node.Name, func() error { return ipt.Load(node, emptyRawTable) })
		logf("iptables: %s (%s), raw table of the node namespace only", ipt.Cmd, ipt.Backend)
		for _, size := range o.Sizes {
			list, _ := PrefilterList(size, pfSenderIP)
			t0 := time.Now()
			if err := ipt.Load(node, PrefilterIPTablesRules(list)); err != nil {
				return rep, err
			}
			logf("%s raw PREROUTING rules loaded (%v)", groupInt(int64(size)), time.Since(t0).Round(10*time.Millisecond))
			for _, srcName := range o.Sources {
				src := sources[srcName]
				b.send = src.send
				row := PrefilterRow{Source: srcName, Mech: MechIPTables, Size: size}
				if err := src.withPass(func() error { return b.flood(ctx, &row, iptablesCounter(ipt, node, size)) }); err != nil {
					return rep, err
				}
			}
		}
		if err := ipt.Load(node, emptyRawTable); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// CreateVethPair wires the prefilter topology: node's pf0 (198.18.60.1/24)
// to sender's eth0 (198.18.60.2/24), with permanent neighbours both ways
// (the flood needs no ARP; ARP would pass the filters anyway).
func CreateVethPair(node, sender *testnet.NS) error {
	if err := testnet.CreateVeth(node, pfNodeIf, sender, pfSenderIf); err != nil {
		return err
	}
	nodeMAC, err := node.HardwareAddr(pfNodeIf)
	if err != nil {
		return err
	}
	senderMAC, err := sender.HardwareAddr(pfSenderIf)
	if err != nil {
		return err
	}
	for _, step := range []struct {
		ns  *testnet.NS
		cmd []string
	}{
		{node, []string{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"}},
		{sender, []string{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"}},
		{node, []string{"ip", "addr", "add", pfNodeIP.String() + "/24", "dev", pfNodeIf}},
		{sender, []string{"ip", "addr", "add", pfSenderIP.String() + "/24", "dev", pfSenderIf}},
		{node, []string{"ip", "neigh", "replace", pfSenderIP.String(), "lladdr", senderMAC.String(), "dev", pfNodeIf, "nud", "permanent"}},
		{sender, []string{"ip", "neigh", "replace", pfNodeIP.String(), "lladdr", nodeMAC.String(), "dev", pfSenderIf, "nud", "permanent"}},
	} {
		if _, err := step.ns.Run(step.cmd...); err != nil {
			return fmt.Errorf("wire the veth: %w", err)
		}
	}
	return nil
}

type pfBencher struct {
	o        PrefilterOptions
	rep      *PrefilterReport
	logf     func(string, ...any)
	meter    *cpuMeter
	send     func(context.Context) (FloodResult, error)
	n, total int
}

// flood runs one flood and fills row from the counter's delta and the CPU
// time charged meanwhile.
func (b *pfBencher) flood(ctx context.Context, row *PrefilterRow, counter func() (uint64, error)) error {
	b.n++
	before, err := counter()
	if err != nil {
		return fmt.Errorf("%s, %d CIDRs: read counters: %w", row.Mech, row.Size, err)
	}
	c0 := b.meter.sample()
	res, err := b.send(ctx)
	c1 := b.meter.sample()
	if err != nil {
		return fmt.Errorf("%s, %d CIDRs: flood: %w", row.Mech, row.Size, err)
	}
	// Let the last batches in flight reach the filter.
	time.Sleep(50 * time.Millisecond)
	after, err := counter()
	if err != nil {
		return fmt.Errorf("%s, %d CIDRs: read counters: %w", row.Mech, row.Size, err)
	}
	row.Flood, row.CPU, row.Dropped = res, c0.to(c1), after-before
	if row.Dropped == 0 {
		return fmt.Errorf("%s, %d CIDRs: %d datagrams sent and none dropped: the filter is not in the path", row.Mech, row.Size, res.Sent)
	}
	if res.Errors > 0 {
		row.Notes = append(row.Notes, fmt.Sprintf("%d send calls failed", res.Errors))
	}
	b.rep.Rows = append(b.rep.Rows, *row)
	own, mach := row.CPUPerMpkt()
	tr := "n/a"
	if row.TestRunNS > 0 {
		tr = fmt.Sprintf("%.1f ns", row.TestRunNS)
	}
	b.logf("[%d/%d] %-6s %-8s %7s CIDRs: %10s drops/s  %10s sent/s  %.2f CPU-s/Mpkt (machine %.2f)  test run %s%s",
		b.n, b.total, row.Source, row.Mech, groupInt(int64(row.Size)), groupInt(int64(row.DropsPerSec())), groupInt(int64(row.SentPerSec())),
		own, mach, tr, notes(row.Notes))
	return nil
}

// prefilterCounter sums the packet counters of every installed rule.
func prefilterCounter(pf *datapath.Prefilter) func() (uint64, error) {
	return func() (uint64, error) {
		es, err := pf.List()
		if err != nil {
			return 0, err
		}
		var n uint64
		for _, e := range es {
			n += e.Packets
		}
		return n, nil
	}
}

// iptablesCounter reads the packet counter of rule number size of the raw
// PREROUTING chain: the last one, which drops the flood.
func iptablesCounter(ipt IPTables, ns *testnet.NS, size int) func() (uint64, error) {
	return func() (uint64, error) {
		out, err := ns.Run(ipt.Cmd, "-w", "-t", "raw", "-L", "PREROUTING", strconv.Itoa(size), "-v", "-x", "-n")
		if err != nil {
			return 0, err
		}
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && slices.Contains(f, "DROP") && slices.Contains(f, pfSenderIP.String()) {
				return strconv.ParseUint(f[0], 10, 64)
			}
		}
		return 0, fmt.Errorf("rule %d of raw PREROUTING is not the DROP of %s: %q", size, pfSenderIP, out)
	}
}

// prefilterTestRun times the XDP and tc programs on frame (a denied packet)
// with BPF_PROG_TEST_RUN, rounds times each, alternating, and returns the
// median ns per packet of each.
func prefilterTestRun(ctx context.Context, pf *datapath.Prefilter, frame []byte, repeat, rounds int) (xdpNS, tcNS float64, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var xs, ts []time.Duration
	for r := 0; r < rounds; r++ {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		for _, p := range []struct {
			prog *ebpf.Program
			want uint32
			out  *[]time.Duration
		}{{pf.Program(), xdpDropVerdict, &xs}, {pf.TCProgram(), tcShotVerdict, &ts}} {
			ret, d, err := p.prog.Benchmark(frame, repeat, nil)
			if err != nil {
				return 0, 0, err
			}
			if ret != p.want {
				return 0, 0, fmt.Errorf("%s: verdict %d on a denied frame, want %d", p.prog, ret, p.want)
			}
			*p.out = append(*p.out, d)
		}
	}
	// Benchmark's duration is per run, in whole ns.
	return float64(median(xs).Nanoseconds()), float64(median(ts).Nanoseconds()), nil
}

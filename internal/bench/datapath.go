package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
	"golang.org/x/sys/unix"
)

// IPTables modes of the peer scenarios.
const (
	IPTablesConntrack = "conntrack" // ESTABLISHED,RELATED accepted first, as iptables CNIs do
	IPTablesStateless = "stateless" // every packet walks the rules
)

// DatapathOptions configures the datapath benchmark.
type DatapathOptions struct {
	Duration   time.Duration // per traffic figure
	Sizes      []int         // policy sizes (allow entries)
	IPTables   []string      // IPTablesConntrack and/or IPTablesStateless
	AttachMode datapath.AttachMode
	CRRClients int
	// NoFlowEvents runs Sigil without ConfigTraceNewFlows (which the agent
	// sets), to show what the allowed-flow events cost.
	NoFlowEvents bool
	Cost         CostOptions
	Progress     io.Writer // progress lines; nil for none
}

func (o DatapathOptions) runtimeConfig() datapath.RuntimeConfig {
	rc := AgentRuntimeConfig
	if o.NoFlowEvents {
		rc.Flags &^= datapath.ConfigTraceNewFlows
	}
	return rc
}

// DefaultDatapathOptions is what `sigil-bench datapath` runs by default.
func DefaultDatapathOptions() DatapathOptions {
	return DatapathOptions{
		Duration:   5 * time.Second,
		Sizes:      []int{10, 1000, 10000},
		IPTables:   []string{IPTablesConntrack, IPTablesStateless},
		AttachMode: datapath.AttachAuto,
		CRRClients: 2,
		Cost:       DefaultCostOptions,
	}
}

// Request/response sizes of the RR and CRR figures (netperf's defaults).
const rrSize = 1

// Figures are the three traffic figures of one scenario.
type Figures struct {
	BitsPerSecond float64
	Retransmits   int
	RR            Rate
	CRR           Rate
}

// Scenario is one configuration of the node and what it measured.
type Scenario struct {
	Name    string
	Kind    string // "baseline", "sigil" or "iptables"
	Mode    string // iptables mode
	Size    int    // policy entries or rules; 0 for none
	Figures Figures
	Notes   []string
}

// Machine describes where the benchmark ran.
type Machine struct {
	CPUs      int
	CPUModel  string
	Kernel    string
	LoadAvg   string // at start
	GoVersion string
}

// DatapathReport is the outcome of a datapath benchmark run.
type DatapathReport struct {
	Started    time.Time
	Took       time.Duration
	Machine    Machine
	Options    DatapathOptions
	AttachMode datapath.AttachMode
	IPTables   IPTables
	Scenarios  []Scenario
	Cost       []CostRow
}

// Baseline returns the baseline scenario.
func (r *DatapathReport) Baseline() *Scenario {
	for i := range r.Scenarios {
		if r.Scenarios[i].Kind == "baseline" {
			return &r.Scenarios[i]
		}
	}
	return nil
}

// Addresses of the traffic node.
var (
	nodeGateway = netip.MustParseAddr("198.18.20.1")
	pod1IP      = netip.MustParseAddr("198.18.20.11")
	pod2IP      = netip.MustParseAddr("198.18.20.12")
)

const pod1Identity, pod2Identity = datapath.Identity(1001), datapath.Identity(1002)

// RunDatapath builds one node with two pods in network namespaces, measures
// each scenario, and removes everything it made before returning, also on
// error or when ctx is cancelled.
func RunDatapath(ctx context.Context, o DatapathOptions) (rep *DatapathReport, err error) {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if err := checkOptions(&o); err != nil {
		return nil, err
	}
	if err := checkHost("ip", "nsenter", "sysctl", "iperf3"); err != nil {
		return nil, err
	}
	rep = &DatapathReport{Started: time.Now(), Machine: machine(), Options: o}
	cl := NewCleanup(o.Progress)
	defer func() {
		if cerr := cl.Run(); cerr != nil && err == nil {
			err = fmt.Errorf("cleanup: %w", cerr)
		}
		rep.Took = time.Since(rep.Started)
	}()
	logf := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }

	// The per-packet cost first: it needs no network and is quick.
	logf("per-packet cost of to_container (BPF_PROG_TEST_RUN) at policy sizes 0, %s", joinInts(o.Sizes))
	t0 := time.Now()
	if rep.Cost, err = MeasureProgCost(ctx, o.Sizes, o.runtimeConfig(), o.Cost, cl); err != nil {
		return rep, fmt.Errorf("per-packet cost: %w", err)
	}
	for _, c := range rep.Cost {
		logf("  policy %6s: established %4d ns, new flow %4d ns", groupInt(int64(c.Size)), c.Established.Nanoseconds(), c.NewFlow.Nanoseconds())
	}
	logf("  (%v)", time.Since(t0).Round(100*time.Millisecond))

	// One node, two pods, wired as sigil-cni wires them.
	node, err := testnet.CreateNode(nodeGateway)
	if err != nil {
		return rep, err
	}
	cl.Add("delete namespaces "+node.NS.Name, node.Delete)
	p1, err := node.AddPod(pod1IP, "lxc1")
	if err != nil {
		return rep, err
	}
	p2, err := node.AddPod(pod2IP, "lxc2")
	if err != nil {
		return rep, err
	}
	logf("node %s, pod1 %s (%s), pod2 %s (%s)", node.NS.Name, p1.IP, p1.NS.Name, p2.IP, p2.NS.Name)
	// CRR opens tens of thousands of connections: the widest local port
	// range, and reuse of TIME_WAIT ports, in pod1 (its own namespace).
	if _, err := p1.NS.Run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"); err != nil {
		return rep, err
	}
	srv, err := StartEchoServer(p2.NS, p2.IP, append([]uint16{PortRR}, CRRPortList()...))
	if err != nil {
		return rep, err
	}
	cl.Add("stop echo server", srv.Close)

	b := &bencher{o: o, rep: rep, p1: p1, p2: p2, logf: logf}
	total := 2 + len(o.Sizes) + len(o.IPTables)*len(o.Sizes)
	b.total = total

	// Baseline: the same veths and routes, no programs, no rules.
	if err := b.scenario(ctx, Scenario{Name: "baseline: no programs", Kind: "baseline"}, "refused", nil, nil); err != nil {
		return rep, err
	}

	// Sigil.
	if err := b.sigil(ctx, node, cl); err != nil {
		return rep, err
	}

	// iptables, last: the filter table's hooks stay registered in the node
	// namespace once used, so nothing measured after would be clean.
	if len(o.IPTables) > 0 {
		if err := b.iptables(ctx, node, cl); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

type bencher struct {
	o      DatapathOptions
	rep    *DatapathReport
	p1, p2 *testnet.Pod
	logf   func(string, ...any)
	n      int
	total  int
}

// scenario checks that traffic to a port nothing allows ends as want
// ("refused": delivered; "no answer": dropped by the policy), then measures
// the three figures and records them. before and after, if set, run just
// before and after the measurement; after may add notes.
func (b *bencher) scenario(ctx context.Context, s Scenario, want string, before func() error, after func(*Scenario) error) error {
	b.n++
	closed := netip.AddrPortFrom(b.p2.IP, PortClosed)
	got, err := Probe(b.p1.NS, closed, time.Second)
	if err != nil {
		return fmt.Errorf("%s: probe %s: %w", s.Name, closed, err)
	}
	if got != want {
		return fmt.Errorf("%s: a connection to %s (not allowed, nothing listens) was %s, want %s: the scenario is not what it claims", s.Name, closed, got, want)
	}
	if before != nil {
		if err := before(); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	f, err := b.measure(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	s.Figures = f
	if after != nil {
		if err := after(&s); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	b.rep.Scenarios = append(b.rep.Scenarios, s)
	b.logf("[%d/%d] %-32s %6.2f Gbit/s  %9s RR/s  %8s CRR/s%s", b.n, b.total, s.Name, f.BitsPerSecond/1e9,
		groupInt(int64(f.RR.PerSec())), groupInt(int64(f.CRR.PerSec())), notes(s.Notes))
	return nil
}

func notes(n []string) string {
	if len(n) == 0 {
		return ""
	}
	return "  (" + strings.Join(n, "; ") + ")"
}

func (b *bencher) measure(ctx context.Context) (Figures, error) {
	var f Figures
	tp, err := RunIperf3(ctx, b.p2.NS, b.p1.NS, b.p2.IP, PortIperf3, b.o.Duration)
	if err != nil {
		return f, err
	}
	f.BitsPerSecond, f.Retransmits = tp.BitsPerSecond, tp.Retransmits
	if f.RR, err = RunRR(ctx, b.p1.NS, netip.AddrPortFrom(b.p2.IP, PortRR), rrSize, b.o.Duration); err != nil {
		return f, err
	}
	if f.CRR, err = RunCRR(ctx, b.p1.NS, b.p2.IP, CRRPortList(), b.o.CRRClients, rrSize, b.o.Duration); err != nil {
		return f, err
	}
	return f, nil
}

func (b *bencher) sigil(ctx context.Context, node *testnet.Node, cl *Cleanup) error {
	pinDir := filepath.Join(datapathtest.BPFFSRoot, "sigil-bench-"+randHex())
	cl.Add("unpin "+pinDir, func() error { return datapath.Unpin(pinDir) })
	var dp *datapath.Datapath
	// Loaded from inside the node namespace, so that the attach-mode probe
	// touches the node's loopback, not the host's.
	err := node.NS.Do(func() error {
		var err error
		dp, err = datapath.Load(datapath.Config{PinDir: pinDir, NetNS: node.NS.Path, AttachMode: b.o.AttachMode})
		return err
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	b.rep.AttachMode = dp.Mode()
	var pods []nodePod
	for i, p := range []*testnet.Pod{b.p1, b.p2} {
		hostMAC, err := node.NS.HardwareAddr(p.HostIf)
		if err != nil {
			return err
		}
		pods = append(pods, nodePod{IP: p.IP, EpID: uint32(i + 1), IfIndex: p.IfIndex,
			Identity: []datapath.Identity{pod1Identity, pod2Identity}[i], MAC: p.MAC, NodeMAC: hostMAC})
	}
	if err := installNode(dp, b.o.runtimeConfig(), nodeGateway, pods, slices.Max(b.o.Sizes)); err != nil {
		return err
	}
	for _, p := range []*testnet.Pod{b.p1, b.p2} {
		if err := dp.AttachEndpoint(p.HostIf, p.IfIndex); err != nil {
			return err
		}
	}
	drain, err := startEventDrain(dp, b.p2.IP)
	if err != nil {
		return err
	}
	defer drain.Close()
	b.logf("sigil datapath attached (%s) under %s", dp.Mode(), pinDir)

	for _, size := range append([]int{0}, b.o.Sizes...) {
		if err := setPolicy(dp, pods[1], size, pod1Identity); err != nil {
			return err
		}
		// Every scenario starts with no tracked flow.
		if _, err := dp.Conntrack.Flush(nil); err != nil {
			return err
		}
		s := Scenario{Name: "sigil: no policy", Kind: "sigil", Size: size}
		want := "refused"
		if size > 0 {
			s.Name = fmt.Sprintf("sigil: %s entries", groupInt(int64(size)))
			want = "no answer"
		}
		var before sigilCount
		err := b.scenario(ctx, s, want, func() (err error) {
			before, err = sigilCounters(dp, drain)
			return err
		}, func(s *Scenario) error {
			after, err := sigilCounters(dp, drain)
			if err != nil {
				return err
			}
			d := after.minus(before)
			if d.drops > 0 {
				s.Notes = append(s.Notes, fmt.Sprintf("%d packets dropped", d.drops))
			}
			if d.lost > 0 {
				s.Notes = append(s.Notes, fmt.Sprintf("%d flow events lost", d.lost))
			}
			// Each CRR connection should be a new flow judged once (plus
			// a handful for iperf3 and RR).
			if !b.o.NoFlowEvents {
				s.Notes = append(s.Notes, fmt.Sprintf("%s new flows to pod2 judged, %s CRR connections",
					groupInt(d.verdicts), groupInt(s.Figures.CRR.Count)))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	// Programs off before iptables: detach, then drop the pinned maps.
	for _, p := range []*testnet.Pod{b.p1, b.p2} {
		if err := dp.DetachEndpoint(p.HostIf); err != nil {
			return err
		}
	}
	drain.Close()
	if p := drain.err.Load(); p != nil {
		return fmt.Errorf("event reader: %w", *p)
	}
	dp.Close()
	if err := datapath.Unpin(pinDir); err != nil {
		return err
	}
	// The programs still held pod2's largest policy when they were
	// detached: an answer from the closed port shows they are gone.
	// Unpinning a TCX link releases it from a kernel work queue, so this
	// may take a moment on a busy machine.
	closed := netip.AddrPortFrom(b.p2.IP, PortClosed)
	var got string
	for try := 0; try < 5 && got != "refused"; try++ {
		if got, err = Probe(b.p1.NS, closed, time.Second); err != nil {
			return err
		}
	}
	if got != "refused" {
		return fmt.Errorf("after detaching Sigil, a connection to %s was %q, want refused: programs still attached", closed, got)
	}
	return nil
}

type sigilCount struct{ drops, lost, verdicts int64 }

func (a sigilCount) minus(b sigilCount) sigilCount {
	return sigilCount{a.drops - b.drops, a.lost - b.lost, a.verdicts - b.verdicts}
}

func sigilCounters(dp *datapath.Datapath, drain *eventDrain) (sigilCount, error) {
	var c sigilCount
	// Let the reader catch up with what is already in the ring.
	time.Sleep(100 * time.Millisecond)
	ms, err := dp.Metrics.Read()
	if err != nil {
		return c, err
	}
	for _, m := range ms {
		if m.Reason != datapath.ReasonForwarded {
			c.drops += int64(m.Packets)
		}
	}
	st, err := dp.Metrics.Events()
	if err != nil {
		return c, err
	}
	c.lost = int64(st.Lost)
	c.verdicts = drain.verdicts.Load()
	return c, nil
}

func (b *bencher) iptables(ctx context.Context, node *testnet.Node, cl *Cleanup) error {
	ipt, err := DetectIPTables(node.NS)
	if err != nil {
		return err
	}
	b.rep.IPTables = ipt
	cl.Add("flush iptables in "+node.NS.Name, func() error { return ipt.Flush(node.NS) })
	b.logf("iptables: %s (%s), in the node namespace only", ipt.Cmd, ipt.Backend)
	for _, mode := range b.o.IPTables {
		for _, size := range b.o.Sizes {
			ct := mode == IPTablesConntrack
			if err := ipt.Load(node.NS, IPTablesRules(size, b.p1.IP, b.p2.IP, ct)); err != nil {
				return err
			}
			n, err := ipt.CountForwardRules(node.NS)
			if err != nil {
				return err
			}
			if want := int64(size) + 1 + boolInt(ct); int64(n) != want {
				return fmt.Errorf("iptables: %d rules in FORWARD, want %d", n, want)
			}
			name := fmt.Sprintf("iptables stateless: %s rules", groupInt(int64(size)))
			if ct {
				name = fmt.Sprintf("iptables+conntrack: %s rules", groupInt(int64(size)))
			}
			s := Scenario{Name: name, Kind: "iptables", Mode: mode, Size: size}
			if err := b.scenario(ctx, s, "no answer", nil, nil); err != nil {
				return err
			}
		}
	}
	return ipt.Flush(node.NS)
}

func checkOptions(o *DatapathOptions) error {
	if o.Duration < 100*time.Millisecond {
		return fmt.Errorf("duration %v is too short", o.Duration)
	}
	if len(o.Sizes) == 0 {
		return fmt.Errorf("no policy sizes")
	}
	for _, s := range o.Sizes {
		if err := CheckSize(s, datapath.DefaultPolicyEntries); err != nil {
			return err
		}
	}
	for _, m := range o.IPTables {
		if m != IPTablesConntrack && m != IPTablesStateless {
			return fmt.Errorf("iptables mode %q: want %s or %s", m, IPTablesConntrack, IPTablesStateless)
		}
	}
	if o.CRRClients < 1 || o.CRRClients > CRRPorts {
		return fmt.Errorf("CRR clients %d: want 1 to %d", o.CRRClients, CRRPorts)
	}
	if o.Cost.NewFlows < 100 || o.Cost.Repeat < 1 || o.Cost.Rounds < 1 {
		return fmt.Errorf("per-packet cost options %+v too small", o.Cost)
	}
	return nil
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.Join(strings.Fields(v), " ")
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

func randHex() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = groupInt(int64(x))
	}
	return strings.Join(s, ", ")
}

// groupInt formats n with thousands separators.
func groupInt(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

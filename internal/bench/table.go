package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// ratio is v over the baseline's, NaN without a baseline.
func ratio(v, base float64) float64 {
	if base <= 0 {
		return math.NaN()
	}
	return v / base
}

func fmtRatio(r float64) string {
	if math.IsNaN(r) {
		return "-"
	}
	return fmt.Sprintf("%.2f", r)
}

func fmtNS(d time.Duration) string { return fmt.Sprintf("%d", d.Nanoseconds()) }

// figureRow is one scenario's cells: value and ratio for each figure.
func (r *DatapathReport) figureRow(s *Scenario) []string {
	base := r.Baseline()
	var bt, brr, bcrr float64
	if base != nil {
		bt, brr, bcrr = base.Figures.BitsPerSecond, base.Figures.RR.PerSec(), base.Figures.CRR.PerSec()
	}
	f := s.Figures
	return []string{
		fmt.Sprintf("%.2f", f.BitsPerSecond/1e9), fmtRatio(ratio(f.BitsPerSecond, bt)),
		groupInt(int64(f.RR.PerSec())), fmtRatio(ratio(f.RR.PerSec(), brr)),
		groupInt(int64(f.CRR.PerSec())), fmtRatio(ratio(f.CRR.PerSec(), bcrr)),
	}
}

func (r *DatapathReport) header() []string {
	m := r.Machine
	cpu := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		cpu += " (" + m.CPUModel + ")"
	}
	ipt := "not run"
	if r.IPTables.Cmd != "" {
		ipt = fmt.Sprintf("%s (%s backend)", r.IPTables.Cmd, r.IPTables.Backend)
	}
	return []string{
		fmt.Sprintf("machine: %s, Linux %s, load average %s at start, %s", cpu, m.Kernel, m.LoadAvg, m.GoVersion),
		fmt.Sprintf("run: %s, %v per traffic figure, took %v; Sigil programs attached with %s; iptables: %s",
			r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Options.Duration, r.Took.Round(time.Second), r.AttachMode, ipt),
		fmt.Sprintf("noise: on a shared %d-core machine absolute figures move from run to run; compare the ratios within one run.", m.CPUs),
	}
}

func (r *DatapathReport) legend() []string {
	return []string{
		"Topology: one node namespace, two pod namespaces on veth pairs wired as sigil-cni wires them. Baseline and iptables: pod1 → pod2 through the node's routing. Sigil: as the agent installs endpoints (with their MACs), from_container judges both pods' policies and hands the packet straight into pod2 (bpf_redirect_peer), skipping the node's routing and to_container.",
		"Throughput: iperf3, one TCP stream, received Gbit/s. RR: one TCP connection, 1-byte request and 1-byte response in lock step (netperf TCP_RR), transactions/s. " +
			fmt.Sprintf("CRR: %d client threads each connect, send 1 byte, read 1 byte, close (netperf TCP_CRR), connections/s.", r.Options.CRRClients),
		"×base: the figure over the baseline's (the same veths and routes with no programs and no rules).",
		sigilConfigLine(r.Options.NoFlowEvents),
		"Policy of N: N ingress entries on pod2, N−1 for other peers (decoy identities × 10 ports each) that never match the benchmark's traffic, and 1 allowing pod1 on TCP 5200-5215 (all the benchmark ports). The benchmark checks that a port outside it is dropped.",
		"iptables: the same N as FORWARD rules in the node namespace (-s peer -d pod2 -p tcp --dport port -j ACCEPT, the rule for pod1 last), then a DROP of the rest to pod2. " +
			"+conntrack puts `-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` first, as iptables-based CNIs do, so only a connection's first packet walks the list; stateless walks it for every packet.",
	}
}

func (r *DatapathReport) costLegend() []string {
	return []string{
		"Per-packet cost of to_container (pod2's ingress program) by BPF_PROG_TEST_RUN, in ns per packet.",
		"Established: a packet of a tracked flow (parse, endpoint lookup, conntrack hit), the mean over a repeat run.",
		"New flow: a connection's first packet (conntrack miss, ipcache lookup, policy lookups: outer map and two LPM lookups, conntrack create, flow event). " +
			"Timed one run per packet over distinct flows, minus the single-run time of the same packets once tracked (which cancels the timer's own overhead), plus the established figure. " +
			"Waking an event reader is not part of it (no reader waits during these runs).",
		"Policy part: new flow at that size minus new flow with no policy, in the same round (what the policy lookups add). Each figure is the median over rounds that visit every size in turn.",
	}
}

func (r *DatapathReport) costRows() [][]string {
	var rows [][]string
	for _, c := range r.Cost {
		name, part := "no policy", "-"
		if c.Size > 0 {
			name = groupInt(int64(c.Size)) + " entries"
			part = fmtNS(c.PolicyPart)
		}
		rows = append(rows, []string{name, fmtNS(c.Established), fmtNS(c.NewFlow), part})
	}
	return rows
}

// summary says how the run compares with the targets: Sigil at every size
// at least 0.95 of the baseline, flat per-packet cost, ahead of iptables at
// the largest size. It reports; it does not judge the run.
func (r *DatapathReport) summary() []string {
	var out []string
	base := r.Baseline()
	if base == nil {
		return nil
	}
	type low struct {
		v     float64
		where string
	}
	lowest := low{v: math.Inf(1)}
	figs := func(s *Scenario) [3]float64 {
		return [3]float64{s.Figures.BitsPerSecond, s.Figures.RR.PerSec(), s.Figures.CRR.PerSec()}
	}
	names := [3]string{"throughput", "RR", "CRR"}
	bf := figs(base)
	var largestSigil *Scenario
	largest := 0
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		if s.Kind != "sigil" {
			continue
		}
		f := figs(s)
		for k := range f {
			if q := ratio(f[k], bf[k]); q < lowest.v {
				lowest = low{q, names[k] + ", " + s.Name}
			}
		}
		if s.Size >= largest {
			largest, largestSigil = s.Size, s
		}
	}
	if !math.IsInf(lowest.v, 1) {
		out = append(out, fmt.Sprintf("Lowest Sigil ratio to the baseline: %.2f (%s); target ≥ 0.95.", lowest.v, lowest.where))
	}
	if largestSigil != nil {
		f := figs(largestSigil)
		for i := range r.Scenarios {
			s := &r.Scenarios[i]
			if s.Kind != "iptables" || s.Size != largest {
				continue
			}
			g := figs(s)
			out = append(out, fmt.Sprintf("Sigil over %s: throughput %.2f×, RR %.2f×, CRR %.2f×.",
				s.Name, ratio(f[0], g[0]), ratio(f[1], g[1]), ratio(f[2], g[2])))
		}
	}
	var first, last *CostRow
	for i := range r.Cost {
		if r.Cost[i].Size == 0 {
			continue
		}
		if first == nil {
			first = &r.Cost[i]
		}
		last = &r.Cost[i]
	}
	if first != nil && last != first {
		out = append(out, fmt.Sprintf("Per-packet cost from %s to %s entries: established %d → %d ns, new flow %d → %d ns.",
			groupInt(int64(first.Size)), groupInt(int64(last.Size)),
			first.Established.Nanoseconds(), last.Established.Nanoseconds(),
			first.NewFlow.Nanoseconds(), last.NewFlow.Nanoseconds()))
	}
	return out
}

// WriteText prints the report as plain-text tables.
func (r *DatapathReport) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString("Sigil datapath benchmark\n")
	for _, l := range r.header() {
		b.WriteString(l + "\n")
	}
	b.WriteString("\n")
	rows := [][]string{{"scenario", "Gbit/s", "×base", "RR/s", "×base", "CRR/s", "×base"}}
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		rows = append(rows, append([]string{s.Name}, r.figureRow(s)...))
	}
	b.WriteString(textTable(rows))
	b.WriteString("\n")
	rows = [][]string{{"per-packet cost, to_container", "established ns", "new flow ns", "policy part ns"}}
	b.WriteString(textTable(append(rows, r.costRows()...)))
	b.WriteString("\n")
	for _, l := range r.summary() {
		b.WriteString(l + "\n")
	}
	notes := false
	for _, s := range r.Scenarios {
		if len(s.Notes) > 0 {
			if !notes {
				b.WriteString("\nNotes:\n")
				notes = true
			}
			fmt.Fprintf(&b, "  %s: %s\n", s.Name, strings.Join(s.Notes, "; "))
		}
	}
	b.WriteString("\n")
	for _, l := range append(r.legend(), r.costLegend()...) {
		b.WriteString(wrap(l, 100, "  ") + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Markdown returns the report as the "## Datapath" section of
// docs/performance.md.
func (r *DatapathReport) Markdown(command string) string {
	var b strings.Builder
	b.WriteString("## Datapath\n\n")
	fmt.Fprintf(&b, "`%s`\n\n", command)
	for _, l := range r.header() {
		b.WriteString("- " + mdEscape(l) + "\n")
	}
	b.WriteString("\n| scenario | throughput Gbit/s | ×base | RR trans/s | ×base | CRR conn/s | ×base |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		fmt.Fprintf(&b, "| %s | %s |\n", s.Name, strings.Join(r.figureRow(s), " | "))
	}
	b.WriteString("\n| policy (to_container) | established ns/packet | new flow ns/packet | policy part ns |\n")
	b.WriteString("|---|---:|---:|---:|\n")
	for _, row := range r.costRows() {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
	}
	b.WriteString("\n")
	for _, l := range r.summary() {
		b.WriteString(l + "\n")
	}
	b.WriteString("\n")
	for _, l := range append(r.legend(), r.costLegend()...) {
		b.WriteString("- " + l + "\n")
	}
	return b.String()
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func wrap(s string, width int, indent string) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = indent + w
			continue
		}
		if line == "" {
			line = w
		} else {
			line += " " + w
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

// textTable lays rows out in columns, the first left-aligned and the others
// right-aligned, the first row underlined.
func textTable(rows [][]string) string {
	var widths []int
	for _, row := range rows {
		for i, c := range row {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for n, row := range rows {
		for i, c := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			switch {
			case i == 0:
				b.WriteString(c + pad)
			default:
				b.WriteString("  " + pad + c)
			}
		}
		b.WriteString("\n")
		if n == 0 {
			total := 0
			for _, w := range widths {
				total += w + 2
			}
			b.WriteString(strings.Repeat("-", total-2) + "\n")
		}
	}
	return b.String()
}

func sigilConfigLine(noEvents bool) string {
	if noEvents {
		return "Sigil runs the agent's runtime configuration except flow events (--no-flow-events): default enforcement, host ingress allowed, no event for new allowed flows."
	}
	return "Sigil runs the agent's runtime configuration (default enforcement, host ingress allowed, a flow event for every new allowed flow, no rate limit) with a reader draining the event ring buffer as a flow observer would."
}

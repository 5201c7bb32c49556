package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

var pfSourceNames = map[string]string{
	SourceXDP:    "XDP frames",
	SourceSocket: "UDP socket",
}

var pfMechNames = map[string]string{
	MechXDP:      "XDP prefilter",
	MechTC:       "tc (same list)",
	MechIPTables: "iptables raw",
}

func (r *PrefilterReport) mechs() []string {
	out := []string{MechXDP, MechTC}
	if r.Options.IPTables {
		out = append(out, MechIPTables)
	}
	return out
}

// cells are one row's figures: drops/s, sent/s, CPU-s/Mpkt own and
// machine-wide, test-run ns/packet, XDP's drops/s over this row's.
func (r *PrefilterReport) cells(row *PrefilterRow) []string {
	own, mach := row.CPUPerMpkt()
	tr := "n/a"
	if row.Mech != MechIPTables {
		tr = fmt.Sprintf("%.0f", row.TestRunNS)
	}
	vs := "-"
	if row.Mech != MechXDP {
		if x := r.Row(row.Source, MechXDP, row.Size); x != nil {
			vs = fmtRatio(ratio(x.DropsPerSec(), row.DropsPerSec())) + "×"
		}
	}
	return []string{
		groupInt(int64(row.DropsPerSec())), groupInt(int64(row.SentPerSec())),
		fmt.Sprintf("%.2f", own), fmt.Sprintf("%.2f", mach), tr, vs,
	}
}

var pfColumns = []string{"drops/s", "sent/s", "CPU-s/Mpkt", "machine CPU-s/Mpkt", "test-run ns/pkt", "XDP drops/s ×"}

func (r *PrefilterReport) header() []string {
	m := r.Machine
	cpu := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		cpu += " (" + m.CPUModel + ")"
	}
	ipt := "not run"
	if r.IPTables.Cmd != "" {
		ipt = fmt.Sprintf("%s (%s backend)", r.IPTables.Cmd, r.IPTables.Backend)
	}
	mode := string(r.XDPMode)
	if mode == "" {
		mode = "-"
	}
	return []string{
		fmt.Sprintf("machine: %s, Linux %s, load average %s at start, %s", cpu, m.Kernel, m.LoadAvg, m.GoVersion),
		fmt.Sprintf("run: %s, %v per flood, %d sender threads, %d-byte UDP payload (%d-byte frames), took %v; XDP mode %s; iptables: %s",
			r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Options.Duration, r.Options.Senders, r.Options.Payload, r.FrameLen,
			r.Took.Round(time.Second), mode, ipt),
		fmt.Sprintf("noise: on a shared %d-core machine absolute figures move from run to run; compare within one run.", m.CPUs),
	}
}

func (r *PrefilterReport) legend() []string {
	return []string{
		"Topology: a sender namespace (198.18.60.2) floods a node namespace (198.18.60.1, UDP port 9) over one veth pair, " +
			fmt.Sprintf("from %d threads, each as fast as it can, with one of two traffic sources. ", r.Options.Senders) +
			"XDP frames: an XDP program run by BPF_PROG_TEST_RUN in live-frames mode redirects each frame into the sender's veth, so it reaches the node's veth as an XDP frame with no skb, as a frame from a NIC driver does; " +
			"for the tc and iptables rows an XDP program that passes everything sits on the node's veth (veth accepts XDP frames only then), and veth builds the skb after it. " +
			fmt.Sprintf("UDP socket: connected UDP sockets writing %d-datagram sendmmsg batches; every packet is an skb from the start, and native XDP on veth first turns that skb into an XDP buffer (a copy when its headroom is short, as a socket's is), so it measures XDP where it cannot avoid the skb. ", floodBatch) +
			"The list of N CIDRs is N−1 /32s that never match (198.19.0.0/16, then 198.18.128.0/17, 198.18.64.0/18) and, last, the sender's /32: iptables walks every rule before the one that drops the flood; the LPM trie does not care.",
		"XDP prefilter: xdp_prefilter attached to the node's veth (native mode: before an skb exists). tc: tc_prefilter, the same program logic and the same LPM list, on the veth's tcx ingress (after the skb is built). iptables raw: one `-A PREROUTING -s CIDR -j DROP` per entry in the node's raw table (before conntrack), loaded with iptables-restore.",
		"drops/s: the mechanism's own counter delta (per-rule prefilter counters; the iptables rule's packet counter) over the flood's duration. sent/s: datagrams the sender's kernel accepted; the difference was dropped elsewhere (veth queue full) or is in flight.",
		"CPU-s/Mpkt: CPU time of the benchmark process (the sender, and the receive-side softirq work the kernel runs inside its send calls: on veth, delivery and the filter run on the sending CPU) plus the ksoftirqd threads, per million packets dropped. " +
			"It includes making and sending the packets, and the packets the veth could not take (sent/s above drops/s); softirq work the kernel happens to run on another task's time is missed. " +
			"machine CPU-s/Mpkt: all busy CPU time of the machine (/proc/stat user+nice+system+irq+softirq+steal) over the same window, including unrelated load: on a machine the flood (or anything else) keeps busy it is about CPUs ÷ drops/s. Tick-based accounting (1/100 s units). " +
			"The flood saturates the CPUs either way, so drops/s is the primary figure: what the cheaper filter buys is more packets dropped with the same CPUs.",
		fmt.Sprintf("test-run ns/pkt: BPF_PROG_TEST_RUN of the program on one denied frame, %s repeats, median of %d rounds: the program's own per-packet cost, without the driver or the stack around it. Not applicable to iptables.",
			groupInt(int64(r.Options.Repeat)), r.Options.Rounds),
		"XDP drops/s ×: the XDP prefilter's drops/s at that size over this row's.",
	}
}

// summary compares XDP with the others at each size and each mechanism
// with itself across sizes, per traffic source. It reports; it does not
// judge the run.
func (r *PrefilterReport) summary() []string {
	var out []string
	for _, src := range r.Options.Sources {
		var ahead []string
		allAhead := true
		for _, size := range r.Options.Sizes {
			x := r.Row(src, MechXDP, size)
			if x == nil {
				continue
			}
			var parts []string
			for _, m := range r.mechs()[1:] {
				o := r.Row(src, m, size)
				if o == nil {
					continue
				}
				q := ratio(x.DropsPerSec(), o.DropsPerSec())
				if !(q > 1) {
					allAhead = false
				}
				parts = append(parts, fmt.Sprintf("%.2f× %s", q, m))
			}
			if len(parts) > 0 {
				ahead = append(ahead, fmt.Sprintf("%s CIDRs %s", groupInt(int64(size)), strings.Join(parts, ", ")))
			}
		}
		if len(ahead) > 0 {
			verdict := "ahead of both at every size"
			if !allAhead {
				verdict = "NOT ahead of both at every size"
			}
			out = append(out, fmt.Sprintf("%s: XDP drops/s over the others (%s): %s.", pfSourceNames[src], verdict, strings.Join(ahead, "; ")))
		}
		first, last := r.Options.Sizes[0], r.Options.Sizes[len(r.Options.Sizes)-1]
		if first == last {
			continue
		}
		var flat []string
		for _, m := range r.mechs() {
			a, b := r.Row(src, m, first), r.Row(src, m, last)
			if a == nil || b == nil {
				continue
			}
			flat = append(flat, fmt.Sprintf("%s %s → %s (%.2f×)", m,
				groupInt(int64(a.DropsPerSec())), groupInt(int64(b.DropsPerSec())), ratio(b.DropsPerSec(), a.DropsPerSec())))
		}
		if len(flat) > 0 {
			out = append(out, fmt.Sprintf("%s: drops/s from %s to %s CIDRs: %s.", pfSourceNames[src],
				groupInt(int64(first)), groupInt(int64(last)), strings.Join(flat, "; ")))
		}
	}
	first, last := r.Options.Sizes[0], r.Options.Sizes[len(r.Options.Sizes)-1]
	src := r.Options.Sources[0]
	if a, b := r.Row(src, MechXDP, first), r.Row(src, MechXDP, last); first != last && a != nil && b != nil {
		at, bt := r.Row(src, MechTC, first), r.Row(src, MechTC, last)
		l := fmt.Sprintf("Test run from %s to %s CIDRs: XDP %.0f → %.0f ns/packet", groupInt(int64(first)), groupInt(int64(last)), a.TestRunNS, b.TestRunNS)
		if at != nil && bt != nil {
			l += fmt.Sprintf(", tc %.0f → %.0f ns/packet", at.TestRunNS, bt.TestRunNS)
		}
		out = append(out, l+".")
	}
	return out
}

func (r *PrefilterReport) rowsBySize() []*PrefilterRow {
	var out []*PrefilterRow
	for _, src := range r.Options.Sources {
		for _, size := range r.Options.Sizes {
			for _, m := range r.mechs() {
				if row := r.Row(src, m, size); row != nil {
					out = append(out, row)
				}
			}
		}
	}
	return out
}

// WriteText prints the report as a plain-text table.
func (r *PrefilterReport) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString("Sigil prefilter benchmark\n")
	for _, l := range r.header() {
		b.WriteString(l + "\n")
	}
	b.WriteString("\n")
	rows := [][]string{append([]string{"traffic", "list", "mechanism"}, pfColumns...)}
	for _, row := range r.rowsBySize() {
		rows = append(rows, append([]string{pfSourceNames[row.Source], groupInt(int64(row.Size)) + " CIDRs", pfMechNames[row.Mech]}, r.cells(row)...))
	}
	b.WriteString(textTableLeft(rows, 3))
	b.WriteString("\n")
	for _, l := range r.summary() {
		b.WriteString(wrap(l, 100, "  ") + "\n")
	}
	notesHdr := false
	for _, row := range r.rowsBySize() {
		if len(row.Notes) > 0 {
			if !notesHdr {
				b.WriteString("\nNotes:\n")
				notesHdr = true
			}
			fmt.Fprintf(&b, "  %s, %s, %s CIDRs: %s\n", pfSourceNames[row.Source], pfMechNames[row.Mech], groupInt(int64(row.Size)), strings.Join(row.Notes, "; "))
		}
	}
	b.WriteString("\n")
	for _, l := range r.legend() {
		b.WriteString(wrap(l, 100, "  ") + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// textTableLeft is textTable with the first n columns left-aligned.
func textTableLeft(rows [][]string, n int) string {
	if len(rows) == 0 || len(rows[0]) < n {
		return textTable(rows)
	}
	// Merge the first n columns into one, padded, so textTable's
	// left-aligned first column covers them.
	widths := make([]int, n)
	for _, row := range rows {
		for i := 0; i < n; i++ {
			widths[i] = max(widths[i], len([]rune(row[i])))
		}
	}
	merged := make([][]string, len(rows))
	for k, row := range rows {
		var first strings.Builder
		for i := 0; i < n; i++ {
			first.WriteString(row[i])
			if i < n-1 {
				first.WriteString(strings.Repeat(" ", widths[i]-len([]rune(row[i]))+2))
			}
		}
		merged[k] = append([]string{first.String()}, row[n:]...)
	}
	return textTable(merged)
}

// Markdown returns the report as the "## XDP prefilter" section of
// docs/performance.md.
func (r *PrefilterReport) Markdown(command string) string {
	var b strings.Builder
	b.WriteString("## XDP prefilter\n\n")
	fmt.Fprintf(&b, "`%s`\n\n", command)
	for _, l := range r.header() {
		b.WriteString("- " + mdEscape(l) + "\n")
	}
	b.WriteString("\n| traffic | list | mechanism | " + strings.Join(pfColumns, " | ") + " |\n")
	b.WriteString("|---|---|---|" + strings.Repeat("---:|", len(pfColumns)) + "\n")
	for _, row := range r.rowsBySize() {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", pfSourceNames[row.Source], groupInt(int64(row.Size)), pfMechNames[row.Mech], strings.Join(r.cells(row), " | "))
	}
	b.WriteString("\n")
	for _, l := range r.summary() {
		b.WriteString(l + "\n\n")
	}
	for _, row := range r.rowsBySize() {
		if len(row.Notes) > 0 {
			fmt.Fprintf(&b, "Note: %s, %s, %s CIDRs: %s.\n\n", pfSourceNames[row.Source], pfMechNames[row.Mech], groupInt(int64(row.Size)), strings.Join(row.Notes, "; "))
		}
	}
	for _, l := range r.legend() {
		b.WriteString("- " + l + "\n")
	}
	return b.String()
}

package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/datapath"
)

// flowTimeFormat is how observe prints times (hubble's).
const flowTimeFormat = "Jan _2 15:04:05.000"

type observeFlags struct {
	follow     bool
	last       int
	since      string
	identities []string
	fromIDs    []string
	toIDs      []string
	ports      []string
	f          flows.Filter
}

func parseIDs(flag string, vals []string) ([]uint32, error) {
	var out []uint32
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("--%s %q: want a numeric identity", flag, s)
			}
			out = append(out, uint32(n))
		}
	}
	return out, nil
}

// parseSince accepts a duration back from now ("5m") or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: want a positive duration", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration such as 5m or a time such as 2006-01-02T15:04:05Z", s)
}

// query builds the flow query of the flags; lastSet says --last was given.
func (of *observeFlags) query(lastSet bool, now time.Time) (flows.Query, error) {
	q := flows.Query{Filter: of.f, Follow: of.follow}
	var err error
	if q.Since, err = parseSince(of.since, now); err != nil {
		return q, err
	}
	if q.Filter.Identities, err = parseIDs("identity", of.identities); err != nil {
		return q, err
	}
	if q.Filter.FromIdentities, err = parseIDs("from-identity", of.fromIDs); err != nil {
		return q, err
	}
	if q.Filter.ToIdentities, err = parseIDs("to-identity", of.toIDs); err != nil {
		return q, err
	}
	for _, v := range of.ports {
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
			if err != nil || n == 0 {
				return q, fmt.Errorf("--port %q: want a port 1-65535", s)
			}
			q.Filter.Ports = append(q.Filter.Ports, uint16(n))
		}
	}
	for i, v := range q.Filter.Verdicts {
		q.Filter.Verdicts[i] = strings.ToUpper(v)
	}
	if err := q.Filter.Validate(); err != nil {
		return q, errors.New("--" + err.Error())
	}
	switch {
	case lastSet && of.last < 0:
		return q, fmt.Errorf("--last %d: want 0 or more", of.last)
	case lastSet:
		q.Last = of.last
	case of.follow:
		q.Last = 0
	case !q.Since.IsZero():
		q.Last = -1
	default:
		q.Last = 20
	}
	return q, nil
}

func newObserveCommand(o *options) *cobra.Command {
	of := &observeFlags{}
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows: who talked to whom, the verdict, the drop reason and the policy",
		Long: `Shows the flows the datapath reported (drops, and each allowed new flow),
enriched by the agent with both pods, their identities and labels, the port,
the verdict, the drop reason and the policy rule that decided (for a default
deny: the policies that make the endpoint default-deny).

Without --follow the last 20 matching flows the agent keeps are shown
(--last N for more, --since for a time window). Values of one filter are
alternatives; different filters must all match. Events that were lost on the
way (ring buffer full, rate limit, a slow client) are shown as EVENTS LOST
lines, never hidden. -o json prints one JSON object per line.`,
		Example: `  sigil observe --verdict DROPPED --follow
  sigil observe --last 100 --namespace shop --port 5432
  sigil observe --from-pod shop/frontend --to-pod shop/db --type drop
  sigil observe --label app=db --since 5m -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := of.query(cmd.Flags().Changed("last"), time.Now())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			err = o.client().Flows(cmd.Context(), q.Values(), func(rec apitypes.FlowRecord) error {
				return o.printRecord(w, rec)
			})
			return o.agentErr(err)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&of.follow, "follow", "f", false, "keep streaming new flows")
	f.IntVar(&of.last, "last", 0, "show the last N matching flows first (when not given: 20 without --follow, none with it)")
	f.StringVar(&of.since, "since", "", "only flows since a duration ago (5m) or a time (RFC 3339)")
	f.StringSliceVar(&of.f.Pods, "pod", nil, "either side is this pod: [namespace/]pod, namespace/ for all its pods, pod* for a prefix")
	f.StringSliceVar(&of.f.FromPods, "from-pod", nil, "the source is this pod")
	f.StringSliceVar(&of.f.ToPods, "to-pod", nil, "the destination is this pod")
	f.StringSliceVarP(&of.f.Namespaces, "namespace", "n", nil, "either side is in this namespace")
	f.StringArrayVarP(&of.f.Labels, "label", "l", nil, "either side has these labels: key=value[,key2=value2] (repeat for alternatives)")
	f.StringSliceVar(&of.identities, "identity", nil, "either side has this identity")
	f.StringSliceVar(&of.fromIDs, "from-identity", nil, "the source has this identity")
	f.StringSliceVar(&of.toIDs, "to-identity", nil, "the destination has this identity")
	f.StringSliceVar(&of.f.Verdicts, "verdict", nil, "FORWARDED or DROPPED")
	f.StringSliceVar(&of.f.Protocols, "protocol", nil, "tcp, udp, icmp or sctp")
	f.StringSliceVar(&of.ports, "port", nil, "either side's port")
	f.StringSliceVarP(&of.f.Types, "type", "t", nil, "policy-verdict, drop or trace")
	f.StringSliceVar(&of.f.Reasons, "reason", nil, "drop reason contains this text (e.g. policy)")
	cmd.RegisterFlagCompletionFunc("verdict", completeFixed(flows.Verdicts...))
	cmd.RegisterFlagCompletionFunc("type", completeFixed(flows.Types...))
	cmd.RegisterFlagCompletionFunc("protocol", completeFixed(flows.Protocols...))
	return cmd
}

// printRecord prints one record in the output format; JSON is one object
// per line.
func (o *options) printRecord(w io.Writer, rec apitypes.FlowRecord) error {
	switch o.output {
	case outJSON:
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case outYAML:
		b, err := yaml.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "---\n%s", b)
		return err
	}
	var err error
	switch {
	case rec.Lost != nil:
		_, err = fmt.Fprintln(w, lostLine(rec.Lost))
	case rec.Flow != nil:
		_, err = fmt.Fprintln(w, FlowLine(rec.Flow))
	case rec.Raw != nil:
		_, err = fmt.Fprintln(w, RawLine(rec.Raw))
	}
	return err
}

func lostLine(l *apitypes.LostEvents) string {
	return fmt.Sprintf("%s: EVENTS LOST: %d (%s)", l.Time.Local().Format(flowTimeFormat), l.Count, l.Source)
}

func endpointString(e apitypes.FlowEndpoint, port bool) string {
	s := e.IP.String()
	if e.PodName != "" {
		s = e.Namespace + "/" + e.PodName
	}
	if port && e.Port != 0 {
		s += ":" + strconv.Itoa(int(e.Port))
	}
	id := strconv.FormatUint(uint64(e.Identity), 10)
	if e.IdentityName != "" {
		id = e.IdentityName
	}
	return s + " (ID:" + id + ")"
}

// FlowLine is the one-line form of a flow: time, both sides with ports and
// identities, protocol, direction, verdict, drop reason and policy.
func FlowLine(f *apitypes.Flow) string {
	var b strings.Builder
	b.WriteString(f.Time.Local().Format(flowTimeFormat))
	b.WriteString(": ")
	b.WriteString(endpointString(f.Source, f.ICMP == nil))
	b.WriteString(" -> ")
	b.WriteString(endpointString(f.Destination, f.ICMP == nil))
	b.WriteByte(' ')
	b.WriteString(f.Protocol)
	if f.ICMP != nil {
		fmt.Fprintf(&b, " type %d code %d", f.ICMP.Type, f.ICMP.Code)
	}
	fmt.Fprintf(&b, " %s %s %s", f.Type, f.Direction, f.Verdict)
	if f.DropReason != "" {
		fmt.Fprintf(&b, " (%s)", f.DropReason)
	}
	switch {
	case f.Policy != nil:
		fmt.Fprintf(&b, " policy %s", f.Policy)
	case len(f.EnforcedBy) > 0:
		fmt.Fprintf(&b, " enforced by %s", strings.Join(f.EnforcedBy, ","))
	case f.Cookie != 0:
		fmt.Fprintf(&b, " cookie %d", f.Cookie)
	}
	if f.TCPFlags != "" {
		fmt.Fprintf(&b, " [%s]", f.TCPFlags)
	}
	return b.String()
}

// RawLine is the one-line form of a raw datapath event.
func RawLine(r *apitypes.RawEvent) string {
	return fmt.Sprintf("%s: %s ep=%d ifindex=%d %s %s:%d -> %s:%d proto=%d identity=%d->%d verdict=%s reason=%d(%s) tcpflags=0x%02x cookie=%d len=%d",
		r.Time.Local().Format(flowTimeFormat), datapath.EventType(r.Type), r.EndpointID, r.IfIndex,
		datapath.Direction(r.Direction), r.Src, r.SrcPort, r.Dst, r.DstPort, r.Proto, r.SrcIdentity, r.DstIdentity,
		datapath.Verdict(r.Verdict), r.Reason, datapath.Reason(r.Reason), r.TCPFlags, r.Cookie, r.Length)
}

func newMonitorCommand(o *options) *cobra.Command {
	var direct bool
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Stream raw datapath events, for debugging the datapath itself",
		Long: `Streams every datapath event as the BPF programs wrote it (numbers, not
names): type, endpoint, ifindex, direction, addresses, ports, identities,
verdict and reason codes, TCP flags, cookie, length.

By default the events come through the agent, which owns the ring buffer.
--direct reads the pinned ring buffer itself, for when the agent is down;
while an agent runs, it and the monitor then split the events between them.`,
		Example: "  sigil monitor\n  sigil monitor --direct --pin-dir /sys/fs/bpf/sigil\n  sigil monitor -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if !direct {
				q := flows.Query{Follow: true, Raw: true}
				err := o.client().Flows(cmd.Context(), q.Values(), func(rec apitypes.FlowRecord) error {
					return o.printRecord(w, rec)
				})
				return o.agentErr(err)
			}
			rd, err := datapath.OpenEventReader(o.pinDir)
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("no event ring buffer pinned under %s (--pin-dir)", o.pinDir)
				}
				return err
			}
			go func() {
				<-cmd.Context().Done()
				rd.Close()
			}()
			for {
				ev, err := rd.Read()
				if errors.Is(err, datapath.ErrClosed) {
					return nil
				}
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "decode:", err)
					continue
				}
				rec := apitypes.FlowRecord{Raw: &apitypes.RawEvent{Time: ev.Time, Type: uint8(ev.Type),
					Verdict: uint8(ev.Verdict), Reason: uint8(ev.Reason), Direction: uint8(ev.Direction),
					EndpointID: ev.EndpointID, IfIndex: ev.IfIndex, SrcIdentity: uint32(ev.SrcIdentity),
					DstIdentity: uint32(ev.DstIdentity), Src: ev.Src, Dst: ev.Dst, SrcPort: ev.SrcPort, DstPort: ev.DstPort,
					Proto: ev.Proto, TCPFlags: ev.TCPFlags, Cookie: ev.Cookie, Length: ev.Length}}
				if err := o.printRecord(w, rec); err != nil {
					return err
				}
			}
		},
	}
	cmd.Flags().BoolVar(&direct, "direct", false, "read the pinned ring buffer instead of asking the agent")
	return cmd
}

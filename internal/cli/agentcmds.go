package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
)

// --- status -------------------------------------------------------------------

// offlineStatus is what status shows when the agent cannot be reached.
type offlineStatus struct {
	Agent    string                  `json:"agent"`
	Datapath apitypes.DatapathStatus `json:"datapath"`
}

func newStatusCommand(o *options) *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's health, datapath, endpoints, identities, controllers and flow pipeline",
		Long: `Shows the agent's health and readiness, the datapath's attach mode (TCX or tc)
and enforcement mode, the fill level of its BPF maps, the number of endpoints,
identities and policies, the Kubernetes API server connection and the last
sync of each controller, and the flow pipeline's counters (including lost
events). When the agent cannot be reached, the pinned maps are read directly
and the command fails.`,
		Example: `  sigil status
  sigil status --verbose
  sigil status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := o.client().Status(cmd.Context())
			if err != nil {
				aerr := o.agentErr(err)
				off := offlineStatus{Agent: aerr.Error(), Datapath: pinnedDatapathStatus(o.pinDir)}
				o.render(cmd.OutOrStdout(), off, func(w io.Writer) error {
					fmt.Fprintf(w, "Agent:\tunreachable\n")
					printDatapath(w, off.Datapath, true)
					return nil
				})
				return aerr
			}
			return o.render(cmd.OutOrStdout(), st, func(w io.Writer) error { return printStatus(w, st, verbose) })
		},
	}
	cmd.Flags().BoolVar(&verbose, "verbose", false, "list every map and controller")
	return cmd
}

// pinnedDatapathStatus reads the maps under pinDir without the agent.
func pinnedDatapathStatus(pinDir string) apitypes.DatapathStatus {
	ds := apitypes.DatapathStatus{PinDir: pinDir, Mode: "tc", Prefilter: agent.PrefilterModes(pinDir)}
	if ents, err := os.ReadDir(filepath.Join(pinDir, "links")); err == nil && len(ents) > 0 {
		ds.Mode = "tcx"
	}
	ms, err := datapath.OpenPinned(pinDir)
	if err != nil {
		ds.Mode, ds.Error = "unknown", err.Error()
		return ds
	}
	defer ms.Close()
	if rc, err := ms.Config.Get(); err == nil {
		ds.Enforcement = rc.Enforcement.String()
	}
	if ds.Maps, err = agent.MapStatuses(ms); err != nil {
		ds.Error = err.Error()
	}
	return ds
}

func printDatapath(w io.Writer, d apitypes.DatapathStatus, verbose bool) {
	line := strings.ToUpper(d.Mode)
	var extra []string
	if d.PinDir != "" {
		extra = append(extra, "pin dir "+d.PinDir)
	}
	if d.Enforcement != "" {
		extra = append(extra, "enforcement "+d.Enforcement)
	}
	if len(extra) > 0 {
		line += " (" + strings.Join(extra, ", ") + ")"
	}
	fmt.Fprintf(w, "Datapath:\t%s\n", line)
	if len(d.Prefilter) > 0 {
		ifs := make([]string, 0, len(d.Prefilter))
		for ifName, mode := range d.Prefilter {
			ifs = append(ifs, ifName+" "+mode)
		}
		sort.Strings(ifs)
		fmt.Fprintf(w, "Prefilter (XDP):\t%s\n", strings.Join(ifs, ", "))
	}
	if d.Error != "" {
		fmt.Fprintf(w, "Datapath error:\t%s\n", d.Error)
	}
	if len(d.Maps) == 0 {
		return
	}
	top := d.Maps[0]
	for _, m := range d.Maps {
		if m.Pressure > top.Pressure {
			top = m
		}
	}
	fmt.Fprintf(w, "BPF maps:\t%d maps, highest pressure %s %s (%d/%d)\n", len(d.Maps), top.Name, percent(top.Pressure), top.Entries, top.Max)
	if verbose {
		for _, m := range d.Maps {
			fmt.Fprintf(w, "  %s\t%d/%d\t%s\n", m.Name, m.Entries, m.Max, percent(m.Pressure))
		}
	}
}

func printStatus(w io.Writer, st apitypes.Status, verbose bool) error {
	health := "Ok"
	if !st.Health.Ready {
		health = "Not ready: " + st.Health.Message
	}
	fmt.Fprintf(w, "Agent:\t%s (API %s, uptime %s, pod CIDR %s)\n", health, st.Health.APIVersion, dash(st.Uptime), dash(st.Health.PodCIDR))
	printDatapath(w, st.Datapath, verbose)
	k := st.Kubernetes
	switch {
	case !k.Enabled:
		fmt.Fprintf(w, "Kubernetes:\tDisabled (%s)\n", dash(k.Message))
	case k.Connected && k.Server != "":
		fmt.Fprintf(w, "Kubernetes:\tOk (API server %s)\n", k.Server)
	case k.Connected:
		fmt.Fprintf(w, "Kubernetes:\tOk (API server reachable)\n")
	default:
		fmt.Fprintf(w, "Kubernetes:\tAPI server unreachable, enforcing the last known state: %s\n", dash(k.Message))
	}
	if st.PolicyError != "" {
		fmt.Fprintf(w, "Policy:\t%s\n", st.PolicyError)
	} else {
		fmt.Fprintf(w, "Policy:\t%d policies in force\n", st.Policies)
	}
	fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
	fmt.Fprintf(w, "Identities:\t%d\n", st.Identities)
	failing := 0
	for _, c := range st.Controllers {
		if c.LastError != "" {
			failing++
		}
	}
	fmt.Fprintf(w, "Controllers:\t%d, %d failing\n", len(st.Controllers), failing)
	if verbose {
		for _, c := range st.Controllers {
			last := "never"
			if !c.LastSync.IsZero() {
				last = c.LastSync.Format("2006-01-02T15:04:05Z07:00")
			}
			fmt.Fprintf(w, "  %s\tlast sync %s\t%s\n", c.Name, last, dash(c.LastError))
		}
	}
	f := st.Flows
	if !f.Enabled {
		fmt.Fprintf(w, "Flows:\tDisabled\n")
		return nil
	}
	fmt.Fprintf(w, "Flows:\t%d/%d buffered, %d seen, %d streaming\n", f.Buffered, f.Capacity, f.Seen, f.Subscribers)
	fmt.Fprintf(w, "Flows lost:\t%s\n", lostSummary(f.Lost))
	return nil
}

func lostSummary(lost map[string]uint64) string {
	order := []string{apitypes.LostRingBufferFull, apitypes.LostRateLimited, apitypes.LostDecode, apitypes.LostSlowClient}
	parts := make([]string, 0, len(order))
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d %s", lost[k], k))
	}
	return strings.Join(parts, ", ")
}

// --- endpoints ------------------------------------------------------------------

func newEndpointCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "endpoint",
		Aliases: []string{"endpoints", "ep"},
		Short:   "List and inspect the node's endpoints (pod attachments)",
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the node's endpoints",
		Example: "  sigil endpoint list\n  sigil endpoint list -o yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, err := o.client().ListEndpoints(cmd.Context())
			if err != nil {
				return o.agentErr(err)
			}
			return o.render(cmd.OutOrStdout(), apitypes.EndpointList{Endpoints: eps}, func(w io.Writer) error {
				fmt.Fprintln(w, "ID\tIDENTITY\tPOD\tIPV4\tHOST IF\tENFORCED")
				for _, ep := range eps {
					fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%s\t%s\n", ep.ID, ep.Identity, podName(ep), epIPs(ep), ep.HostIfName,
						enforced(datapath.EndpointFlags(ep.PolicyFlags)))
				}
				return nil
			})
		},
	}
	get := &cobra.Command{
		Use:   "get <id | namespace/pod | container-id>",
		Short: "Show one endpoint",
		Example: `  sigil endpoint get 3
  sigil endpoint get shop/frontend-7d9f
  sigil endpoint get 3 -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeEndpoints,
		RunE: func(cmd *cobra.Command, args []string) error {
			eps, err := o.client().ListEndpoints(cmd.Context())
			if err != nil {
				return o.agentErr(err)
			}
			ep, err := findEndpoint(eps, args[0])
			if err != nil {
				return err
			}
			return o.render(cmd.OutOrStdout(), ep, func(w io.Writer) error {
				fmt.Fprintf(w, "ID:\t%d\n", ep.ID)
				fmt.Fprintf(w, "Pod:\t%s\n", podName(ep))
				fmt.Fprintf(w, "Container:\t%s (%s)\n", ep.ContainerID, ep.IfName)
				fmt.Fprintf(w, "Identity:\t%d\n", ep.Identity)
				fmt.Fprintf(w, "Labels:\t%s\n", joinOrDash(agent.LabelStrings(ep.Labels), ", "))
				for _, a := range ep.Addresses {
					fmt.Fprintf(w, "Address:\t%s (pool %s, gateway %s)\n", a.IP, a.Pool, a.Gateway)
				}
				fmt.Fprintf(w, "Host interface:\t%s (ifindex %d, MAC %s)\n", ep.HostIfName, ep.HostIfIndex, ep.HostMAC)
				fmt.Fprintf(w, "Pod MAC:\t%s\n", ep.MAC)
				fmt.Fprintf(w, "Enforced:\t%s\n", enforced(datapath.EndpointFlags(ep.PolicyFlags)))
				fmt.Fprintf(w, "Created:\t%s\n", ep.CreatedAt.Format("2006-01-02T15:04:05Z07:00"))
				return nil
			})
		},
	}
	cmd.AddCommand(list, get)
	return cmd
}

func findEndpoint(eps []apitypes.Endpoint, ref string) (apitypes.Endpoint, error) {
	if id, err := strconv.ParseUint(ref, 10, 32); err == nil {
		for _, ep := range eps {
			if ep.ID == uint32(id) {
				return ep, nil
			}
		}
	}
	for _, ep := range eps {
		if ep.ContainerID == ref || ep.PodNamespace+"/"+ep.PodName == ref {
			return ep, nil
		}
		for _, a := range ep.Addresses {
			if a.IP.String() == ref {
				return ep, nil
			}
		}
	}
	return apitypes.Endpoint{}, fmt.Errorf("no endpoint %q on this node (by ID, namespace/pod, container ID or IP; see sigil endpoint list)", ref)
}

func (o *options) completeEndpoints(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	eps, err := o.client().ListEndpoints(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, ep := range eps {
		out = append(out, fmt.Sprintf("%d\t%s", ep.ID, podName(ep)))
		if ep.PodName != "" {
			out = append(out, ep.PodNamespace+"/"+ep.PodName)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func podName(ep apitypes.Endpoint) string {
	if ep.PodName == "" {
		return "-"
	}
	return ep.PodNamespace + "/" + ep.PodName
}

func epIPs(ep apitypes.Endpoint) string {
	var s []string
	for _, a := range ep.Addresses {
		s = append(s, a.IP.String())
	}
	return joinOrDash(s, ",")
}

func enforced(f datapath.EndpointFlags) string {
	var s []string
	if f&datapath.EndpointEnforceIngress != 0 {
		s = append(s, "ingress")
	}
	if f&datapath.EndpointEnforceEgress != 0 {
		s = append(s, "egress")
	}
	return joinOrDash(s, ",")
}

// --- identities -----------------------------------------------------------------

func newIdentityCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "identity",
		Aliases: []string{"identities", "id"},
		Short:   "List and inspect security identities",
	}
	table := func(ids []apitypes.Identity) func(io.Writer) error {
		return func(w io.Writer) error {
			fmt.Fprintln(w, "ID\tKIND\tLABELS\tLOCAL ENDPOINTS")
			for _, it := range ids {
				eps := make([]string, 0, len(it.Endpoints))
				for _, e := range it.Endpoints {
					eps = append(eps, strconv.FormatUint(uint64(e), 10))
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", it.ID, it.Kind, joinOrDash(it.Labels, ","), joinOrDash(eps, ","))
			}
			return nil
		}
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the identities the agent knows",
		Long:    "Lists the reserved identities and every identity the policy engine knows (without the engine: those of this node's endpoints).",
		Example: "  sigil identity list\n  sigil identity list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ids, err := o.client().Identities(cmd.Context())
			if err != nil {
				return o.agentErr(err)
			}
			return o.render(cmd.OutOrStdout(), apitypes.IdentityList{Identities: ids}, table(ids))
		},
	}
	get := &cobra.Command{
		Use:     "get <id>",
		Short:   "Show one identity",
		Example: "  sigil identity get 2\n  sigil identity get 256 -o yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil {
				return fmt.Errorf("identity %q: want a number (see sigil identity list)", args[0])
			}
			it, err := o.client().Identity(cmd.Context(), uint32(id))
			if err != nil {
				return o.agentErr(err)
			}
			return o.render(cmd.OutOrStdout(), it, table([]apitypes.Identity{it}))
		},
	}
	cmd.AddCommand(list, get)
	return cmd
}

// --- policy ---------------------------------------------------------------------

func newPolicyCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Aliases: []string{"policies"},
		Short:   "Inspect the policies in force, their selectors, and why a flow is allowed or denied",
	}
	get := &cobra.Command{
		Use:   "get [kind/namespace/name | name]",
		Short: "List the policies in force on this node, or show one with its rules",
		Example: `  sigil policy get
  sigil policy get NetworkPolicy/shop/db-ingress
  sigil policy get db-ingress -o yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := o.client().Policies(cmd.Context())
			if err != nil {
				return o.agentErr(err)
			}
			if len(args) == 1 {
				var match []apitypes.Policy
				for _, p := range ps {
					full := policyName(p)
					if full == args[0] || p.Name == args[0] || strings.HasSuffix(full, "/"+args[0]) {
						match = append(match, p)
					}
				}
				if len(match) == 0 {
					return fmt.Errorf("no policy %q in force on this node (see sigil policy get)", args[0])
				}
				ps = match
			}
			return o.render(cmd.OutOrStdout(), apitypes.PolicyList{Policies: ps}, func(w io.Writer) error {
				if len(args) == 0 {
					fmt.Fprintln(w, "POLICY\tSELECTOR\tENFORCES\tENDPOINTS\tRULES")
					for _, p := range ps {
						fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\n", policyName(p), dash(p.Selector), joinOrDash(p.Enforces, ","),
							p.SelectedEndpoints, len(p.Rules))
					}
					return nil
				}
				for i, p := range ps {
					if i > 0 {
						fmt.Fprintln(w)
					}
					fmt.Fprintf(w, "Policy:\t%s\n", policyName(p))
					fmt.Fprintf(w, "Selects:\t%s\n", dash(p.Selector))
					fmt.Fprintf(w, "Enforces:\t%s\n", joinOrDash(p.Enforces, ", "))
					fmt.Fprintf(w, "Endpoints:\t%d selected on this node, %d over capacity\n", p.SelectedEndpoints, p.OverCapacity)
					for _, r := range p.Rules {
						fmt.Fprintf(w, "Rule:\t%s\n", r)
					}
				}
				return nil
			})
		},
	}
	selectors := &cobra.Command{
		Use:     "selectors",
		Short:   "List the peer selectors in use and the identities each selects",
		Example: "  sigil policy selectors\n  sigil policy selectors -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sels, err := o.client().Selectors(cmd.Context())
			if err != nil {
				return o.agentErr(err)
			}
			return o.render(cmd.OutOrStdout(), apitypes.SelectorList{Selectors: sels}, func(w io.Writer) error {
				fmt.Fprintln(w, "SELECTOR\tIDENTITIES")
				for _, s := range sels {
					ids := make([]string, 0, len(s.Identities))
					for _, id := range s.Identities {
						ids = append(ids, strconv.FormatUint(uint64(id), 10))
					}
					fmt.Fprintf(w, "%s\t%s\n", s.Selector, joinOrDash(ids, ","))
				}
				return nil
			})
		},
	}
	cmd.AddCommand(get, selectors, newExplainCommand(o))
	return cmd
}

func policyName(p apitypes.Policy) string {
	return apitypes.PolicyRule{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}.PolicyName()
}

// parsePortProto parses "80/tcp", "80" (TCP), "53/udp", "8/icmp" (ICMP
// type 8; "3:1/icmp" type 3 code 1) or "any".
func parsePortProto(s string) (port uint16, proto string, err error) {
	if s == "any" || s == "" {
		return 0, "0", errors.New("--port is required, e.g. 80/tcp, 53/udp or 8/icmp")
	}
	p, pr, ok := strings.Cut(s, "/")
	if !ok {
		pr = "tcp"
	}
	pr = strings.ToLower(pr)
	if _, err := agent.ParseProtocol(pr); err != nil {
		return 0, "", fmt.Errorf("--port %q: %v", s, err)
	}
	if pr == "icmp" {
		t, c, _ := strings.Cut(p, ":")
		tn, err1 := strconv.ParseUint(t, 10, 8)
		cn := uint64(0)
		var err2 error
		if c != "" {
			cn, err2 = strconv.ParseUint(c, 10, 8)
		}
		if err1 != nil || err2 != nil {
			return 0, "", fmt.Errorf("--port %q: want an ICMP type[:code], e.g. 8/icmp", s)
		}
		return uint16(tn<<8 | cn), pr, nil
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: want a port 1-65535 and a protocol, e.g. 80/tcp", s)
	}
	return uint16(n), pr, nil
}

func newExplainCommand(o *options) *cobra.Command {
	var from, to, port string
	cmd := &cobra.Command{
		Use:   "explain --from <ns/pod|ip> --to <ns/pod|ip> --port <port/proto>",
		Short: "Explain whether a new flow is allowed, and by which policy and rule",
		Long: `Evaluates a new flow with the policy engine of this node's agent and names the
rule that decides it (or the policies that make the endpoint default-deny),
every rule that matches, and what the maps installed in the kernel decide for
the same flow. At least one side must be an endpoint of this node.`,
		Example: `  sigil policy explain --from shop/frontend --to shop/db --port 5432/tcp
  sigil policy explain --from shop/frontend --to 198.18.7.1 --port 53/udp
  sigil policy explain --from shop/frontend --to shop/db --port 8/icmp -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return errors.New("--from and --to are required (namespace/pod or IP)")
			}
			for _, p := range []string{from, to} {
				if _, err := netip.ParseAddr(p); err != nil && strings.Count(p, "/") != 1 {
					return fmt.Errorf("%q: want namespace/pod or an IP address", p)
				}
			}
			pn, proto, err := parsePortProto(port)
			if err != nil {
				return err
			}
			x, err := o.client().Explain(cmd.Context(), from, to, proto, pn)
			if err != nil {
				return o.agentErr(err)
			}
			return o.render(cmd.OutOrStdout(), x, func(w io.Writer) error { return printExplanation(w, x) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "source: namespace/pod or IP")
	f.StringVar(&to, "to", "", "destination: namespace/pod or IP")
	f.StringVar(&port, "port", "", "destination port and protocol: 80/tcp, 53/udp, 8/icmp (ICMP type[:code])")
	return cmd
}

func peerString(p apitypes.ExplainPeer) string {
	s := p.Name
	var extra []string
	if p.IP.IsValid() && p.IP.String() != p.Name {
		extra = append(extra, p.IP.String())
	}
	if p.Local {
		extra = append(extra, fmt.Sprintf("endpoint %d", p.EndpointID))
	}
	extra = append(extra, fmt.Sprintf("identity %d", p.Identity))
	return s + " (" + strings.Join(extra, ", ") + ")"
}

func printExplanation(w io.Writer, x apitypes.Explanation) error {
	port := fmt.Sprintf("%s/%d", x.Protocol, x.Port)
	if x.Protocol == "ICMP" {
		port = fmt.Sprintf("ICMP type %d code %d", x.Port>>8, x.Port&0xff)
	}
	fmt.Fprintf(w, "Flow:\t%s -> %s %s\n", peerString(x.From), peerString(x.To), port)
	fmt.Fprintf(w, "Verdict:\t%s\n", x.Verdict)
	for _, v := range x.Verdicts {
		fmt.Fprintf(w, "\nEndpoint %d %s:\t%s (%s)\n", v.EndpointID, v.Direction, v.Verdict, v.Reason)
		switch {
		case !v.Enforced:
			fmt.Fprintf(w, "  \tno policy selects the endpoint in this direction\n")
		case v.Decided != nil:
			fmt.Fprintf(w, "  decided by:\t%s\n", v.Decided)
		case len(v.EnforcedBy) > 0:
			fmt.Fprintf(w, "  default deny, enforced by:\t%s\n", strings.Join(v.EnforcedBy, ", "))
		}
		for _, r := range v.Allowing {
			fmt.Fprintf(w, "  allowing:\t%s\n", r)
		}
		for _, r := range v.Denying {
			fmt.Fprintf(w, "  denying:\t%s\n", r)
		}
		if v.Datapath != "" {
			fmt.Fprintf(w, "  installed maps:\t%s (%s)\n", v.Datapath, v.DatapathReason)
		} else if v.DatapathReason != "" {
			fmt.Fprintf(w, "  installed maps:\t%s\n", v.DatapathReason)
		}
	}
	if !x.Agree {
		fmt.Fprintf(w, "\nWARNING:\tthe maps installed in the kernel decide differently from the policy engine (the datapath is behind or out of sync)\n")
	}
	return nil
}

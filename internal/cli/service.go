package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/agent/apitypes"
)

func newServiceCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Aliases: []string{"services", "svc"},
		Short: "Services load-balanced by the agent (kube-proxy replacement)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the service frontends and their backends as the agent installed them",
		Long: `Lists every service frontend (ClusterIP:port/protocol) the agent's socket
load-balancer translates, with its ready backends and ClientIP session
affinity. sigil bpf lb list reads the same maps without the agent.`,
		Example: "  sigil service list\n  sigil service list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svcs, err := o.client().Services(cmd.Context())
			if err != nil {
				return o.agentErr(err)
			}
			if svcs == nil {
				svcs = []apitypes.Service{}
			}
			return o.render(cmd.OutOrStdout(), svcs, func(w io.Writer) error {
				printServices(w, svcs)
				return nil
			})
		},
	})
	return cmd
}

func printServices(w io.Writer, svcs []apitypes.Service) {
	fmt.Fprintln(w, "FRONTEND\tBACKENDS\tAFFINITY")
	for _, s := range svcs {
		fmt.Fprintf(w, "%s\t%s\t%s\n", frontendString(s.Frontend), backendsString(s.Backends), affinityString(s.AffinityTimeoutSeconds))
	}
}

func frontendString(f apitypes.ServiceFrontend) string {
	return fmt.Sprintf("%s:%d/%s", f.Address, f.Port, f.Protocol)
}

func backendsString(bs []apitypes.ServiceBackend) string {
	if len(bs) == 0 {
		return "(none: connections refused)"
	}
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = fmt.Sprintf("%s:%d", b.Address, b.Port)
	}
	return strings.Join(out, ",")
}

func affinityString(sec uint32) string {
	if sec == 0 {
		return "-"
	}
	return fmt.Sprintf("ClientIP %ds", sec)
}

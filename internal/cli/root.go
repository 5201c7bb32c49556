// Package cli implements the sigil command-line tool.
package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/internal/demo"
)

// Main runs the CLI with args and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	return 0
}

func newRootCommand() *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "sigil",
		Short: "Inspect and operate Sigil, an eBPF CNI with identity-based network policy",
		Long: `sigil inspects the Sigil agent of this node through its local API socket, and
the datapath's BPF maps directly through bpffs (sigil bpf ..., which works
while the agent is down).`,
		Example: `  sigil status
  sigil observe --verdict DROPPED --follow
  sigil policy explain --from shop/frontend --to shop/db --port 5432/tcp
  sigil bpf ct list -o json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Name() == "demo" || cmd.Name() == cobra.ShellCompRequestCmd || cmd.Name() == cobra.ShellCompNoDescRequestCmd {
				return nil
			}
			return o.validate()
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.socket, "socket", apitypes.DefaultSocket, "the agent's API socket")
	pf.StringVar(&o.pinDir, "pin-dir", "/sys/fs/bpf/sigil", "bpffs directory of the datapath's pinned maps (sigil bpf ...)")
	pf.StringVarP(&o.output, "output", "o", outTable, "output format: table, json or yaml")
	pf.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for the agent's answer")
	pf.StringVar(&o.node, "node", "", "ask the agent of this node through the Kubernetes API server (not supported yet)")
	pf.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --node (not supported yet)")
	pf.StringVar(&o.kubeCtx, "context", "", "kubeconfig context for --node (not supported yet)")
	root.RegisterFlagCompletionFunc("output", completeFixed(outputFormats...))
	root.AddCommand(newDemoCommand(), newStatusCommand(o), newEndpointCommand(o), newIdentityCommand(o),
		newPolicyCommand(o), newBPFCommand(o), newObserveCommand(o), newMonitorCommand(o),
		newServiceCommand(o))
	return root
}

func newDemoCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the datapath demo in throwaway network namespaces",
		Long: `Builds a node and three pods in network namespaces (198.18.20.0/24), loads
Sigil's BPF programs onto the pods' veths, shows the connectivity matrix,
applies a policy live, and prints the dropped flows and the map entries
behind the verdicts. Everything it makes is removed at the end. Needs root.`,
		Example: "  sudo sigil demo",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("the demo needs root (network namespaces and BPF)")
			}
			return demo.Run(cmd.Context(), cmd.OutOrStdout())
		},
	}
}

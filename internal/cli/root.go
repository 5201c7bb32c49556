// Package cli implements the sigil command-line tool.
package cli

import (
	"context"
	"errors"
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
	root := newRoot(&options{args: args})
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil && !errors.Is(err, errRemoteDone) {
		var re *RemoteExitError
		if errors.As(err, &re) {
			return re.Code // the remote sigil printed its error
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	return 0
}

func newRootCommand() *cobra.Command { return newRoot(&options{}) }

func newRoot(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:   "sigil",
		Short: "Inspect and operate Sigil, an eBPF CNI with identity-based network policy",
		Long: `sigil inspects the Sigil agent of this node through its local API socket, and
the datapath's BPF maps directly through bpffs (sigil bpf ..., which works
while the agent is down). --node NODE runs the command in the sigil-agent pod
of another node through the Kubernetes API server (pods/exec).`,
		Example: `  sigil status
  sigil --node worker-2 status
  sigil observe --verdict DROPPED --follow
  sigil policy explain --from shop/frontend --to shop/db --port 5432/tcp
  sigil bpf ct list -o json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Name() == cobra.ShellCompRequestCmd || cmd.Name() == cobra.ShellCompNoDescRequestCmd {
				return nil
			}
			if cmd.Name() == "demo" {
				if o.remote() {
					return errors.New("the demo runs on this machine: --node, --kubeconfig, --context and --agent-namespace do not apply")
				}
				return nil
			}
			if err := o.validate(); err != nil {
				return err
			}
			if o.remote() {
				// Run the command in the agent pod of --node instead;
				// errRemoteDone stops cobra from running it here.
				args := o.args
				if args == nil {
					args = os.Args[1:]
				}
				if err := o.runRemote(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr()); err != nil {
					return err
				}
				return errRemoteDone
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.socket, "socket", envOr("SIGIL_SOCKET", apitypes.DefaultSocket), "the agent's API socket ($SIGIL_SOCKET)")
	pf.StringVar(&o.pinDir, "pin-dir", envOr("SIGIL_PIN_DIR", "/sys/fs/bpf/sigil"), "bpffs directory of the datapath's pinned maps, for sigil bpf ... ($SIGIL_PIN_DIR)")
	pf.StringVarP(&o.output, "output", "o", outTable, "output format: table, json or yaml")
	pf.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for the agent's answer")
	pf.StringVar(&o.node, "node", "", "run the command in the sigil-agent pod of this node, through the Kubernetes API server (pods/exec)")
	pf.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --node (default $KUBECONFIG, ~/.kube/config, in-cluster)")
	pf.StringVar(&o.kubeCtx, "context", "", "kubeconfig context for --node")
	pf.StringVar(&o.agentNS, "agent-namespace", defaultAgentNamespace, "namespace of the sigil-agent pods for --node")
	root.RegisterFlagCompletionFunc("output", completeFixed(outputFormats...))
	root.AddCommand(newDemoCommand(), newStatusCommand(o), newEndpointCommand(o), newIdentityCommand(o),
		newPolicyCommand(o), newBPFCommand(o), newObserveCommand(o), newMonitorCommand(o),
		newServiceCommand(o), newLabCommand())
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

// envOr is the environment variable's value, or def when it is unset or
// empty. The agent pod sets SIGIL_SOCKET and SIGIL_PIN_DIR when each node has
// its own folders (the chart's agent.perNodeHostPaths), so `sigil` run there
// (also through --node) finds its own agent.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

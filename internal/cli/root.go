// Package cli implements the sigil command-line tool.
package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

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
	root := &cobra.Command{
		Use:           "sigil",
		Short:         "Inspect and operate Sigil, an eBPF CNI with identity-based network policy",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDemoCommand())
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

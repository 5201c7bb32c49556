package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/client"
)

// Output formats of -o.
const (
	outTable = "table"
	outJSON  = "json"
	outYAML  = "yaml"
)

var outputFormats = []string{outTable, outJSON, outYAML}

// options are the global flags.
type options struct {
	socket     string
	pinDir     string
	output     string
	timeout    time.Duration
	node       string
	kubeconfig string
	kubeCtx    string
	agentNS    string
	// args is the command line, for --node (nil: os.Args[1:]).
	args []string
}

// remote reports whether a flag of --node was given.
func (o *options) remote() bool {
	return o.node != "" || o.kubeconfig != "" || o.kubeCtx != "" || (o.agentNS != "" && o.agentNS != defaultAgentNamespace)
}

func (o *options) validate() error {
	switch o.output {
	case outTable, outJSON, outYAML:
	default:
		return fmt.Errorf("-o %q: want one of %s", o.output, strings.Join(outputFormats, ", "))
	}
	return nil
}

// client returns a client of the local agent.
func (o *options) client() *client.Client { return client.New(o.socket, o.timeout) }

// agentErr turns API errors into what the user should do.
func (o *options) agentErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, client.ErrUnreachable) {
		return fmt.Errorf("agent not running on this node: is the sigil-agent pod ready? (cannot reach %s; "+
			"--socket selects another socket, and `sigil bpf ...` reads the datapath's maps without the agent)", o.socket)
	}
	var ae *client.APIError
	if errors.As(err, &ae) {
		if ae.Code == apitypes.CodeUnavailable || ae.Code == apitypes.CodeNotFound || ae.Code == apitypes.CodeInvalid {
			return errors.New(ae.Message)
		}
		return fmt.Errorf("agent: %s (%s)", ae.Message, ae.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("agent did not answer within %s (--timeout)", o.timeout)
	}
	return err
}

// render writes v as JSON or YAML, or calls table for the table format.
func (o *options) render(w io.Writer, v any, table func(w io.Writer) error) error {
	switch o.output {
	case outJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case outYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if err := table(tw); err != nil {
		return err
	}
	return tw.Flush()
}

// completeOutput completes -o.
func completeFixed(vals ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinOrDash(s []string, sep string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, sep)
}

func percent(f float64) string { return fmt.Sprintf("%.1f%%", f*100) }

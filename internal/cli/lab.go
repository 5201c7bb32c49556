package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/internal/lab"
)

// newLabCommand is `sigil lab`: a real multi-node Kubernetes cluster on this
// machine with Sigil installed by its Helm chart (see internal/lab).
func newLabCommand() *cobra.Command {
	var cfg lab.Config
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a real multi-node Kubernetes cluster on this machine, with Sigil installed by Helm",
		Long: `sigil lab runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler, and
per node a network namespace with its own containerd and kubelet, all on this
machine; installs Sigil with helm; and writes a kubeconfig. Addresses come
from 198.18.0.0/15 only; the root network namespace is not changed.

  sigil lab up [--nodes 2] [--routing tunnel|native]
  sigil lab demo
  sigil lab load-image IMAGE.tar
  sigil lab down`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&cfg.Name, "name", "sigil-lab", "lab name: prefixes its namespaces, cgroups and pins")
	pf.StringVar(&cfg.Dir, "dir", "", "the lab's folder: state, logs, node roots, kubeconfig (default /var/lib/NAME)")
	pf.StringVar(&cfg.Repo, "repo", "", "Sigil source tree: chart and image sources (default: found from the working directory)")
	pf.StringVar(&cfg.KubeBin, "kube-bin", "", "folder with kube-apiserver, etcd, kubelet... and helm (default: hack/k8s-binaries.sh's cache, built when missing)")

	up := &cobra.Command{
		Use:   "up",
		Short: "Bring the lab up (builds images; Kubernetes binaries are built once and cached)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			l, err := lab.Up(ctx, cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			printLabUsage(cmd, l)
			return nil
		},
	}
	up.Flags().IntVar(&cfg.Nodes, "nodes", 2, "worker nodes")
	up.Flags().StringVar(&cfg.Routing, "routing", "tunnel", "pod routing between nodes: tunnel (VXLAN) or native")
	up.Flags().BoolVar(&cfg.KubeProxy, "kube-proxy", false, "run kube-proxy (iptables) on every node instead of Sigil's eBPF service load-balancer")
	up.Flags().StringArrayVar(&cfg.HelmValues, "set", nil, "extra chart value for helm install (KEY=VALUE, repeatable)")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop everything the lab started and remove what it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return l.Down()
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the lab's nodes and processes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return l.PrintStatus(cmd.Context(), cmd.OutOrStdout())
		},
	}
	loadImage := &cobra.Command{
		Use:   "load-image IMAGE.tar...",
		Short: "Import OCI image tarballs into every node's containerd (like kind load image-archive)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return l.LoadImages(args...)
		},
	}
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Pods across the nodes, their connectivity matrix before and after policies, and the dropped flows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return l.Demo(cmd.Context(), cmd.OutOrStdout())
		},
	}
	var proxy struct{ netns, listen, target, addrFile string }
	proxyCmd := &cobra.Command{
		Use:    "proxy",
		Short:  "Forward connections from this namespace to an address in a lab namespace (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
			return lab.RunProxy(ctx, proxy.netns, proxy.listen, proxy.target, proxy.addrFile, log)
		},
	}
	proxyCmd.Flags().StringVar(&proxy.netns, "netns", "", "network namespace to dial from")
	proxyCmd.Flags().StringVar(&proxy.listen, "listen", "127.0.0.1:0", "address to listen on")
	proxyCmd.Flags().StringVar(&proxy.target, "target", "", "address to dial")
	proxyCmd.Flags().StringVar(&proxy.addrFile, "addr-file", "", "write the listen address here")
	var upgradeValues []string
	upgrade := &cobra.Command{
		Use:   "upgrade",
		Short: "helm upgrade Sigil in the lab with the lab's values plus --set ones, and wait until it is ready again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(cfg, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return l.Upgrade(cmd.Context(), upgradeValues...)
		},
	}
	upgrade.Flags().StringArrayVar(&upgradeValues, "set", nil, "chart value (KEY=VALUE, repeatable)")
	cmd.AddCommand(up, down, status, upgrade, loadImage, demo, proxyCmd)
	return cmd
}

func printLabUsage(cmd *cobra.Command, l *lab.Lab) {
	c := l.Config()
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "\nThe lab is up: %d nodes, %s routing, Sigil installed by helm in %s.\n\n", c.Nodes, c.Routing, lab.SigilNamespace)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, line := range [][2]string{
		{"export KUBECONFIG=" + c.Kubeconfig(), ""},
		{"kubectl get nodes -o wide", ""},
		{"kubectl -n " + lab.SigilNamespace + " get pods -o wide", ""},
		{"sigil lab demo", "# pods, policies, and what they changed"},
		{"sigil --node " + l.State().Nodes[0].Name + " status", "# Sigil on a node, through the API server"},
		{"sigil lab down", "# stop and remove everything"},
	} {
		fmt.Fprintf(tw, "  %s\t%s\n", line[0], line[1])
	}
	tw.Flush()
	fmt.Fprintln(w)
}

// Command sigil-operator is Sigil's cluster-wide control plane: it
// allocates security identities, publishes endpoints, hands out node pod
// CIDRs and reports policy status (see docs/controlplane.md). Several
// replicas may run; leader election picks the one that acts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/operator"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigil-operator:", err)
		os.Exit(2)
	}
	if err := run(ctrl.SetupSignalHandler(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sigil-operator:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	kubeconfig        string
	leaderElect       bool
	leaseNamespace    string
	leaseID           string
	metricsAddr       string
	probeAddr         string
	logLevel          slog.Level
	logFormat         string
	qps               float64
	burst             int
	ops               operator.Options
	leaseDuration     time.Duration
	renewDeadline     time.Duration
	retryPeriod       time.Duration
	extraNoiseLabels  []string
	clusterPoolString string
}

// parseFlags parses args; defaults suit a cluster, the lab passes its own
// pool (e.g. --cluster-pool-cidr=198.18.128.0/17).
func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("sigil-operator", flag.ContinueOnError)
	fs.SetOutput(out)
	defNS := os.Getenv("POD_NAMESPACE")
	if defNS == "" {
		defNS = "sigil-system"
	}
	var logLevel, ranges, noise string
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, or $KUBECONFIG)")
	fs.BoolVar(&c.leaderElect, "leader-elect", true, "elect a leader so that only one replica acts")
	fs.StringVar(&c.leaseNamespace, "leader-election-namespace", defNS, "namespace of the leader election Lease (default: $POD_NAMESPACE or sigil-system)")
	fs.StringVar(&c.leaseID, "leader-election-id", "sigil-operator", "name of the leader election Lease")
	fs.DurationVar(&c.leaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a lease is valid without renewal")
	fs.DurationVar(&c.renewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader retries renewing before giving up")
	fs.DurationVar(&c.retryPeriod, "leader-election-retry-period", 2*time.Second, "how often candidates try to acquire or renew")
	fs.StringVar(&c.metricsAddr, "metrics-bind-address", ":9963", "Prometheus metrics address (/metrics); 0 disables")
	fs.StringVar(&c.probeAddr, "health-probe-bind-address", ":9234", "health probe address (/healthz, /readyz); 0 disables")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or text")
	fs.Float64Var(&c.qps, "kube-api-qps", 50, "API server requests per second")
	fs.IntVar(&c.burst, "kube-api-burst", 100, "API server request burst")
	fs.StringVar(&c.ops.IPAM, "ipam", operator.IPAMClusterPool, "node pod CIDRs: cluster-pool (from --cluster-pool-cidr) or kubernetes (node.spec.podCIDRs)")
	fs.StringVar(&c.clusterPoolString, "cluster-pool-cidr", operator.DefaultClusterPool.String(), "comma-separated cluster pool CIDRs, at most one IPv4 and one IPv6")
	fs.IntVar(&c.ops.MaskSizeIPv4, "cluster-pool-mask-size", 24, "IPv4 prefix length of each node's pod CIDR")
	fs.IntVar(&c.ops.MaskSizeIPv6, "cluster-pool-ipv6-mask-size", 64, "IPv6 prefix length of each node's pod CIDR")
	fs.DurationVar(&c.ops.IdentityGCGrace, "identity-gc-grace", 5*time.Minute, "how long an identity must be unused before it is deleted")
	fs.DurationVar(&c.ops.IdentityGCInterval, "identity-gc-interval", time.Minute, "how often unused identities are looked for")
	fs.StringVar(&ranges, "identity-range", "", "identity range MIN-MAX (default 256-65535; agents must agree)")
	fs.StringVar(&noise, "identity-ignore-labels", "", "comma-separated extra pod label keys left out of security labels (a trailing / drops a prefix; agents must agree)")
	fs.IntVar(&c.ops.EndpointWorkers, "endpoint-workers", 4, "pods reconciled in parallel")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := c.logLevel.UnmarshalText([]byte(logLevel)); err != nil {
		return c, fmt.Errorf("--log-level: %w", err)
	}
	if c.logFormat != "json" && c.logFormat != "text" {
		return c, fmt.Errorf("--log-format %q: want json or text", c.logFormat)
	}
	for _, s := range strings.Split(c.clusterPoolString, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return c, fmt.Errorf("--cluster-pool-cidr: %w", err)
		}
		c.ops.ClusterPoolCIDRs = append(c.ops.ClusterPoolCIDRs, p)
	}
	if c.ops.IPAM == operator.IPAMClusterPool {
		if _, err := c.ops.Pools(); err != nil {
			return c, fmt.Errorf("--cluster-pool-cidr: %w", err)
		}
	}
	if ranges != "" {
		var lo, hi uint32
		if _, err := fmt.Sscanf(ranges, "%d-%d", &lo, &hi); err != nil {
			return c, fmt.Errorf("--identity-range %q: want MIN-MAX", ranges)
		}
		c.ops.IdentityRange.Min, c.ops.IdentityRange.Max = datapath.Identity(lo), datapath.Identity(hi)
		if lo < uint32(identityalloc.MinID) || hi < lo || hi > uint32(identity.ClusterMax) {
			return c, fmt.Errorf("--identity-range %q: want %d <= MIN <= MAX <= %d", ranges, identityalloc.MinID, identity.ClusterMax)
		}
	}
	if noise != "" {
		c.extraNoiseLabels = strings.Split(noise, ",")
	}
	f := identity.NewFilter(c.extraNoiseLabels...)
	c.ops.Filter = &f
	return c, nil
}

func restConfig(c config) (*rest.Config, error) {
	if c.kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	}
	return ctrl.GetConfig()
}

// run runs the operator until ctx ends.
func run(ctx context.Context, c config) error {
	var h slog.Handler
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, opts)
	} else {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	slog.SetDefault(slog.New(h))
	ctrl.SetLogger(logr.FromSlogHandler(h))

	rc, err := restConfig(c)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = float32(c.qps), c.burst
	rc.UserAgent = "sigil-operator"
	mgr, err := ctrl.NewManager(rc, ctrl.Options{
		Scheme:                        operator.NewScheme(),
		Metrics:                       metricsserver.Options{BindAddress: c.metricsAddr},
		HealthProbeBindAddress:        c.probeAddr,
		LeaderElection:                c.leaderElect,
		LeaderElectionID:              c.leaseID,
		LeaderElectionNamespace:       c.leaseNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &c.leaseDuration,
		RenewDeadline:                 &c.renewDeadline,
		RetryPeriod:                   &c.retryPeriod,
	})
	if err != nil {
		return err
	}
	if err := operator.Setup(mgr, c.ops); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	slog.Info("starting", "leaderElection", c.leaderElect, "leaseNamespace", c.leaseNamespace,
		"ipam", c.ops.IPAM, "clusterPool", c.clusterPoolString)
	return mgr.Start(ctx)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/k8s"
	"github.com/sigil-net/sigil/datapath"
)

// k8sFlags are the control-plane flags.
type k8sFlags struct {
	enable     string // auto, true or false
	kubeconfig string
	nodeName   string
}

// restConfig decides whether Kubernetes is on (--k8s auto: when a
// kubeconfig is given or the in-cluster environment exists) and returns
// its client config, or nil when off.
func (f k8sFlags) restConfig() (*rest.Config, error) {
	on := f.kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	if f.enable != "auto" {
		v, err := strconv.ParseBool(f.enable)
		if err != nil {
			return nil, fmt.Errorf("--k8s %q: want auto, true or false", f.enable)
		}
		on = v
	}
	if !on {
		return nil, nil
	}
	if f.nodeName == "" {
		return nil, errors.New("--node-name (or NODE_NAME) is required with Kubernetes")
	}
	if f.kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (set --kubeconfig outside a pod): %w", err)
	}
	return cfg, nil
}

// nodePodCIDR reads the node's pod CIDR from its SigilNode and remembers
// it in the state dir; when the API server does not answer in time, the
// remembered one is used (restarts must not wait on the control plane).
func nodePodCIDR(cfg *rest.Config, node, stateDir string, log *slog.Logger) (netip.Prefix, error) {
	file := filepath.Join(stateDir, "pod-cidr")
	var saved netip.Prefix
	if b, err := os.ReadFile(file); err == nil {
		saved, _ = netip.ParsePrefix(strings.TrimSpace(string(b)))
	}
	wait := 5 * time.Minute
	if saved.IsValid() {
		wait = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	p, err := k8s.NodePodCIDR(ctx, cfg, node)
	if err != nil {
		if saved.IsValid() {
			log.Warn("pod CIDR from the API server unavailable; using the last known one", "podCIDR", saved.String(), "err", err)
			return saved, nil
		}
		return netip.Prefix{}, err
	}
	if p != saved {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return netip.Prefix{}, err
		}
		if err := agent.WriteFileAtomic(file, []byte(p.String()+"\n"), 0o600); err != nil {
			return netip.Prefix{}, err
		}
	}
	return p, nil
}

// controlPlane is the policy enforcer and the Kubernetes controllers.
type controlPlane struct {
	enf  *agent.Enforcer
	ctrl *k8s.Controller
}

// newControlPlane builds the enforcer on the BPF datapath and the
// controllers, and plugs their hooks into the manager's config.
func newControlPlane(cfg *rest.Config, node string, dp agent.Datapath, mode datapath.EnforcementMode,
	mcfg *agent.Config, overlay *agent.Overlay, prefilter *agent.NodePrefilter, log *slog.Logger) (*controlPlane, error) {
	pdp, ok := dp.(agent.PolicyDatapath)
	if !ok {
		return nil, errors.New("Kubernetes policy needs --datapath=bpf")
	}
	enf, err := agent.NewEnforcer(agent.EnforcerConfig{Datapath: pdp, Enforcement: mode, Logger: log})
	if err != nil {
		return nil, err
	}
	ctrl, err := k8s.New(k8s.Config{RestConfig: cfg, NodeName: node, Enforcer: enf, Logger: log,
		Overlay: overlay, Prefilter: prefilter, AllocateIdentities: true})
	if err != nil {
		return nil, err
	}
	mcfg.Datapath = enf.Datapath()
	mcfg.Labels = ctrl.LabelSource()
	mcfg.Identities = ctrl.IdentityAllocator()
	mcfg.PolicyFlags = enf.PolicyFlags
	return &controlPlane{enf: enf, ctrl: ctrl}, nil
}

// start runs after the manager restored its endpoints: the enforcer adopts
// them, the API serves the policy view and health, and the controllers
// start (the maps are left as they are until the informers have synced).
func (cp *controlPlane) start(ctx context.Context, m *agent.Manager, srv *agent.Server) {
	cp.enf.Attach(m)
	srv.SetPolicyView(cp.enf.PolicyView())
	srv.SetK8sHealth(func() apitypes.K8sHealth {
		h := cp.ctrl.Health()
		return apitypes.K8sHealth{Connected: h.Connected, Synced: h.Synced, LastSync: h.LastSync, Message: h.Message}
	})
	cp.ctrl.Start(ctx)
}

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/k8s"
	"github.com/sigil-net/sigil/datapath"
)

// serviceFlags are the service load-balancing flags.
type serviceFlags struct {
	kubeProxyReplacement bool
	cgroup               string
	serviceCIDRs         string
}

func (f *serviceFlags) register() {
	flag.BoolVar(&f.kubeProxyReplacement, "kube-proxy-replacement", true,
		"load-balance ClusterIP services with the socket-level BPF load-balancer (needs --datapath=bpf and Kubernetes); false: kube-proxy handles services")
	flag.StringVar(&f.cgroup, "cgroup-root", datapath.DefaultCgroup2,
		"cgroup v2 directory the service load-balancer attaches to (its root: every process of the node)")
	flag.StringVar(&f.serviceCIDRs, "service-cidr", "",
		"comma-separated IPv4 service (ClusterIP) CIDRs, at most 4; with --kube-proxy-replacement=false, pods' egress to them is judged after kube-proxy's DNAT, on the backend (empty: judged on the ClusterIP)")
}

// applyRuntime sets the service bits of the datapath's runtime
// configuration: deferral of the service CIDRs to the host stack's DNAT
// (kube-proxy mode with --service-cidr), and tc translation when Sigil
// load-balances (lbOn). It reports whether deferral is on.
func (f serviceFlags) applyRuntime(rc *datapath.RuntimeConfig, lbOn bool) (bool, error) {
	cidrs, err := parsePrefixes("service-cidr", f.serviceCIDRs)
	if err != nil {
		return false, err
	}
	for _, p := range cidrs {
		if !p.Addr().Is4() || p.Bits() == 0 {
			return false, fmt.Errorf("--service-cidr %s: want IPv4 CIDRs (not /0)", p)
		}
	}
	if len(cidrs) > datapath.MaxServiceCIDRs {
		return false, fmt.Errorf("--service-cidr: %d CIDRs, at most %d", len(cidrs), datapath.MaxServiceCIDRs)
	}
	rc.Flags &^= datapath.ConfigServiceDefer | datapath.ConfigLBTC
	rc.ServiceCIDRs = nil
	if f.kubeProxyReplacement {
		if lbOn {
			rc.Flags |= datapath.ConfigLBTC
		}
		return false, nil
	}
	if len(cidrs) == 0 {
		return false, nil
	}
	rc.Flags |= datapath.ConfigServiceDefer
	rc.ServiceCIDRs = cidrs
	return true, nil
}

// localIngress attaches, with deferral on, the cgroup program that judges
// pods' service traffic the host stack translated to the node's own
// addresses (delivered locally, past every tc hook); with deferral off it
// detaches what a previous run attached.
func (f serviceFlags) localIngress(d *datapath.Datapath, deferred bool, log *slog.Logger) error {
	if !deferred {
		return d.DetachLocalIngress()
	}
	if err := d.AttachLocalIngress(f.cgroup); err != nil {
		return fmt.Errorf("service egress deferral: attach to %s: %w", f.cgroup, err)
	}
	log.Info("service egress deferred to after kube-proxy's DNAT", "serviceCIDRs", f.serviceCIDRs, "cgroup", f.cgroup)
	return nil
}

// services is the running service load-balancer, if any.
type services struct {
	lb   *datapath.LB
	ctrl *k8s.ServiceController
}

// startServices loads and attaches the socket load-balancer and starts the
// service controller on the control plane's shared informer cache. With
// --kube-proxy-replacement=false it leaves services to kube-proxy (and
// detaches the programs a previous run may have left).
func startServices(ctx context.Context, f serviceFlags, dpMode, pinDir string, cp *controlPlane, srv *agent.Server,
	log *slog.Logger) (*services, error) {
	if !f.kubeProxyReplacement {
		if _, err := os.Stat(filepath.Join(pinDir, "links", "cgroup-sock4_connect")); err == nil {
			if lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: pinDir, Cgroup: f.cgroup, Logger: log}); err == nil {
				if err := lb.Detach(); err != nil {
					log.Warn("detaching the previous run's service load-balancer", "err", err)
				}
				lb.Close()
			}
		}
		log.Info("service load-balancing off (--kube-proxy-replacement=false): kube-proxy handles services")
		return nil, nil
	}
	if dpMode != "bpf" || cp == nil {
		log.Info("service load-balancing off: it needs --datapath=bpf and Kubernetes")
		return nil, nil
	}
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: pinDir, Cgroup: f.cgroup, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := lb.Attach(); err != nil {
		lb.Close()
		return nil, err
	}
	ctrl, err := k8s.NewServiceController(k8s.ServiceConfig{Cache: cp.ctrl.Cache(), LB: lb, Logger: log})
	if err != nil {
		lb.Close()
		return nil, err
	}
	srv.SetServices(lb)
	ctrl.Start(ctx)
	log.Info("service load-balancing on (kube-proxy replacement)", "cgroup", f.cgroup)
	return &services{lb: lb, ctrl: ctrl}, nil
}

// stop waits for the controller (its context ended) and releases the
// load-balancer; the programs stay attached and keep translating.
func (s *services) stop() {
	if s == nil {
		return
	}
	s.ctrl.Wait()
	s.lb.Close()
}

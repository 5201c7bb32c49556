package main

import (
	"context"
	"flag"
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
}

func (f *serviceFlags) register() {
	flag.BoolVar(&f.kubeProxyReplacement, "kube-proxy-replacement", true,
		"load-balance ClusterIP services with the socket-level BPF load-balancer (needs --datapath=bpf and Kubernetes); false: kube-proxy handles services")
	flag.StringVar(&f.cgroup, "cgroup-root", datapath.DefaultCgroup2,
		"cgroup v2 directory the service load-balancer attaches to (its root: every process of the node)")
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

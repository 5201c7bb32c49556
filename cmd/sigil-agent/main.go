// Command sigil-agent is Sigil's node agent: it loads the datapath, manages
// the node's endpoints, serves the local API for sigil-cni and installs the
// CNI plugin and its configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/flows"
	"github.com/sigil-net/sigil/agent/metrics"
	"github.com/sigil-net/sigil/datapath"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sigil-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		pinDir      = flag.String("pin-dir", "/sys/fs/bpf/sigil", "bpffs directory for pinned maps and links")
		stateDir    = flag.String("state-dir", "/var/lib/sigil", "state directory (IPAM store, endpoints, identities)")
		socket      = flag.String("socket", apitypes.DefaultSocket, "local API unix socket")
		podCIDR     = flag.String("pod-cidr", "", "this node's IPv4 pod CIDR (default with Kubernetes: from its SigilNode; required without)")
		gateway     = flag.String("gateway", "", "pod gateway address (default: first address of the pod CIDR)")
		confDir     = flag.String("cni-conf-dir", "/etc/cni/net.d", "where to write the CNI conflist (empty: do not write)")
		confName    = flag.String("cni-conf-name", "05-sigil.conflist", "CNI conflist file name")
		binDir      = flag.String("cni-bin-dir", "/opt/cni/bin", "where to install sigil-cni (empty: do not install)")
		cniBinary   = flag.String("cni-binary", "", "the sigil-cni binary to install (default: sigil-cni next to this executable)")
		mtu         = flag.Int("mtu", 1500, "underlay (node interface) MTU; pods get it less the VXLAN overhead in tunnel mode (written to the CNI config)")
		chainPM     = flag.Bool("cni-chain-portmap", false, "append the portmap plugin to the conflist")
		cniVersion  = flag.String("cni-version", agent.DefaultCNIVersion, "cniVersion of the conflist: the newest the node's container runtime understands (containerd 1.6/1.7: up to 1.0.0; 1.1.0 adds STATUS and GC)")
		dpMode      = flag.String("datapath", "bpf", "datapath: bpf, or none (in-memory, for tests without BPF)")
		attachMode  = flag.String("attach-mode", "auto", "program attachment: auto, tcx or tc")
		enforcement = flag.String("enforcement", "default", "policy enforcement mode: default, always or never")
		policyEnf   = flag.String("policy-enforcement", "", "policy enforcement mode: default, always or never (overrides --enforcement)")
		kf          = k8sFlags{}
		of          = overlayFlags{}
		sf          = serviceFlags{}
		labelsDir   = flag.String("labels-dir", "", "optional directory of <namespace>/<pod>.json label files")
		ipForward   = flag.Bool("enable-ipv4-forwarding", false, "set net.ipv4.ip_forward=1 in the agent's network namespace")
		logLevel    = flag.String("log-level", "info", "debug, info, warn or error")
		metricsAddr = flag.String("metrics-address", metrics.DefaultAddress, "address to serve Prometheus metrics on (/metrics); empty disables")
		flowBuffer  = flag.Int("flow-buffer", flows.DefaultCapacity, "flows kept in memory for sigil observe --last")
	)
	flag.StringVar(&kf.enable, "k8s", "auto", "watch Kubernetes for pods and policies: auto (when --kubeconfig or the in-cluster environment is set), true or false")
	flag.StringVar(&kf.kubeconfig, "kubeconfig", "", "kubeconfig file (empty: in-cluster config)")
	flag.StringVar(&kf.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (required with Kubernetes; default $NODE_NAME)")
	of.register()
	sf.register()
	flag.Parse()
	if *policyEnf != "" {
		*enforcement = *policyEnf
	}

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	if of.cleanup {
		return cleanupNode(*pinDir, *attachMode, "", of.tunnelDevice, log)
	}
	ovCfg, err := of.overlayConfig(*mtu, log)
	if err != nil {
		return err
	}
	pfCfg, pfOn, err := of.prefilterConfig(*pinDir, log)
	if err != nil {
		return err
	}

	restCfg, err := kf.restConfig()
	if err != nil {
		return err
	}
	if *podCIDR == "" && restCfg != nil {
		p, err := nodePodCIDR(restCfg, kf.nodeName, *stateDir, log)
		if err != nil {
			return err
		}
		*podCIDR = p.String()
	}
	if *podCIDR == "" {
		return fmt.Errorf("--pod-cidr is required")
	}
	cidr, err := netip.ParsePrefix(*podCIDR)
	if err != nil || !cidr.Addr().Is4() {
		return fmt.Errorf("--pod-cidr %q: want an IPv4 CIDR such as 198.18.1.0/24", *podCIDR)
	}
	var gw netip.Addr
	if *gateway != "" {
		if gw, err = netip.ParseAddr(*gateway); err != nil {
			return fmt.Errorf("--gateway: %w", err)
		}
	}
	if *ipForward {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable ip_forward: %w", err)
		}
	}

	var dp agent.Datapath
	var bpfDP *datapath.Datapath
	var overlay *agent.Overlay
	var prefilter *agent.NodePrefilter
	switch *dpMode {
	case "bpf":
		mode, err := datapath.ParseEnforcementMode(*enforcement)
		if err != nil {
			return err
		}
		d, err := datapath.Load(datapath.Config{PinDir: *pinDir, AttachMode: datapath.AttachMode(*attachMode), Logger: log})
		if err != nil {
			return err
		}
		rc := datapath.RuntimeConfig{Enforcement: mode, Flags: datapath.ConfigAllowHostIngress | datapath.ConfigTraceNewFlows}
		if old, err := d.Config.Get(); err == nil {
			// The tunnel settings (and native routing's fast path) of the
			// previous run stay until NewOverlay sets this run's: no window
			// in which tunnel mode, or the fast path, is off.
			rc.Flags |= old.Flags & (datapath.ConfigTunnel | datapath.ConfigNativeFast)
			rc.TunnelIfIndex = old.TunnelIfIndex
		}
		deferSvc, err := sf.applyRuntime(&rc, restCfg != nil)
		if err != nil {
			d.Close()
			return err
		}
		ovCfg.DeferServices = deferSvc
		if err := d.SetRuntimeConfig(rc); err != nil {
			d.Close()
			return err
		}
		if err := sf.localIngress(d, deferSvc, log); err != nil {
			d.Close()
			return err
		}
		// Other nodes are known from their SigilNodes only: without
		// Kubernetes the node stands alone (no tunnel, routes or masquerade).
		if restCfg != nil {
			if overlay, err = agent.NewOverlay(d, ovCfg); err != nil {
				d.Close()
				return err
			}
		}
		if pfOn {
			if prefilter, err = agent.NewPrefilter(pfCfg); err != nil {
				d.Close()
				return err
			}
			defer prefilter.Close()
		}
		dp = agent.NewBPFDatapath(d)
		bpfDP = d
	case "none":
		if pfOn {
			return errors.New("--prefilter-devices needs --datapath=bpf")
		}
		dp = agent.NewMemDatapath()
	default:
		return fmt.Errorf("--datapath %q: want bpf or none", *dpMode)
	}
	defer dp.Close()

	cfg := agent.Config{StateDir: *stateDir, PodCIDR: cidr, Gateway: gw, Datapath: dp,
		Labels: agent.RequestLabels{Dir: *labelsDir}, Logger: log}
	if os.Getenv("SIGIL_AGENT_FAULT") == "crash-after-ipam" {
		// Test-only fault injection: die after the address is committed and
		// before any map is written.
		cfg.AfterIPAM = func(*apitypes.Endpoint) {
			log.Warn("fault injection: killing the agent after IPAM")
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	var cp *controlPlane
	if restCfg != nil {
		mode, err := datapath.ParseEnforcementMode(*enforcement)
		if err != nil {
			return err
		}
		if cp, err = newControlPlane(restCfg, kf.nodeName, dp, mode, &cfg, overlay, prefilter, log); err != nil {
			return err
		}
	}
	m, err := agent.NewManager(cfg)
	if err != nil {
		return err
	}
	defer m.Close()

	ln, err := agent.Listen(*socket)
	if err != nil {
		return err
	}
	srv := agent.NewServer(m, log)
	obsCtx, stopObs := context.WithCancel(context.Background())
	defer stopObs()
	if err := startObservability(obsCtx, srv, m, bpfDP, *dpMode, *pinDir, *flowBuffer, *metricsAddr, log); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	// Readiness follows restore; the API answers not_ready until then.
	start := time.Now()
	if err := m.Restore(); err != nil {
		return fmt.Errorf("restore endpoints: %w", err)
	}
	log.Info("restored", "took", time.Since(start).String())
	if cp != nil {
		cp.start(obsCtx, m, srv)
	}
	svcs, err := startServices(obsCtx, sf, *dpMode, *pinDir, cp, srv, log)
	if err != nil {
		return err
	}

	src := *cniBinary
	if src == "" && *binDir != "" {
		if exe, err := os.Executable(); err == nil {
			src = filepath.Join(filepath.Dir(exe), "sigil-cni")
		}
	}
	inst := agent.CNIInstall{ConfDir: *confDir, ConfName: *confName, BinDir: *binDir, BinarySrc: src,
		Socket: *socket, MTU: *mtu, ChainPortmap: *chainPM, CNIVersion: *cniVersion}
	if overlay != nil {
		inst.MTU = agent.PodMTU(ovCfg.Mode, *mtu)
	}
	if err := inst.Install(); err != nil {
		return err
	}
	log.Info("sigil-agent ready", "socket", *socket, "podCIDR", cidr.String(), "datapath", *dpMode,
		"cniConf", filepath.Join(*confDir, *confName))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Info("shutting down; endpoints and datapath stay in place", "signal", s.String())
	case err := <-errc:
		return err
	}
	if cp != nil {
		stopObs() // also stops the controllers
		cp.ctrl.Wait()
		svcs.stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	os.Remove(*socket)
	return nil
}

// startObservability starts the flow pipeline on the datapath's event ring
// buffer, serves flows and status on the API, and Prometheus metrics on
// metricsAddr, until ctx is done.
func startObservability(ctx context.Context, srv *agent.Server, m *agent.Manager, d *datapath.Datapath,
	dpMode, pinDir string, flowBuffer int, metricsAddr string, log *slog.Logger) error {
	obs := agent.Observability{DatapathMode: dpMode, PinDir: pinDir, Started: time.Now()}
	var pipe *flows.Pipeline
	if d != nil {
		obs.Maps, obs.DatapathMode = d.Maps, string(d.Mode())
		rd, err := d.NewEventReader()
		if err != nil {
			return err
		}
		pipe = flows.New(flows.Config{Capacity: flowBuffer, Resolver: agent.NewFlowResolver(m, srv.PolicyView),
			Lost: d.Metrics.Events, Logger: log})
		go pipe.Run(ctx, rd)
		obs.Flows = pipe
	}
	srv.SetObservability(obs)
	if metricsAddr == "" {
		return nil
	}
	reg := metrics.NewRegistry(metrics.Sources{Maps: obs.Maps, Flows: pipe, Logger: log,
		Endpoints: func() int { return len(m.List()) }, Identities: srv.IdentityCount})
	addr, err := metrics.Serve(ctx, metricsAddr, reg, log)
	if err != nil {
		return fmt.Errorf("--metrics-address %s: %w", metricsAddr, err)
	}
	log.Info("serving metrics", "address", addr.String())
	return nil
}

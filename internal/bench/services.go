package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/agent/k8s"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/internal/kubeproxy"
	"github.com/sigil-net/sigil/internal/testnet"
)

// ServicesOptions configures the services benchmark.
type ServicesOptions struct {
	Duration   time.Duration // of each traffic figure
	CRRClients int
	Sizes      []int // Services defined in the cluster
	Workers    int   // concurrent API requests while creating Services
	// Rounds: each size measures both load-balancers this many times,
	// alternating, and keeps each one's best CRR and RR (noise on a shared
	// machine only ever slows a figure down).
	Rounds   int
	Progress io.Writer
}

// DefaultServicesOptions are the defaults of `make bench-services`.
func DefaultServicesOptions() ServicesOptions {
	return ServicesOptions{Duration: 5 * time.Second, CRRClients: 2, Sizes: []int{1, 1000, 10000}, Workers: 32, Rounds: 2}
}

// ServicesFigures are one load-balancer's figures at one size.
type ServicesFigures struct {
	CRR, RR Rate
	// Ready is how long after the load-balancer started its datapath held
	// every Service of the size (the first round's).
	Ready time.Duration
	// kube-proxy only: the mean position of the measured Service's CRR
	// port rules in KUBE-SERVICES (averaged over the rounds), and how many
	// rules it holds.
	RulePos   float64
	RuleTotal int
}

// ServicesRow is one size: both load-balancers.
type ServicesRow struct {
	Services  int
	Created   time.Duration // creating the Services (and slices) added for this size
	Sigil     ServicesFigures
	KubeProxy ServicesFigures
}

// ServicesReport is the outcome of RunServices.
type ServicesReport struct {
	Machine   Machine
	Started   time.Time
	Took      time.Duration
	Options   ServicesOptions
	KubeProxy string // kube-proxy's version line
	IPTables  string // iptables --version
	Rows      []ServicesRow
}

// Addresses of the benchmark (198.18.0.0/15 only): the node's gateway, the
// client and server pods, and the API server's service range: room for
// 16,382 ClusterIPs, apart from the ranges other load-balancers on this
// machine use (envtest's 10.0.0.0/24, the lab's 198.19.240.0/20), since
// the socket load-balancer on the cgroup root translates every process's
// connect().
var (
	svcGateway   = netip.MustParseAddr("198.18.170.1")
	svcClientIP  = netip.MustParseAddr("198.18.170.10")
	svcServerIP  = netip.MustParseAddr("198.18.170.11")
	svcRange     = "198.19.128.0/18"
	svcPodRange  = "198.18.170.0/24"
	svcNamespace = "sigil-bench"
	svcNodeName  = "sigil-bench-node"
)

// RunServices measures, in one run, new connections per second
// (connect/request/close) and request/response transactions per second from
// a pod to a ClusterIP, with 1, 1,000 and 10,000 Services defined, for
// Sigil's socket load-balancer and for kube-proxy in iptables mode. Both run
// against a real API server (envtest's kube-apiserver and etcd) holding
// real Services and EndpointSlices.
func RunServices(ctx context.Context, o ServicesOptions) (rep *ServicesReport, err error) {
	if err := checkHost("ip", "nsenter", "iptables", "iptables-restore"); err != nil {
		return nil, err
	}
	if len(o.Sizes) == 0 || o.Duration <= 0 || o.CRRClients < 1 || o.Workers < 1 || o.Rounds < 1 {
		return nil, errors.New("services: needs sizes, a duration, clients, workers and rounds")
	}
	for i, n := range o.Sizes {
		if n < 1 || (i > 0 && n <= o.Sizes[i-1]) {
			return nil, fmt.Errorf("services: sizes must be increasing and positive, got %v", o.Sizes)
		}
	}
	rep = &ServicesReport{Machine: machine(), Started: time.Now(), Options: o}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	cl := NewCleanup(o.Progress)
	defer func() {
		if cerr := cl.Run(); cerr != nil && err == nil {
			err = fmt.Errorf("cleanup: %w", cerr)
		}
	}()

	root, err := k8stest.RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := k8stest.AssetsDir(root)
	if err != nil {
		return nil, err
	}
	kpBin, err := kubeproxy.Find(assets)
	if err != nil {
		return nil, err
	}
	if out, err := runCmd(kpBin, "--version"); err == nil {
		rep.KubeProxy = "kube-proxy " + strings.TrimPrefix(strings.TrimSpace(out), "Kubernetes ")
	}
	if out, err := runCmd("iptables", "--version"); err == nil {
		rep.IPTables = strings.TrimSpace(out)
	}

	progress("starting the API server (service range %s) ...", svcRange)
	env, err := k8stest.StartServer(k8stest.Options{ServiceCIDR: svcRange})
	if err != nil {
		return nil, err
	}
	cl.Add("stop the API server", env.Stop)
	tmp, err := os.MkdirTemp("", "sigil-bench-services-")
	if err != nil {
		return nil, err
	}
	cl.Add("remove "+tmp, func() error { return os.RemoveAll(tmp) })
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return nil, err
	}
	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNamespace}}); err != nil {
		return nil, err
	}
	// kube-proxy reads its node's addresses from the Node object.
	if err := c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: svcNodeName},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: svcGateway.String()}}}}); err != nil {
		return nil, err
	}

	ports := append([]uint16{PortRR}, CRRPortList()...)
	var frontends []string // "ip:port/tcp" of every Service port defined so far
	var measured netip.Addr
	defined := 0
	for _, size := range o.Sizes {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		row := ServicesRow{Services: size}
		began := time.Now()
		progress("%d Services: creating %d ...", size, size-defined)
		fs, err := createServices(ctx, c, defined, size, ports, o.Workers)
		if err != nil {
			return rep, err
		}
		if defined == 0 {
			measured = netip.MustParseAddr(strings.Split(fs[0], ":")[0])
		}
		frontends = append(frontends, fs...)
		defined = size
		row.Created = time.Since(began)
		progress("  created in %s", row.Created.Round(time.Millisecond))

		var crrFrontends []string
		for _, p := range CRRPortList() {
			crrFrontends = append(crrFrontends, fmt.Sprintf("%s:%d/tcp", measured, p))
		}
		lbs := []struct {
			name string
			run  func(context.Context, *Cleanup, *testnet.Node, *ServicesFigures) error
			fig  *ServicesFigures
		}{
			{"sigil socket LB", func(ctx context.Context, cl *Cleanup, n *testnet.Node, f *ServicesFigures) (err error) {
				f.Ready, err = startSigilLB(ctx, cl, env, frontends)
				return err
			}, &row.Sigil},
			{"kube-proxy iptables", func(ctx context.Context, cl *Cleanup, n *testnet.Node, f *ServicesFigures) (err error) {
				if f.Ready, err = startKubeProxy(ctx, cl, env, kubeconfig, kpBin, n, frontends); err != nil {
					return err
				}
				pos, total, err := kubeproxy.Positions(n.NS.Path, crrFrontends)
				if err != nil {
					return err
				}
				sum := 0
				for _, p := range pos {
					sum += p
				}
				f.RulePos, f.RuleTotal = float64(sum)/float64(len(pos)), total
				return nil
			}, &row.KubeProxy},
		}
		for round := 0; round < o.Rounds; round++ {
			for _, lb := range lbs {
				progress("  %s, round %d of %d ...", lb.name, round+1, o.Rounds)
				f, err := func() (f ServicesFigures, err error) {
					lcl := NewCleanup(o.Progress)
					defer func() {
						if cerr := lcl.Run(); cerr != nil && err == nil {
							err = fmt.Errorf("cleanup: %w", cerr)
						}
					}()
					node, err := svcNode(lcl)
					if err != nil {
						return f, err
					}
					if err := lb.run(ctx, lcl, node, &f); err != nil {
						return f, err
					}
					srv, err := StartEchoServer(node.Pods[1].NS, svcServerIP, ports)
					if err != nil {
						return f, err
					}
					lcl.Add("stop the echo server", srv.Close)
					client := node.Pods[0].NS
					if got, err := Probe(client, netip.AddrPortFrom(measured, PortRR), 5*time.Second); err != nil || got != "connected" {
						return f, fmt.Errorf("no connection to the ClusterIP %s before measuring: %s %v", measured, got, err)
					}
					if f.CRR, err = RunCRR(ctx, client, measured, CRRPortList(), o.CRRClients, rrSize, o.Duration); err != nil {
						return f, err
					}
					f.RR, err = RunRR(ctx, client, netip.AddrPortFrom(measured, PortRR), rrSize, o.Duration)
					return f, err
				}()
				if err != nil {
					return rep, fmt.Errorf("%d Services, %s: %w", size, lb.name, err)
				}
				progress("    ready after %s; CRR %.0f/s, RR %.0f/s", f.Ready.Round(time.Millisecond), f.CRR.PerSec(), f.RR.PerSec())
				if f.RuleTotal > 0 {
					progress("    the measured Service's CRR rules: mean position %.0f of %d in KUBE-SERVICES", f.RulePos, f.RuleTotal)
				}
				mergeBest(lb.fig, f, round)
			}
		}
		rep.Rows = append(rep.Rows, row)
	}
	rep.Took = time.Since(rep.Started)
	return rep, nil
}

// mergeBest folds round's figures f into best: the best CRR and RR, the
// first round's readiness, the mean rule position.
func mergeBest(best *ServicesFigures, f ServicesFigures, round int) {
	if round == 0 {
		*best = f
		return
	}
	if f.CRR.PerSec() > best.CRR.PerSec() {
		best.CRR = f.CRR
	}
	if f.RR.PerSec() > best.RR.PerSec() {
		best.RR = f.RR
	}
	best.RulePos = (best.RulePos*float64(round) + f.RulePos) / float64(round+1)
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// svcNode is a fresh node namespace with a client and a server pod, wired
// as sigil-cni wires them and without per-endpoint programs, so both
// load-balancers are measured on the same plain pod path.
func svcNode(cl *Cleanup) (*testnet.Node, error) {
	n, err := testnet.CreateNode(svcGateway)
	if err != nil {
		return nil, err
	}
	cl.Add("delete node "+n.NS.Name, n.Delete)
	for i, ip := range []netip.Addr{svcClientIP, svcServerIP} {
		if _, err := n.AddPod(ip, fmt.Sprintf("lxc%d", i)); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// createServices creates Services from..to-1 with their EndpointSlices
// (the server pod), with workers concurrent requests, and returns their
// frontends. Service 0 is the measured one, with a port per benchmark port;
// the others have one port (80, to the server's 8080, where nothing
// listens: they are only defined).
func createServices(ctx context.Context, c client.Client, from, to int, ports []uint16, workers int) ([]string, error) {
	fs := make([][]string, to-from)
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= to || ctx.Err() != nil {
					return
				}
				f, err := createService(ctx, c, i, ports)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				fs[i-from] = f
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []string
	for _, f := range fs {
		out = append(out, f...)
	}
	return out, nil
}

func createService(ctx context.Context, c client.Client, i int, ports []uint16) ([]string, error) {
	name := fmt.Sprintf("bench-%05d", i)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: svcNamespace, Name: name}}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: svcNamespace, Name: name + "-bench",
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "sigil-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{svcServerIP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	add := func(port, target uint16) {
		pn := fmt.Sprintf("p%d", port)
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: pn, Port: int32(port), Protocol: corev1.ProtocolTCP,
			TargetPort: intstr.FromInt32(int32(target))})
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(pn), Port: ptr.To(int32(target)),
			Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	if i == 0 {
		for _, p := range ports {
			add(p, p)
		}
	} else {
		add(80, 8080)
	}
	if err := createRetry(ctx, c, svc); err != nil {
		return nil, err
	}
	if err := createRetry(ctx, c, slice); err != nil {
		return nil, err
	}
	var out []string
	for _, p := range svc.Spec.Ports {
		out = append(out, fmt.Sprintf("%s:%d/tcp", svc.Spec.ClusterIP, p.Port))
	}
	return out, nil
}

// createRetry creates o, retrying a few times on errors a busy API server
// gives (timeouts, throttling).
func createRetry(ctx context.Context, c client.Client, o client.Object) error {
	var err error
	for try := 0; try < 5; try++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = c.Create(cctx, o)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
	}
	return fmt.Errorf("create %s: %w", o.GetName(), err)
}

// apiForward makes the API server reachable from ns at its own address.
func apiForward(cl *Cleanup, env *k8stest.Env, ns *testnet.NS) error {
	u, err := url.Parse(env.Config.Host)
	if err != nil {
		return err
	}
	f, err := ns.Forward(u.Host, u.Host)
	if err != nil {
		return err
	}
	cl.Add("stop the API forwarder", f.Close)
	return nil
}

// startSigilLB loads and attaches Sigil's socket load-balancer and runs the
// agent's service controller (agent/k8s, as cmd/sigil-agent does) against
// the API server, until the maps hold every frontend.
func startSigilLB(ctx context.Context, cl *Cleanup, env *k8stest.Env, want []string) (time.Duration, error) {
	start := time.Now()
	pinDir := filepath.Join(datapathtest.BPFFSRoot, "sigil-bench-"+randHex())
	cl.Add("unpin "+pinDir, func() error { return datapath.Unpin(pinDir) })
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: pinDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return 0, err
	}
	cl.Add("close the load-balancer", lb.Close)
	if err := lb.Attach(); err != nil {
		return 0, err
	}
	cl.Add("detach the load-balancer", lb.Detach)
	// The controller's own logs at warning level and above only.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sc, err := k8s.NewServiceController(k8s.ServiceConfig{RestConfig: env.Config, LB: lb, Logger: log})
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithCancel(ctx)
	sc.Start(cctx)
	cl.Add("stop the service controller", func() error { cancel(); sc.Wait(); return nil })
	err = waitFrontends(ctx, 5*time.Minute, want, func() ([]string, error) {
		entries, err := lb.List()
		var have []string
		for _, e := range entries {
			if len(e.Backends) > 0 {
				have = append(have, fmt.Sprintf("%s:%d/%s", e.Frontend.Address, e.Frontend.Port, strings.ToLower(datapath.ProtoName(e.Frontend.Proto))))
			}
		}
		return have, err
	})
	return time.Since(start), err
}

// startKubeProxy runs kube-proxy (iptables mode) in the node namespace
// until its rules hold every frontend.
func startKubeProxy(ctx context.Context, cl *Cleanup, env *k8stest.Env, kubeconfig, bin string, n *testnet.Node, want []string) (time.Duration, error) {
	start := time.Now()
	if err := apiForward(cl, env, n.NS); err != nil {
		return 0, err
	}
	log, err := os.CreateTemp("", "sigil-bench-kube-proxy-*.log")
	if err != nil {
		return 0, err
	}
	cl.Add("remove "+log.Name(), func() error { log.Close(); return os.Remove(log.Name()) })
	kp, err := kubeproxy.Start(kubeproxy.Config{Binary: bin, NetNS: n.NS.Path, Kubeconfig: kubeconfig,
		NodeName: svcNodeName, ClusterCIDR: svcPodRange, Log: log})
	if err != nil {
		return 0, err
	}
	cl.Add("stop kube-proxy", kp.Stop)
	if err := kp.WaitHealthy(ctx, 5*time.Minute); err != nil {
		return 0, err
	}
	err = waitFrontends(ctx, 5*time.Minute, want, func() ([]string, error) { return kubeproxy.Frontends(n.NS.Path) })
	return time.Since(start), err
}

// waitFrontends polls have until it lists every frontend of want.
func waitFrontends(ctx context.Context, timeout time.Duration, want []string, have func() ([]string, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := have()
		missing := len(want)
		if err == nil {
			set := make(map[string]bool, len(got))
			for _, f := range got {
				set[f] = true
			}
			missing = 0
			for _, f := range want {
				if !set[f] {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the datapath lacks %d of %d frontends after %v (last error: %v)", missing, len(want), timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WriteText prints the report (as its markdown, which reads as text).
func (r *ServicesReport) WriteText(w io.Writer) error {
	_, err := io.WriteString(w, r.Markdown("sigil-bench services"))
	return err
}

// Markdown renders the report as the "Services" section; command is how
// it was run.
func (r *ServicesReport) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Services: socket load-balancer vs kube-proxy\n\n`%s`\n\n", command)
	m := r.Machine
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), Linux %s, load average %s at start, %s; shared with other builds, so absolute figures are noisy: compare the ratios within one run\n",
		m.CPUs, m.CPUModel, m.Kernel, m.LoadAvg, m.GoVersion)
	fmt.Fprintf(&b, "- run: %s, %v per traffic figure, best of %d alternating rounds, took %s; %s, %s\n\n",
		r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Options.Duration, r.Options.Rounds, r.Took.Round(time.Second), r.KubeProxy, r.IPTables)
	b.WriteString("| Services defined | Sigil CRR conn/s | kube-proxy CRR conn/s | CRR Sigil/kube-proxy | Sigil RR trans/s | kube-proxy RR trans/s | RR Sigil/kube-proxy | ready after: Sigil / kube-proxy | kube-proxy rules walked |\n|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, row := range r.Rows {
		s, k := row.Sigil, row.KubeProxy
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s of %s |\n", groupInt(int64(row.Services)),
			groupInt(int64(s.CRR.PerSec())), groupInt(int64(k.CRR.PerSec())), fmtRatio(ratio(s.CRR.PerSec(), k.CRR.PerSec())),
			groupInt(int64(s.RR.PerSec())), groupInt(int64(k.RR.PerSec())), fmtRatio(ratio(s.RR.PerSec(), k.RR.PerSec())),
			s.Ready.Round(100*time.Millisecond), k.Ready.Round(100*time.Millisecond),
			groupInt(int64(k.RulePos+0.5)), groupInt(int64(k.RuleTotal)))
	}
	var created []string
	for _, row := range r.Rows {
		created = append(created, fmt.Sprintf("%s in %s", groupInt(int64(row.Services)), row.Created.Round(100*time.Millisecond)))
	}
	fmt.Fprintf(&b, "\nA pod connects to a ClusterIP whose one backend is another pod on the same node. CRR: %d client threads each "+
		"connect, send 1 byte, read 1 byte, close (netperf TCP_CRR), connections/s; RR: one connection, 1-byte request and "+
		"response in lock step (TCP_RR), transactions/s. Each size measures Sigil, then kube-proxy, %d times over (each time "+
		"from a fresh start of the load-balancer) and keeps each one's best figure. Ratios are Sigil over kube-proxy (above 1: "+
		"Sigil is faster).\n\n", r.Options.CRRClients, r.Options.Rounds)
	fmt.Fprintf(&b, "Setup: a real API server (envtest's kube-apiserver and etcd, service range %s) holds N Services, each with an "+
		"EndpointSlice written by the benchmark as the EndpointSlice controller would (no kube-controller-manager runs): the "+
		"measured Service has a port per benchmark port (%d), the N−1 others one TCP port each. They are created with %d "+
		"concurrent requests and kept from one size to the next (created: %s). Each figure gets a fresh node namespace with a "+
		"client and a server pod wired as sigil-cni wires them but without Sigil's per-endpoint programs, so only the "+
		"service translation differs. Sigil: the socket load-balancer (datapath.LB) attached to the cgroup v2 root and the "+
		"agent's service controller (agent/k8s.ServiceController, as sigil-agent runs it) against the API server; it "+
		"translates connect() to the backend, so packets carry the backend's address and the node has no NAT rules. "+
		"kube-proxy: the real binary in iptables mode in the node namespace (its Node object created by the benchmark); the "+
		"first packet of each connection walks its nat rules (KUBE-SERVICES holds one rule per Service port) and conntrack "+
		"reverses the DNAT. \"kube-proxy rules walked\": the mean position of the measured Service's CRR port rules in "+
		"KUBE-SERVICES (kube-proxy writes the chain in no particular order, so where the measured Service lands varies "+
		"from run to run), of the chain's rules; each new connection's first packet is matched against the rules up to it.\n\n", svcRange, 1+CRRPorts, r.Options.Workers, strings.Join(created, ", "))
	b.WriteString("Waiting: a figure is measured only once the datapath holds every Service defined: for Sigil, until `LB.List()` " +
		"(the pinned maps) has a frontend with backends for every ClusterIP and port; for kube-proxy, until its healthz answers " +
		"200 and `iptables -t nat -S KUBE-SERVICES` has a `-d ClusterIP/32 ... --dport port -j KUBE-SVC-…` rule for every one. " +
		"\"Ready after\" is the time from starting the load-balancer (Sigil: loading and attaching the programs, starting the " +
		"controller; kube-proxy: starting the process) to that point, with the API server already holding the Services.\n")
	return b.String()
}

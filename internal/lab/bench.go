package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/sigil-net/sigil/internal/bench"
	"github.com/sigil-net/sigil/internal/testnet"
)

// BenchOptions controls the lab benchmark (make bench-lab).
type BenchOptions struct {
	Config
	// Pods is how many pods start at once for the start-to-Ready figure.
	Pods int
	// PolicyRuns is how many times a policy is applied for the
	// apply-to-enforcement figure.
	PolicyRuns int
	// Duration of each traffic figure.
	Duration time.Duration
	// Modes are the routing modes measured (each on a fresh lab).
	Modes []string
	// Progress receives progress lines (nil: none).
	Progress io.Writer
}

// DefaultBenchOptions are the sizes: 50 pods, both routing modes.
func DefaultBenchOptions() BenchOptions {
	return BenchOptions{Config: Config{Name: "sgl-bench", Nodes: 2}, Pods: 50, PolicyRuns: 5,
		Duration: 5 * time.Second, Modes: []string{RoutingTunnel, RoutingNative}}
}

// BenchMode is what one routing mode measured.
type BenchMode struct {
	Routing string
	// PodReady are the create-to-Ready times of the pods started at once.
	PodReady []time.Duration
	// Enforce are the apply-to-first-drop times of the policy runs.
	Enforce []time.Duration
	// Pod-to-pod across nodes, and the same between the node namespaces
	// (no Sigil on that path: the physical baseline).
	PodGbps, NodeGbps float64
	PodRR, NodeRR     float64
}

// BenchReport is the lab benchmark's result.
type BenchReport struct {
	Options BenchOptions
	Modes   []BenchMode
}

// RunBench brings a lab up per routing mode, measures, and takes it down.
func RunBench(ctx context.Context, o BenchOptions) (*BenchReport, error) {
	rep := &BenchReport{Options: o}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	for _, mode := range o.Modes {
		cfg := o.Config
		cfg.Routing = mode
		if cfg.Dir == "" {
			dir, err := os.MkdirTemp("", "sigil-bench-lab-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(dir)
			cfg.Dir = dir
		}
		m, err := benchMode(ctx, cfg, o, progress)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		rep.Modes = append(rep.Modes, m)
	}
	return rep, nil
}

func benchMode(ctx context.Context, cfg Config, o BenchOptions, progress io.Writer) (m BenchMode, err error) {
	m.Routing = cfg.Routing
	l, err := Up(ctx, cfg, progress)
	if l != nil {
		defer func() {
			if derr := l.Down(); derr != nil && err == nil {
				err = fmt.Errorf("lab down: %w", derr)
			}
		}()
	}
	if err != nil {
		return m, err
	}
	fmt.Fprintf(progress, "bench: %d pods at once\n", o.Pods)
	if m.PodReady, err = l.benchPodStart(ctx, o.Pods); err != nil {
		return m, err
	}
	fmt.Fprintf(progress, "bench: policy apply to enforcement, %d runs\n", o.PolicyRuns)
	if m.Enforce, err = l.benchEnforcement(ctx, o.PolicyRuns); err != nil {
		return m, err
	}
	fmt.Fprintln(progress, "bench: cross-node TCP throughput and request/response")
	err = l.benchTraffic(ctx, o.Duration, &m)
	return m, err
}

// benchPodStart creates n pods at once, alternating over the nodes, and
// times each from its create call to the watch event that shows it Ready.
func (l *Lab) benchPodStart(ctx context.Context, n int) ([]time.Duration, error) {
	k, err := l.client()
	if err != nil {
		return nil, err
	}
	if err := l.EnsureNamespace(ctx, "bench", nil); err != nil {
		return nil, err
	}
	w, err := k.cs.CoreV1().Pods("bench").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	created := map[string]time.Time{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		spec := PodSpec{Namespace: "bench", Name: fmt.Sprintf("start-%02d", i), Labels: map[string]string{"app": "start"},
			Node: l.state.Nodes[i%len(l.state.Nodes)].Name}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.Now()
			if _, err := k.cs.CoreV1().Pods("bench").Create(ctx, probePod(spec), metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			created[spec.Name] = t
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	ready := map[string]time.Duration{}
	timeout := time.After(5 * time.Minute)
	for len(ready) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, fmt.Errorf("pod watch closed with %d of %d ready", len(ready), n)
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted || !podReady(p) {
				continue
			}
			mu.Lock()
			t, ok := created[p.Name]
			mu.Unlock()
			if _, seen := ready[p.Name]; ok && !seen {
				ready[p.Name] = time.Since(t)
			}
		case <-timeout:
			return nil, fmt.Errorf("%d of %d pods ready after 5m\n%s", len(ready), n, k.podSummary(ctx))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var out []time.Duration
	for _, d := range ready {
		out = append(out, d)
	}
	slices.Sort(out)
	zero := int64(0)
	return out, k.cs.CoreV1().Pods("bench").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: "app=start"})
}

// benchEnforcement probes a pod on node 2 from node 1's namespace every
// 5ms, applies a NetworkPolicy that denies its ingress, and times the create
// call to the first probe that fails; then deletes the policy and waits for
// the probes to pass again, runs times.
func (l *Lab) benchEnforcement(ctx context.Context, runs int) ([]time.Duration, error) {
	pods, err := l.RunPods(ctx, []PodSpec{{Namespace: "bench", Name: "target", Labels: map[string]string{"app": "target"},
		Node: l.state.Nodes[len(l.state.Nodes)-1].Name}}, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	from := &testnet.NS{Name: l.state.Nodes[0].NetNS, Path: netnsPath(l.state.Nodes[0].NetNS)}
	addr := netip.AddrPortFrom(netip.MustParseAddr(pods[0].IP), 80)
	probe := func() bool {
		out, err := bench.Probe(from, addr, 100*time.Millisecond)
		return err == nil && out == "connected"
	}
	var out []time.Duration
	for i := 0; i < runs; i++ {
		if err := waitFor(ctx, 30*time.Second, func() error {
			if !probe() {
				return fmt.Errorf("%s not reachable before the policy", addr)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "deny-target"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
		start := time.Now()
		if err := c.Create(ctx, np); err != nil {
			return nil, err
		}
		for probe() {
			if time.Since(start) > 30*time.Second {
				return nil, fmt.Errorf("policy not enforced after 30s")
			}
			time.Sleep(5 * time.Millisecond)
		}
		out = append(out, time.Since(start))
		if err := c.Delete(ctx, np); err != nil {
			return nil, err
		}
	}
	slices.Sort(out)
	return out, nil
}

// benchTraffic measures iperf3 throughput and TCP request/response from a
// pod on node 1 to a pod on node 2, and the same between the two node
// namespaces' underlay addresses.
func (l *Lab) benchTraffic(ctx context.Context, d time.Duration, m *BenchMode) error {
	n1, n2 := l.state.Nodes[0], l.state.Nodes[len(l.state.Nodes)-1]
	pods, err := l.RunPods(ctx, []PodSpec{
		{Namespace: "bench", Name: "client", Labels: map[string]string{"app": "client"}, Node: n1.Name},
		{Namespace: "bench", Name: "server", Labels: map[string]string{"app": "server"}, Node: n2.Name},
	}, 2*time.Minute)
	if err != nil {
		return err
	}
	client, err := podNetNS(pods[0].IP)
	if err != nil {
		return err
	}
	server, err := podNetNS(pods[1].IP)
	if err != nil {
		return err
	}
	node1 := &testnet.NS{Name: n1.NetNS, Path: netnsPath(n1.NetNS)}
	node2 := &testnet.NS{Name: n2.NetNS, Path: netnsPath(n2.NetNS)}
	podIP, nodeIP := netip.MustParseAddr(pods[1].IP), netip.MustParseAddr(n2.IP)
	for _, run := range []struct {
		from, to *testnet.NS
		ip       netip.Addr
		gbps, rr *float64
	}{
		{client, server, podIP, &m.PodGbps, &m.PodRR},
		{node1, node2, nodeIP, &m.NodeGbps, &m.NodeRR},
	} {
		res, err := bench.RunIperf3(ctx, run.to, run.from, run.ip, 5201, d)
		if err != nil {
			return err
		}
		*run.gbps = res.BitsPerSecond / 1e9
		echo, err := bench.StartEchoServer(run.to, run.ip, []uint16{7000})
		if err != nil {
			return err
		}
		rate, err := bench.RunRR(ctx, run.from, netip.AddrPortFrom(run.ip, 7000), 1, d)
		echo.Close()
		if err != nil {
			return err
		}
		*run.rr = rate.PerSec()
	}
	return nil
}

// podNetNS finds the network namespace containerd made for the pod with
// address ip (/var/run/netns/cni-...).
func podNetNS(ip string) (*testnet.NS, error) {
	ents, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "cni-") {
			continue
		}
		out, err := inNS(e.Name(), "ip", "-4", "-o", "addr", "show")
		if err == nil && strings.Contains(out, " "+ip+"/") {
			return &testnet.NS{Name: e.Name(), Path: filepath.Join("/var/run/netns", e.Name())}, nil
		}
	}
	return nil, fmt.Errorf("no pod network namespace with %s", ip)
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(p*float64(len(d)) + 0.5)
	return d[min(max(i-1, 0), len(d)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

// rows are the report's lines, shared by the text and markdown forms.
func (r *BenchReport) rows() [][]string {
	out := [][]string{{"figure", "tunnel", "native"}}
	get := func(mode string) *BenchMode {
		for i := range r.Modes {
			if r.Modes[i].Routing == mode {
				return &r.Modes[i]
			}
		}
		return nil
	}
	line := func(name string, f func(*BenchMode) string) {
		row := []string{name}
		for _, mode := range []string{RoutingTunnel, RoutingNative} {
			if m := get(mode); m != nil {
				row = append(row, f(m))
			} else {
				row = append(row, "-")
			}
		}
		out = append(out, row)
	}
	line(fmt.Sprintf("pod start to Ready, %d pods at once: p50 / p99", r.Options.Pods), func(m *BenchMode) string {
		return ms(percentile(m.PodReady, 0.5)) + " / " + ms(percentile(m.PodReady, 0.99))
	})
	line(fmt.Sprintf("policy apply to enforcement seen by a probe, %d runs: p50 / max", r.Options.PolicyRuns), func(m *BenchMode) string {
		return ms(percentile(m.Enforce, 0.5)) + " / " + ms(percentile(m.Enforce, 1))
	})
	line("TCP throughput pod→pod across nodes / node→node (ratio)", func(m *BenchMode) string {
		return fmt.Sprintf("%.1f / %.1f Gbit/s (%.2f×)", m.PodGbps, m.NodeGbps, m.PodGbps/m.NodeGbps)
	})
	line("TCP request/response pod→pod / node→node (ratio)", func(m *BenchMode) string {
		return fmt.Sprintf("%.0f / %.0f per s (%.2f×)", m.PodRR, m.NodeRR, m.PodRR/m.NodeRR)
	})
	return out
}

// WriteText prints the report as a table.
func (r *BenchReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, row := range r.rows() {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// Markdown is the report as the "Lab" section of docs/performance.md.
func (r *BenchReport) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s` (a real cluster per routing mode: kube-apiserver, containerd and kubelet per node, Sigil from its chart; %s per traffic figure; node→node is the same traffic between the two node namespaces' underlay addresses, with no Sigil on the path):\n\n",
		command, r.Options.Duration)
	for i, row := range r.rows() {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
		if i == 0 {
			b.WriteString("|---|---:|---:|\n")
		}
	}
	return b.String()
}

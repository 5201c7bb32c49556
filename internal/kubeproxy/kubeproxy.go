// Package kubeproxy runs the real kube-proxy binary in iptables mode inside
// a test node's network namespace (through nsenter, so the rest of the host
// is untouched), for the services end-to-end tests and benchmark.
//
// kube-proxy is started so that it changes nothing outside that namespace:
// --conntrack-max-per-core=0 and zero conntrack timeouts leave the
// conntrack sysctls alone (nf_conntrack_max is global), localhost NodePorts
// are off (no route_localnet), oom-score-adj 0 (a negative one is refused
// here), and its healthz and metrics servers listen on the namespace's
// loopback. It needs a Node object named NodeName (its addresses give the
// node IPs) and reads Services and EndpointSlices with the kubeconfig given.
// Stop kills it by PID and removes its chains and rules from the namespace.
package kubeproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sigil-net/sigil/internal/testnet"
)

// Config configures one kube-proxy.
type Config struct {
	Binary      string // the kube-proxy executable
	NetNS       string // path of the node's network namespace (/var/run/netns/X)
	Kubeconfig  string
	NodeName    string // --hostname-override: the Node object's name
	ClusterCIDR string // pod addresses: their traffic to a ClusterIP is not masqueraded
	// MinSyncPeriod is --iptables-min-sync-period; 0 applies every change
	// at once (kube-proxy's default is 1s).
	MinSyncPeriod time.Duration
	Log           io.Writer // kube-proxy's output; nil discards it
	Verbosity     int       // -v
}

// Proxy is a running kube-proxy.
type Proxy struct {
	cfg  Config
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Find returns the kube-proxy binary in dir (the Kubernetes binaries folder,
// hack/k8s-binaries.sh --print-dir).
func Find(dir string) (string, error) {
	p := filepath.Join(dir, "kube-proxy")
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		return "", fmt.Errorf("no kube-proxy in %s (build it with hack/k8s-binaries.sh)", dir)
	}
	return p, nil
}

// Args returns kube-proxy's command line for cfg (without the binary).
func (cfg Config) Args() []string {
	return []string{
		"--proxy-mode=iptables",
		"--kubeconfig=" + cfg.Kubeconfig,
		"--hostname-override=" + cfg.NodeName,
		"--cluster-cidr=" + cfg.ClusterCIDR,
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--iptables-localhost-nodeports=false",
		"--nodeport-addresses=primary",
		"--oom-score-adj=0",
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--iptables-min-sync-period=" + cfg.MinSyncPeriod.String(),
		fmt.Sprintf("--v=%d", cfg.Verbosity),
	}
}

// Start starts kube-proxy in cfg.NetNS. It returns once the process runs;
// WaitHealthy waits for its first sync.
func Start(cfg Config) (*Proxy, error) {
	if cfg.Binary == "" || cfg.NetNS == "" || cfg.Kubeconfig == "" || cfg.NodeName == "" {
		return nil, errors.New("kubeproxy: Binary, NetNS, Kubeconfig and NodeName are required")
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + cfg.NetNS, "--", cfg.Binary}, cfg.Args()...)...)
	if cfg.Log != nil {
		cmd.Stdout, cmd.Stderr = cfg.Log, cfg.Log
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("kubeproxy: start: %w", err)
	}
	p := &Proxy{cfg: cfg, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the process ID of kube-proxy (nsenter execs it, so it is the one
// started).
func (p *Proxy) PID() int { return p.cmd.Process.Pid }

// WaitHealthy waits until kube-proxy's healthz (in its namespace) answers
// 200, which it does once it has synced the rules after start.
func (p *Proxy) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		select {
		case <-p.done:
			return fmt.Errorf("kubeproxy: exited before it was healthy: %v", p.err)
		default:
		}
		code, err := p.healthz()
		if err == nil && code == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("status %d, %v", code, err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubeproxy: not healthy within %v (last: %q)", timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// healthz asks kube-proxy's health server, from a thread in its namespace.
func (p *Proxy) healthz() (int, error) {
	ns := &testnet.NS{Name: filepath.Base(p.cfg.NetNS), Path: p.cfg.NetNS}
	var c net.Conn
	if err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", "127.0.0.1:10256", time.Second)
		return err
	}); err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Stop kills kube-proxy by PID, waits for it, and removes its chains and
// rules from the namespace (Flush). It is safe to call twice.
func (p *Proxy) Stop() error {
	if p.cmd.Process != nil {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
	}
	return Flush(p.cfg.NetNS)
}

// Flush removes kube-proxy's rules and chains (KUBE-*) from the filter,
// nat and mangle tables of iptables and ip6tables in the namespace: the
// jumps into them from the built-in chains, then the chains themselves, in
// one iptables-restore --noflush batch per table (kube-proxy may have tens of
// thousands of chains).
func Flush(netns string) error {
	var errs []error
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			out, err := run(netns, bin, "-w", "-t", table, "-S")
			if err != nil {
				if bin == "ip6tables" {
					continue // no IPv6 netfilter: nothing of kube-proxy's either
				}
				errs = append(errs, err)
				continue
			}
			var dels, chains []string
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				switch {
				case len(f) >= 2 && f[0] == "-N" && strings.HasPrefix(f[1], "KUBE-"):
					chains = append(chains, f[1])
				case len(f) >= 2 && f[0] == "-A" && !strings.HasPrefix(f[1], "KUBE-") && strings.Contains(line, " -j KUBE-"):
					dels = append(dels, "-D"+strings.TrimPrefix(line, "-A"))
				}
			}
			if len(dels)+len(chains) == 0 {
				continue
			}
			var b strings.Builder
			b.WriteString("*" + table + "\n")
			for _, d := range dels {
				b.WriteString(d + "\n")
			}
			for _, c := range chains {
				b.WriteString("-F " + c + "\n")
			}
			for _, c := range chains {
				b.WriteString("-X " + c + "\n")
			}
			b.WriteString("COMMIT\n")
			cmd := exec.Command("nsenter", "--net="+netns, "--", bin+"-restore", "-w", "--noflush")
			cmd.Stdin = strings.NewReader(b.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s-restore (%s): %w: %s", bin, table, err, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}

func run(netns, bin string, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + netns, "--", bin}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Frontends lists the ClusterIP frontends kube-proxy has installed in the
// namespace, as "ip:port/proto": the rules of the nat table's KUBE-SERVICES
// chain that send a ClusterIP and port to a service chain (KUBE-SVC-*),
// which it writes for service ports with ready endpoints.
func Frontends(netns string) ([]string, error) {
	out, err := run(netns, "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES")
	if err != nil {
		return nil, err
	}
	var fs []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "-A KUBE-SERVICES ") || !strings.Contains(line, " -j KUBE-SVC-") {
			continue
		}
		if f := frontendOf(line); f != "" {
			fs = append(fs, f)
		}
	}
	return fs, nil
}

// frontendOf returns "ip:port/proto" of a KUBE-SERVICES rule that sends a
// ClusterIP to a service chain, "" for other rules.
func frontendOf(line string) string {
	if !strings.Contains(line, " -j KUBE-SVC-") {
		return ""
	}
	var ip, proto, port string
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "-d":
			ip = strings.TrimSuffix(f[i+1], "/32")
		case "-p":
			proto = f[i+1]
		case "--dport":
			port = f[i+1]
		}
	}
	if ip == "" || port == "" {
		return ""
	}
	return ip + ":" + port + "/" + proto
}

// Positions returns, for each frontend ("ip:port/proto", as Frontends lists
// them), the 1-based position of its rule among the nat table's
// KUBE-SERVICES rules (0 if it has none), and how many rules that chain
// holds: a connection's first packet walks the chain up to its rule.
func Positions(netns string, frontends []string) (pos []int, total int, err error) {
	out, err := run(netns, "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES")
	if err != nil {
		return nil, 0, err
	}
	at := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "-A KUBE-SERVICES ") {
			continue
		}
		total++
		if fs := frontendOf(line); fs != "" {
			at[fs] = total
		}
	}
	for _, f := range frontends {
		pos = append(pos, at[f])
	}
	return pos, total, nil
}

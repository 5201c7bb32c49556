package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/internal/image"
)

// ImageTag is the tag of the Sigil images the lab builds and imports.
const ImageTag = "lab"

// Lab is a lab being brought up or inspected.
type Lab struct {
	cfg   Config
	state *State
	out   io.Writer

	// Clients of the lab's API server, made on first use (after up wrote
	// the kubeconfig) and shared: probes run many at once.
	clientMu sync.Mutex
	kc       *kube
	crc      client.Client
}

// step prints one progress line.
func (l *Lab) step(format string, args ...any) {
	fmt.Fprintf(l.out, "lab: "+format+"\n", args...)
}

// Up brings a lab up: see the package doc. On failure it leaves what it made
// recorded in the state file, for Down (which it says to run).
func Up(ctx context.Context, cfg Config, out io.Writer) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("sigil lab needs root (network namespaces, cgroups, containerd)")
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if old, err := loadState(c.statePath()); err == nil {
		alive := 0
		for _, p := range old.Processes {
			if p.alive() {
				alive++
			}
		}
		if alive > 0 {
			return nil, fmt.Errorf("a lab is already up (%s: %d of its processes run): use it, or `sigil lab down` first", old.path, alive)
		}
		// Left by a lab that is gone (a reboot, a killed up): clean up
		// what it recorded, then start afresh.
		fmt.Fprintf(out, "lab: the lab recorded in %s is not running; removing what it left\n", old.path)
		if err := (&Lab{cfg: c, state: old, out: out}).Down(); err != nil {
			return nil, fmt.Errorf("cleaning up the previous lab: %w", err)
		}
	}
	if err := checkHostTools(); err != nil {
		return nil, err
	}
	l := &Lab{cfg: c, out: out}
	start := time.Now()
	if c.KubeBin == "" {
		l.step("Kubernetes binaries (hack/k8s-binaries.sh: built once, then cached)")
		if c.KubeBin, err = kubeBinaries(ctx, c.Repo, out); err != nil {
			return nil, err
		}
		l.cfg = c
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	// Keep the previous run's logs one generation.
	logs := filepath.Join(c.Dir, "logs")
	os.RemoveAll(logs + ".prev")
	os.Rename(logs, logs+".prev")
	s := &State{Name: c.Name, Dir: c.Dir, Routing: c.Routing, KubeBin: c.KubeBin, HelmValues: c.HelmValues,
		KubeProxy: c.KubeProxy, path: c.statePath()}
	for i := 1; i <= c.Nodes; i++ {
		name := c.nodeName(i)
		root := filepath.Join(c.Dir, "nodes", name)
		s.Nodes = append(s.Nodes, Node{Name: name, IP: nodeIP(i).String(), NetNS: name, Root: root,
			ContainerdSocket: filepath.Join(root, "containerd.sock")})
	}
	l.state = s
	if err := s.save(); err != nil {
		return nil, err
	}
	fail := func(err error) (*Lab, error) {
		return l, fmt.Errorf("%w\n(logs: %s; undo with `sigil lab down`)", err, logs)
	}
	if err := s.recordHost(); err != nil {
		return fail(err)
	}
	if err := s.makeShared("/sys/fs/bpf"); err != nil {
		return fail(err)
	}
	l.step("building images and the CNI loopback plugin")
	images, err := l.buildArtifacts(ctx)
	if err != nil {
		return fail(err)
	}
	l.step("certificates and tokens")
	var nodeNames []string
	for _, n := range s.Nodes {
		nodeNames = append(nodeNames, n.Name)
	}
	p, err := newPKI(filepath.Join(c.Dir, "pki"), nodeNames)
	if err != nil {
		return fail(err)
	}
	l.step("network: %s (control plane, router), %d nodes on 198.18.0.0/24, %s (the outside world)", c.cpNS(), c.Nodes, c.extNS())
	if err := s.buildNetwork(c); err != nil {
		return fail(err)
	}
	l.step("control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
	if err := s.startControlPlane(ctx, c, p); err != nil {
		return fail(err)
	}
	if err := l.startProxy(ctx, p); err != nil {
		return fail(err)
	}
	for _, n := range s.Nodes {
		l.step("node %s (%s): containerd, images, kubelet", n.Name, n.IP)
		if err := s.startNode(ctx, c, p, n); err != nil {
			return fail(err)
		}
		for _, img := range images {
			if err := importImage(n, img); err != nil {
				return fail(err)
			}
		}
	}
	if err := l.startExternal(); err != nil {
		return fail(err)
	}
	k, err := l.client()
	if err != nil {
		return fail(err)
	}
	l.step("waiting for %d nodes to register", c.Nodes)
	if err := k.waitNodesRegistered(ctx, nodeNames, 2*time.Minute); err != nil {
		return fail(l.withProcessHint(err))
	}
	services := "Sigil's eBPF load-balancer"
	if c.KubeProxy {
		services = "kube-proxy"
	}
	l.step("helm install sigil (routing %s, services by %s)", c.Routing, services)
	if err := l.helm(ctx, "install"); err != nil {
		return fail(err)
	}
	l.step("waiting for Sigil and the nodes to be ready")
	if err := k.waitSigilReady(ctx, nodeNames, 4*time.Minute); err != nil {
		return fail(l.withProcessHint(err))
	}
	if err := s.update(func(s *State) { s.Ready = true }); err != nil {
		return fail(err)
	}
	l.step("up in %s", time.Since(start).Round(time.Second))
	return l, nil
}

// Open returns the lab recorded under cfg (for down, status, load-image,
// demo).
func Open(cfg Config, out io.Writer) (*Lab, error) {
	c, err := cfg.withDefaultsNoRepo()
	if err != nil {
		return nil, err
	}
	s, err := loadState(c.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", errNoLab, c.Dir)
	}
	if err != nil {
		return nil, err
	}
	c.Routing = s.Routing
	c.Nodes = len(s.Nodes)
	c.KubeProxy = s.KubeProxy
	if c.KubeBin == "" {
		c.KubeBin = s.KubeBin
	}
	return &Lab{cfg: c, state: s, out: out}, nil
}

// withDefaultsNoRepo is withDefaults for commands that need no source tree.
func (c Config) withDefaultsNoRepo() (Config, error) {
	if c.Repo == "" {
		if r, err := findRepo(); err == nil {
			c.Repo = r
		} else {
			c.Repo = "."
		}
	}
	return c.withDefaults()
}

// State is the lab's recorded state.
func (l *Lab) State() *State { return l.state }

// Config is the lab's configuration, defaults filled in.
func (l *Lab) Config() Config { return l.cfg }

// checkHostTools fails early, with the fix, when a tool the lab runs is
// missing.
func checkHostTools() error {
	var missing []string
	for _, t := range []string{"ip", "nsenter", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing on this host: %s (run hack/setup.sh, which installs containerd, runc, iproute2 and iptables)", strings.Join(missing, ", "))
	}
	if _, err := os.Stat("/sys/fs/bpf"); err != nil {
		return errors.New("bpffs is not mounted at /sys/fs/bpf (hack/setup.sh mounts it)")
	}
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err != nil {
		if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err != nil {
			return errors.New("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup: Sigil's socket load-balancer attaches there")
		}
	}
	return nil
}

// cgroup2Root is the host's cgroup v2 root.
func cgroup2Root() string {
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
		return "/sys/fs/cgroup/unified"
	}
	return "/sys/fs/cgroup"
}

// kubeBinaries runs hack/k8s-binaries.sh (a no-op when cached) and returns
// its bin folder.
func kubeBinaries(ctx context.Context, repo string, out io.Writer) (string, error) {
	script := filepath.Join(repo, "hack", "k8s-binaries.sh")
	cmd := exec.CommandContext(ctx, script)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	dir, err := exec.CommandContext(ctx, script, "--print-dir").Output()
	if err != nil {
		return "", fmt.Errorf("%s --print-dir: %w", script, err)
	}
	return strings.TrimSpace(string(dir)), nil
}

// buildArtifacts builds Sigil's images (tag lab) and the binaries the lab
// runs on the host: the CNI loopback plugin containerd needs next to
// sigil-cni, and sigil-probe for the external host.
func (l *Lab) buildArtifacts(ctx context.Context) ([]string, error) {
	o := image.Options{Root: l.cfg.Repo, OutDir: filepath.Join(l.cfg.Dir, "images"), Tag: ImageTag,
		Aliases: map[string][]string{"sigil-pause": {PauseImage}}}
	images, err := image.Build(ctx, o, image.Specs())
	if err != nil {
		return nil, err
	}
	if err := image.BuildBinaries(ctx, l.cfg.Repo, filepath.Join(l.cfg.Dir, "cni", "bin"),
		[]string{"github.com/containernetworking/plugins/plugins/main/loopback"}); err != nil {
		return nil, err
	}
	if err := image.BuildBinaries(ctx, l.cfg.Repo, filepath.Join(l.cfg.Dir, "bin"), []string{"./cmd/sigil-probe"}); err != nil {
		return nil, err
	}
	return images, nil
}

// startProxy starts the root-namespace proxy to the API server and writes
// the admin kubeconfig for it.
func (l *Lab) startProxy(ctx context.Context, p pki) error {
	self := l.cfg.SigilBinary
	if self == "" {
		var err error
		if self, err = os.Executable(); err != nil {
			return err
		}
	}
	addrFile := filepath.Join(l.cfg.Dir, "proxy.addr")
	os.Remove(addrFile)
	pr, err := l.state.startProcess("api-proxy", "", []string{self, "lab", "proxy",
		"--netns", l.cfg.cpNS(), "--listen", "127.0.0.1:0",
		"--target", fmt.Sprintf("%s:%d", APIServerAddr, APIServerPort), "--addr-file", addrFile}, nil)
	if err != nil {
		return err
	}
	var addr []byte
	if err := waitFor(ctx, 10*time.Second, func() error {
		if !pr.alive() {
			return fmt.Errorf("api-proxy exited:\n%s", logTail(pr.Log, 10))
		}
		addr, err = os.ReadFile(addrFile)
		return err
	}); err != nil {
		return err
	}
	if err := l.state.update(func(s *State) { s.ProxyAddr = string(addr) }); err != nil {
		return err
	}
	return p.writeKubeconfig(l.cfg.Kubeconfig(), "https://"+string(addr), "admin")
}

// startExternal serves TCP and UDP 80 on the external host, for egress.
func (l *Lab) startExternal() error {
	_, err := l.state.startProcess("external-server", l.cfg.extNS(),
		[]string{filepath.Join(l.cfg.Dir, "bin", "sigil-probe"), "serve", "--tcp", "80,443", "--udp", "80"}, nil)
	return err
}

// withProcessHint adds which lab processes died, with their logs' tails.
func (l *Lab) withProcessHint(err error) error {
	var b strings.Builder
	b.WriteString(err.Error())
	for _, p := range l.state.Processes {
		if !p.alive() {
			fmt.Fprintf(&b, "\n%s (pid %d) exited; the end of %s:\n%s", p.Name, p.PID, p.Log, logTail(p.Log, 10))
		}
	}
	return errors.New(b.String())
}

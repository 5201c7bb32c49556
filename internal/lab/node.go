package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sigil-net/sigil/internal/kubeproxy"
)

// PauseImage is the sandbox image every node's containerd uses; the lab
// imports Sigil's own static pause under this name.
const PauseImage = "registry.k8s.io/pause:3.10"

// kubeletSysctls are the host sysctls a kubelet sets at start (it checks
// "kernel defaults"): recorded before the first kubelet starts, restored by
// down.
var kubeletSysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}

// hostPathsTouched are host paths containerd and kubelets create whatever
// their configuration says; down removes those that did not exist before.
var hostPathsTouched = []string{"/run/containerd", "/var/lib/kubelet", "/var/log/containers", "/var/log/pods"}

// cgroupRoot is node n's cgroup parent (the kubelet's cgroupRoot).
func (c Config) cgroupRoot(n Node) string { return "/" + n.Name }

// recordHost records the sysctls and host paths the nodes may change.
func (s *State) recordHost() error {
	return s.update(func(s *State) {
		if s.Sysctls == nil {
			s.Sysctls = map[string]string{}
		}
		for _, k := range kubeletSysctls {
			if data, err := os.ReadFile("/proc/sys/" + k); err == nil {
				s.Sysctls[k] = strings.TrimSpace(string(data))
			}
		}
		for _, p := range hostPathsTouched {
			if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
				s.Created = append(s.Created, p)
			}
		}
	})
}

// makeShared makes a mount point's propagation shared, as on a systemd host,
// recording it when it was not.
func (s *State) makeShared(mp string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[4] != mp {
			continue
		}
		for _, opt := range f[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") {
				return nil
			}
		}
	}
	if err := syscall.Mount("", mp, "", syscall.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", mp, err)
	}
	return s.update(func(s *State) { s.SharedMounts = append(s.SharedMounts, mp) })
}

// cgroupMounts lists the mounted cgroup hierarchies (v1 controllers and the
// v2 one).
func cgroupMounts() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, " - ", 2)
		if len(parts) != 2 {
			continue
		}
		fsType := strings.Fields(parts[1])
		fields := strings.Fields(parts[0])
		if len(fsType) > 0 && (fsType[0] == "cgroup" || fsType[0] == "cgroup2") && len(fields) > 4 {
			out = append(out, fields[4])
		}
	}
	return out, nil
}

// makeCgroupRoot creates the node's cgroup parent in every hierarchy (the
// kubelet checks it exists), with cpuset's cpus and mems copied from the
// root as a new cpuset cgroup starts empty.
func (s *State) makeCgroupRoot(root string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		dir := filepath.Join(m, root)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if err := s.update(func(s *State) { s.Cgroups = append(s.Cgroups, dir) }); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(m, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
				}
			}
		}
	}
	return nil
}

// containerdConfig is a node's containerd configuration (containerd 1.6,
// config version 2).
func containerdConfig(n Node, cniBin, cniConf string) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # oom_score_adj below the runtime's own is refused on this kind of host:
  # without this every sandbox fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, filepath.Join(n.Root, "containerd", "root"), filepath.Join(n.Root, "containerd", "state"),
		n.ContainerdSocket, n.ContainerdSocket+".ttrpc", filepath.Join(n.Root, "containerd", "opt"),
		PauseImage, cniBin, cniConf)
}

// kubeletConfig is a node's KubeletConfiguration.
func kubeletConfig(c Config, n Node) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
# This host has cgroup v1 (hybrid) and swap: fine for a lab.
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podLogsDir: %s
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# Several kubelets share one disk and memory: never evict or GC images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "0%%", nodefs.inodesFree: "0%%", imagefs.available: "0%%"}
localStorageCapacityIsolation: false
serializeImagePulls: false
maxPods: 110
nodeStatusUpdateFrequency: 4s
registerNode: true
`, n.ContainerdSocket, c.cgroupRoot(n), n.IP, filepath.Join(n.Root, "pod-logs"))
}

// startNode starts node n's containerd and kubelet in its namespace.
func (s *State) startNode(ctx context.Context, c Config, p pki, n Node) error {
	cniBin := filepath.Join(s.Dir, "cni", "bin")
	cniConf := filepath.Join(s.Dir, "cni", "net.d", n.Name)
	for _, d := range []string{n.Root, cniConf, filepath.Join(n.Root, "kubelet"), filepath.Join(n.Root, "pod-logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := s.makeCgroupRoot(c.cgroupRoot(n)); err != nil {
		return err
	}
	cfg := filepath.Join(n.Root, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig(n, cniBin, cniConf)), 0o644); err != nil {
		return err
	}
	ctrd, err := s.startProcess(n.Name+"-containerd", n.NetNS, []string{"containerd", "--config", cfg, "--log-level", "warn"}, nil)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, func() error {
		if !ctrd.alive() {
			return fmt.Errorf("containerd exited:\n%s", logTail(ctrd.Log, 15))
		}
		_, err := run("ctr", "-a", n.ContainerdSocket, "version")
		return err
	}); err != nil {
		return fmt.Errorf("%s containerd: %w", n.Name, err)
	}
	kcfg := filepath.Join(n.Root, "kubelet.yaml")
	if err := os.WriteFile(kcfg, []byte(kubeletConfig(c, n)), 0o644); err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Root, "kubelet.kubeconfig")
	server := fmt.Sprintf("https://%s:%d", APIServerAddr, APIServerPort)
	if err := p.writeKubeconfig(kubeconfig, server, "system:node:"+n.Name); err != nil {
		return err
	}
	if _, err := s.startProcess(n.Name+"-kubelet", n.NetNS, []string{filepath.Join(c.KubeBin, "kubelet"),
		"--config=" + kcfg, "--kubeconfig=" + kubeconfig,
		"--root-dir=" + filepath.Join(n.Root, "kubelet"), "--cert-dir=" + filepath.Join(n.Root, "kubelet", "pki"),
		"--hostname-override=" + n.Name, "--node-ip=" + n.IP,
		"--node-labels=sigil.io/lab=" + c.Name, "--v=1",
	}, nil); err != nil {
		return err
	}
	if !c.KubeProxy {
		return nil
	}
	bin, err := kubeproxy.Find(c.KubeBin)
	if err != nil {
		return err
	}
	kpConfig := filepath.Join(n.Root, "kube-proxy.kubeconfig")
	if err := p.writeKubeconfig(kpConfig, server, "system:kube-proxy"); err != nil {
		return err
	}
	// The flags leave the host's conntrack sysctls alone; its chains live
	// in the node's namespace and go with it.
	args := kubeproxy.Config{Kubeconfig: kpConfig, NodeName: n.Name, ClusterCIDR: PodPool.String(), Verbosity: 1}.Args()
	_, err = s.startProcess(n.Name+"-kube-proxy", n.NetNS, append([]string{bin}, args...), nil)
	return err
}

// importImage imports an OCI image tarball into a node's containerd, in the
// k8s.io namespace the CRI uses.
func importImage(n Node, tar string) error {
	_, err := run("ctr", "-a", n.ContainerdSocket, "-n", "k8s.io", "images", "import", tar)
	return err
}

// waitFor retries cond every 200ms until it succeeds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

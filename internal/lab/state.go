package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// State is what a lab made, written to <dir>/lab.json after every step so
// that `down` can undo exactly that, also after a failed `up`.
type State struct {
	Name    string `json:"name"`
	Dir     string `json:"dir"`
	Nodes   []Node `json:"nodes"`
	Routing string `json:"routing"`
	// KubeProxy: kube-proxy handles Services (Config.KubeProxy).
	KubeProxy bool `json:"kubeProxy,omitempty"`
	// HelmValues are the extra chart values given to up.
	HelmValues []string `json:"helmValues,omitempty"`
	// KubeBin is the folder of the Kubernetes binaries and helm in use.
	KubeBin string `json:"kubeBin"`
	// NetNS are the network namespaces the lab created.
	NetNS []string `json:"netns,omitempty"`
	// Processes the lab started, in start order.
	Processes []Process `json:"processes,omitempty"`
	// Sysctls holds the original value of every sysctl the lab (or a
	// kubelet it started) may change, by /proc/sys path.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Cgroups are the cgroup folders the lab created (kubelet cgroup roots).
	Cgroups []string `json:"cgroups,omitempty"`
	// Created are host paths outside Dir that did not exist before the lab
	// and that its kubelets or containerds create (removed on down).
	Created []string `json:"created,omitempty"`
	// SharedMounts are mount points the lab made shared (the agent mounts
	// bpffs with HostToContainer propagation, which needs it); down makes
	// them private again.
	SharedMounts []string `json:"sharedMounts,omitempty"`
	// ProxyAddr is the API server proxy's address in the root namespace.
	ProxyAddr string `json:"proxyAddr,omitempty"`
	// Ready is set once `up` finished.
	Ready bool `json:"ready"`

	mu   sync.Mutex
	path string
}

// Node is one lab node.
type Node struct {
	Name string `json:"name"`
	IP   string `json:"ip"`
	// NetNS is the node's network namespace (/var/run/netns/<NetNS>).
	NetNS string `json:"netns"`
	// Root is the node's folder under the lab's Dir.
	Root string `json:"root"`
	// ContainerdSocket is the node's CRI endpoint.
	ContainerdSocket string `json:"containerdSocket"`
}

// loadState reads a lab's state; a missing file is os.ErrNotExist.
func loadState(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &State{path: path}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", path, err)
	}
	return s, nil
}

// save writes the state atomically.
func (s *State) save() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saveLocked()
}

func (s *State) saveLocked() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}

// update applies fn under the lock and saves.
func (s *State) update(fn func(*State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s)
	return s.saveLocked()
}

// errNoLab is returned when there is no lab to act on.
var errNoLab = errors.New("no lab is running (no state file)")

package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
)

// Routing modes for pods on different nodes (the chart's routingMode).
const (
	RoutingTunnel = "tunnel"
	RoutingNative = "native"
)

// The lab's address plan (all inside 198.18.0.0/15).
var (
	UnderlayPrefix = netip.MustParsePrefix("198.18.0.0/24")   // lab0: control plane .1, node N .10+N
	APIServerAddr  = netip.MustParseAddr("198.18.0.1")        // kube-apiserver, and the nodes' router
	PodPool        = netip.MustParsePrefix("198.18.128.0/17") // the operator's cluster pool, /24 per node
	ServiceCIDR    = netip.MustParsePrefix("198.19.240.0/20") // ClusterIPs; kubernetes.default is .1
	ExternalPrefix = netip.MustParsePrefix("198.19.254.0/24") // the outside world: router .254, host .1
	ExternalHost   = netip.MustParseAddr("198.19.254.1")
)

// APIServerPort is the kube-apiserver's secure port inside the lab.
const APIServerPort = 6443

// Config says which lab to run and where its files go.
type Config struct {
	// Name prefixes the lab's namespaces, cgroups and pins (default sigil-lab).
	Name string
	// Dir holds the lab's state, certificates, logs, node roots and
	// kubeconfig (default /var/lib/<Name>).
	Dir string
	// Nodes is the number of worker nodes (default 2).
	Nodes int
	// Routing is tunnel (default) or native.
	Routing string
	// Repo is the Sigil source tree: the chart, and the commands built into
	// the images (default: found from the working directory).
	Repo string
	// KubeBin holds kube-apiserver, etcd, kubelet... and helm (default:
	// hack/k8s-binaries.sh's cache, built when missing).
	KubeBin string
	// KubeProxy runs kube-proxy (iptables mode) on every node and installs
	// Sigil with kubeProxyReplacement=false: Services are kube-proxy's, and
	// Sigil judges pods' egress to them after its DNAT.
	KubeProxy bool
	// SigilBinary is the sigil CLI that runs the API proxy (`sigil lab
	// proxy`); default: the running executable.
	SigilBinary string
	// HelmValues are extra `--set` values for helm install.
	HelmValues []string
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,11}$`)

// withDefaults fills in the defaults and checks the result.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = "sigil-lab"
	}
	if !nameRE.MatchString(c.Name) {
		return c, fmt.Errorf("lab name %q: want 1-12 lower-case letters, digits or '-', starting with a letter (it prefixes interface and namespace names)", c.Name)
	}
	if c.Dir == "" {
		c.Dir = filepath.Join("/var/lib", c.Name)
	}
	if c.Nodes == 0 {
		c.Nodes = 2
	}
	if c.Nodes < 1 || c.Nodes > 8 {
		return c, fmt.Errorf("--nodes %d: want 1 to 8", c.Nodes)
	}
	if c.Routing == "" {
		c.Routing = RoutingTunnel
	}
	if c.Routing != RoutingTunnel && c.Routing != RoutingNative {
		return c, fmt.Errorf("--routing %q: want tunnel or native", c.Routing)
	}
	if c.Repo == "" {
		root, err := findRepo()
		if err != nil {
			return c, err
		}
		c.Repo = root
	}
	return c, nil
}

// findRepo walks up from the working directory to Sigil's go.mod.
func findRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && regexp.MustCompile(`(?m)^module github.com/sigil-net/sigil$`).Match(data) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("not inside Sigil's source tree (no go.mod of github.com/sigil-net/sigil above the working directory): run from the repository or pass --repo")
		}
		dir = parent
	}
}

// nodeName is the Kubernetes name of node i (1-based).
func (c Config) nodeName(i int) string { return fmt.Sprintf("%s-n%d", c.Name, i) }

// nodeIP is node i's underlay address.
func nodeIP(i int) netip.Addr { return nthAddr(UnderlayPrefix, 10+i) }

// nsName and friends name what the lab makes.
func (c Config) cpNS() string  { return c.Name + "-cp" }
func (c Config) extNS() string { return c.Name + "-ext" }
func (c Config) statePath() string {
	return filepath.Join(c.Dir, "lab.json")
}

// Kubeconfig is where `up` writes the admin kubeconfig.
func (c Config) Kubeconfig() string { return filepath.Join(c.Dir, "kubeconfig") }

// pinDir is the bpffs folder of the lab's agents (one subfolder per node).
func (c Config) pinDir() string { return filepath.Join("/sys/fs/bpf", c.Name) }

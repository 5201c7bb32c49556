// Package cni is the logic of the sigil-cni plugin: it wires a pod's veth,
// addresses and routes, and registers the endpoint with the node agent,
// which allocates the address and programs the datapath.
package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/sigil-net/sigil/agent/apitypes"
)

// Plugin-specific CNI error codes (the spec reserves 0-99).
const (
	ErrPoolExhausted uint = 100 // the node's pod CIDR has no free address
	ErrDatapath      uint = 101 // the agent failed to program the datapath
	ErrAgentRejected uint = 102 // the agent refused the request
)

// SupportedVersions are the CNI spec versions sigil-cni speaks.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// PluginInfo is the VERSION answer.
var PluginInfo = version.PluginSupports(SupportedVersions...)

// Defaults.
const (
	DefaultMTU          = 1500
	DefaultAgentTimeout = 30 * time.Second
	HostIfPrefix        = "sgl"
)

// NetConf is sigil-cni's network configuration.
type NetConf struct {
	types.PluginConf
	// Socket is the agent's API socket.
	Socket string `json:"socket,omitempty"`
	// MTU of the pod interface and the host veth.
	MTU int `json:"mtu,omitempty"`
	// AgentTimeout bounds each agent call, as a Go duration ("30s").
	AgentTimeout string `json:"agentTimeout,omitempty"`

	RuntimeConfig struct {
		Labels map[string]string `json:"labels,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	Args struct {
		CNI struct {
			Labels map[string]string `json:"labels,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`

	timeout time.Duration
}

// ParseConfig parses and validates stdin data; errors are CNI errors with
// code 7 (invalid network config) naming the field.
func ParseConfig(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "sigil-cni: cannot parse network configuration: "+err.Error(), "")
	}
	bad := func(format string, a ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, "sigil-cni: invalid network configuration: "+fmt.Sprintf(format, a...), "")
	}
	if conf.CNIVersion == "" {
		return nil, bad(`"cniVersion" is missing`)
	}
	if conf.Name == "" {
		return nil, bad(`"name" is missing`)
	}
	if conf.Socket == "" {
		conf.Socket = apitypes.DefaultSocket
	}
	if !strings.HasPrefix(conf.Socket, "/") {
		return nil, bad(`"socket" must be an absolute path, got %q`, conf.Socket)
	}
	if conf.MTU == 0 {
		conf.MTU = DefaultMTU
	}
	if conf.MTU < 576 || conf.MTU > 65535 {
		return nil, bad(`"mtu" %d is out of range 576..65535`, conf.MTU)
	}
	conf.timeout = DefaultAgentTimeout
	if conf.AgentTimeout != "" {
		d, err := time.ParseDuration(conf.AgentTimeout)
		if err != nil || d <= 0 {
			return nil, bad(`"agentTimeout" %q is not a positive duration such as "30s"`, conf.AgentTimeout)
		}
		conf.timeout = d
	}
	if conf.IPAM.Type != "" {
		return nil, bad(`"ipam" is not supported: sigil-cni allocates addresses through the sigil agent (remove the ipam section)`)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "sigil-cni: cannot parse prevResult: "+err.Error(), "")
	}
	return conf, nil
}

// Timeout is the agent call timeout.
func (c *NetConf) Timeout() time.Duration { return c.timeout }

// K8sArgs are the Kubernetes keys of CNI_ARGS.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

// ParseArgs parses CNI_ARGS, ignoring unknown keys.
func ParseArgs(s string) (*K8sArgs, error) {
	a := &K8sArgs{}
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "sigil-cni: cannot parse CNI_ARGS: "+err.Error(), "")
	}
	return a, nil
}

// HostIfName is the host-side veth name of an attachment: "sgl" and 11 hex
// digits of a hash of container ID and interface (15 characters, the
// kernel's limit).
func HostIfName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostIfPrefix + hex.EncodeToString(h[:])[:11]
}

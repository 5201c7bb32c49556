package apitypes

import "net/netip"

// Service load-balancing route (API version 1):
//
//	GET /v1/services -> ServiceList
//
// It answers CodeUnavailable when the agent does not load-balance services
// (--kube-proxy-replacement=false, or no BPF datapath or Kubernetes).

// ServiceList is the services the socket load-balancer has installed.
type ServiceList struct {
	Services []Service `json:"services"`
}

// Service is one frontend (ClusterIP, port, protocol) and its backends, as
// installed in the BPF maps.
type Service struct {
	Frontend ServiceFrontend  `json:"frontend"`
	Backends []ServiceBackend `json:"backends"`
	// AffinityTimeoutSeconds is the ClientIP session affinity timeout (0:
	// no affinity).
	AffinityTimeoutSeconds uint32 `json:"affinityTimeoutSeconds,omitempty"`
}

// ServiceFrontend is a service address.
type ServiceFrontend struct {
	Address  netip.Addr `json:"address"`
	Port     uint16     `json:"port"`
	Protocol string     `json:"protocol"` // TCP or UDP
}

// ServiceBackend is where a service's connections go.
type ServiceBackend struct {
	Address netip.Addr `json:"address"`
	Port    uint16     `json:"port"`
}

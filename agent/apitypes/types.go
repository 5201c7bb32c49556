// Package apitypes holds the request and response types of the sigil-agent
// local API (HTTP/JSON over a unix socket, versioned under /v1/).
//
// Routes (API version 1):
//
//	GET    /v1/healthz                        -> Health (503 while not ready)
//	PUT    /v1/endpoints/{containerID}/{ifName} EndpointRequest -> Endpoint
//	GET    /v1/endpoints/{containerID}/{ifName} -> Endpoint (404 if unknown)
//	DELETE /v1/endpoints/{containerID}/{ifName} -> DeleteResult (idempotent)
//	GET    /v1/endpoints                      -> EndpointList
//	POST   /v1/gc  GCRequest                  -> GCResult
//	GET    /v1/ipam                           -> IPAMList
//
// Errors are an ErrorResponse with an HTTP status and a machine code.
package apitypes

import (
	"net/netip"
	"time"
)

// Version is the API version served under /v1/.
const Version = "v1"

// DefaultSocket is where the agent listens by default.
const DefaultSocket = "/var/run/sigil/sigil.sock"

// Error codes.
const (
	CodeInvalid     = "invalid_request"
	CodeNotFound    = "not_found"
	CodeNotReady    = "not_ready"
	CodePoolExhaust = "pool_exhausted"
	CodeDatapath    = "datapath_error"
	CodeInternal    = "internal_error"
	CodeConflict    = "conflict"
)

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody describes what went wrong.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Health is the answer of /v1/healthz.
type Health struct {
	Status     string `json:"status"` // "ok" or "not-ready"
	Ready      bool   `json:"ready"`
	APIVersion string `json:"apiVersion"`
	Message    string `json:"message,omitempty"`
	Endpoints  int    `json:"endpoints"`
	PodCIDR    string `json:"podCIDR,omitempty"`
	// K8s is the control plane's state; absent when Kubernetes is off.
	K8s *K8sHealth `json:"k8s,omitempty"`
}

// K8sHealth is the agent's connection to the Kubernetes API server.
type K8sHealth struct {
	// Connected: the API server answered the last probe or watch.
	Connected bool `json:"connected"`
	// Synced: the informers synced and the maps hold the computed policy.
	// While not connected the maps keep enforcing the last known state.
	Synced bool `json:"synced"`
	// LastSync is when the maps last took in an API-server change.
	LastSync time.Time `json:"lastSync,omitzero"`
	Message  string    `json:"message,omitempty"`
}

// EndpointRequest creates (or re-confirms) the endpoint of one attachment.
// The agent allocates the address, the endpoint ID and the identity.
type EndpointRequest struct {
	ContainerID  string            `json:"containerID"`
	IfName       string            `json:"ifName"`
	NetNS        string            `json:"netns"`
	HostIfName   string            `json:"hostIfName"`
	HostIfIndex  int               `json:"hostIfIndex"`
	HostMAC      string            `json:"hostMAC"`
	MAC          string            `json:"mac"`
	PodNamespace string            `json:"podNamespace,omitempty"`
	PodName      string            `json:"podName,omitempty"`
	PodUID       string            `json:"podUID,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// Address is one address of an endpoint.
type Address struct {
	IP      netip.Addr   `json:"ip"`
	Pool    netip.Prefix `json:"pool"`
	Gateway netip.Addr   `json:"gateway"`
}

// Endpoint is a pod attachment the agent manages.
type Endpoint struct {
	ID           uint32            `json:"id"`
	Identity     uint32            `json:"identity"`
	ContainerID  string            `json:"containerID"`
	IfName       string            `json:"ifName"`
	NetNS        string            `json:"netns"`
	HostIfName   string            `json:"hostIfName"`
	HostIfIndex  int               `json:"hostIfIndex"`
	HostMAC      string            `json:"hostMAC"`
	MAC          string            `json:"mac"`
	PodNamespace string            `json:"podNamespace,omitempty"`
	PodName      string            `json:"podName,omitempty"`
	PodUID       string            `json:"podUID,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Addresses    []Address         `json:"addresses"`
	PolicyFlags  uint32            `json:"policyFlags"`
	CreatedAt    time.Time         `json:"createdAt"`
}

// EndpointList is the answer of GET /v1/endpoints.
type EndpointList struct {
	Endpoints []Endpoint `json:"endpoints"`
}

// DeleteResult is the answer of DELETE /v1/endpoints/...
type DeleteResult struct {
	Found       bool         `json:"found"`
	ReleasedIPs []netip.Addr `json:"releasedIPs,omitempty"`
}

// Attachment names one container interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCRequest lists the attachments that are still valid; everything else
// is removed.
type GCRequest struct {
	ValidAttachments []Attachment `json:"validAttachments"`
}

// GCResult says what GC removed.
type GCResult struct {
	RemovedEndpoints []Attachment `json:"removedEndpoints,omitempty"`
	ReleasedIPs      []netip.Addr `json:"releasedIPs,omitempty"`
}

// IPAMAllocation is one IPAM allocation.
type IPAMAllocation struct {
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifName"`
	IP          netip.Addr `json:"ip"`
	Pool        string     `json:"pool"`
}

// IPAMList is the answer of GET /v1/ipam.
type IPAMList struct {
	Allocations []IPAMAllocation `json:"allocations"`
}

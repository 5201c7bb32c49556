package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Policy metrics, registered in the default Prometheus registry so that
// whichever metrics endpoint the agent serves exports them.
var (
	// PolicyImplementationDelay is the time from a policy object's change
	// being observed to its entries being in the BPF maps.
	PolicyImplementationDelay = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sigil_policy_implementation_delay_seconds",
		Help: "Time from observing a policy change to its entries being written to the BPF maps.",
		// 100µs .. ~13s
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	})
	policyEndpointUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_policy_endpoint_updates_total",
		Help: "Policy map writes per endpoint update, by outcome.",
	}, []string{"outcome"})
	policyConntrackFlushed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sigil_policy_conntrack_flushed_total",
		Help: "Conntrack entries deleted because a policy change now denies their flow.",
	})
)

func init() {
	prometheus.MustRegister(PolicyImplementationDelay, policyEndpointUpdates, policyConntrackFlushed)
}

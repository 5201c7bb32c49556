package datapath

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// MetricSample is a counter of packets and bytes for one reason and direction,
// summed over CPUs.
type MetricSample struct {
	Reason    Reason
	Direction Direction
	Packets   uint64
	Bytes     uint64
}

// EventStats counts flow events that did not reach user space.
type EventStats struct {
	Lost        uint64 // the ring buffer was full
	RateLimited uint64 // allowed-flow events over the configured rate
}

// Metrics reads the per-CPU datapath counters.
type Metrics struct {
	m       *ebpf.Map
	evstats *ebpf.Map
}

// Read returns every non-zero counter.
func (mt *Metrics) Read() ([]MetricSample, error) {
	var out []MetricSample
	for _, r := range Reasons() {
		for _, d := range []Direction{Ingress, Egress} {
			idx := uint32(r)<<1 | uint32(d)
			var perCPU []metricsValue
			if err := mt.m.Lookup(idx, &perCPU); err != nil {
				return nil, fmt.Errorf("metrics map: %w", err)
			}
			s := MetricSample{Reason: r, Direction: d}
			for _, v := range perCPU {
				s.Packets += v.Packets
				s.Bytes += v.Bytes
			}
			if s.Packets != 0 {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// Events returns the counts of events that user space did not get.
func (mt *Metrics) Events() (EventStats, error) {
	var lost, limited []uint64
	if err := mt.evstats.Lookup(uint32(0), &lost); err != nil {
		return EventStats{}, fmt.Errorf("event stats: %w", err)
	}
	if err := mt.evstats.Lookup(uint32(1), &limited); err != nil {
		return EventStats{}, fmt.Errorf("event stats: %w", err)
	}
	var st EventStats
	for _, v := range lost {
		st.Lost += v
	}
	for _, v := range limited {
		st.RateLimited += v
	}
	return st, nil
}

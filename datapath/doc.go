// Package datapath loads Sigil's eBPF programs, pins and reopens their maps,
// attaches the per-endpoint programs to host-side veths (TCX, falling back to
// clsact), and gives typed access to every map.
//
// The C side lives in bpf/; the layouts here mirror bpf/lib/maps.h and a test
// compares them with the compiled object's BTF.
package datapath

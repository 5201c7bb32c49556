// Package lab runs a real multi-node Kubernetes cluster on this machine with
// Sigil installed by its Helm chart: `sigil lab up|down|status|load-image|demo`.
//
// Topology (every address from 198.18.0.0/15, the range reserved for
// benchmark labs; nothing is sent anywhere else):
//
//	<name>-cp      control plane: etcd, kube-apiserver (198.18.0.1:6443),
//	               kube-controller-manager, kube-scheduler; the bridge lab0
//	               that is the nodes' underlay, and their router to <name>-ext
//	<name>-nN      node N (198.18.0.10+N on lab0): its own containerd and
//	               kubelet, which call sigil-cni for every pod
//	<name>-ext     "the outside world": one host, 198.19.254.1, for egress
//	               tests (pods reach it masqueraded to their node's address)
//
// The root network namespace is left alone: `kubectl` reaches the API server
// through a small proxy process listening on 127.0.0.1 in the root namespace
// that dials from inside <name>-cp. Every process the lab starts is recorded
// (PID and start time) in <dir>/lab.json as soon as it starts, so `down`
// stops exactly those, then removes the namespaces, cgroups, mounts and pins
// the lab made and restores the sysctls the kubelet changed, even after a
// failed or interrupted `up`.
package lab

// Package identity derives security labels from pods and namespaces, names
// the reserved identities and allocates numeric identities: cluster-wide
// ones for label sets (through a pluggable Allocator) and node-local ones
// for CIDR prefixes.
package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
)

// Label sources: the part of a label key before the first ':'.
const (
	SourceK8s      = "k8s"
	SourceReserved = "reserved"
	SourceCIDR     = "cidr"
)

// Well-known security label keys (without the source prefix).
const (
	// LabelNamespace holds the pod's namespace name.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// LabelNamespaceLabelsPrefix prefixes each label of the pod's namespace.
	LabelNamespaceLabelsPrefix = "io.kubernetes.pod.namespace.labels."
)

// Labels is a set of security labels keyed by "source:key". Reserved and
// CIDR labels have empty values.
type Labels map[string]string

// K8sKey returns the full key of a Kubernetes-sourced label key.
func K8sKey(key string) string { return SourceK8s + ":" + key }

// String is the canonical form of the set: "source:key=value" pairs sorted
// and joined by ';'. Equal sets have equal strings.
func (l Labels) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(l[k])
	}
	return b.String()
}

// Hash is a stable digest of the canonical form, usable as an object name.
func (l Labels) Hash() string {
	sum := sha256.Sum256([]byte(l.String()))
	return hex.EncodeToString(sum[:16])
}

// Equal reports whether two sets hold the same labels.
func (l Labels) Equal(o Labels) bool {
	if len(l) != len(o) {
		return false
	}
	for k, v := range l {
		if w, ok := o[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Namespace returns the namespace name label, or "".
func (l Labels) Namespace() string { return l[K8sKey(LabelNamespace)] }

// DefaultNoiseLabels are pod label keys that change between replicas or
// revisions of the same workload and so must not split identities.
var DefaultNoiseLabels = []string{
	"pod-template-hash",
	"controller-revision-hash",
	"pod-template-generation",
	"statefulset.kubernetes.io/pod-name",
	"apps.kubernetes.io/pod-index",
	"controller-uid",
	"batch.kubernetes.io/controller-uid",
	"job-name",
	"batch.kubernetes.io/job-name",
	"batch.kubernetes.io/job-completion-index",
}

// Filter turns pod and namespace labels into security labels.
type Filter struct {
	// Noise are pod label keys to drop. A key ending in '/' drops every key
	// with that prefix.
	Noise []string
}

// NewFilter returns a filter dropping DefaultNoiseLabels and extra keys.
func NewFilter(extra ...string) Filter {
	return Filter{Noise: append(append([]string(nil), DefaultNoiseLabels...), extra...)}
}

func (f Filter) noisy(key string) bool {
	for _, n := range f.Noise {
		if key == n || (strings.HasSuffix(n, "/") && strings.HasPrefix(key, n)) {
			return true
		}
	}
	return false
}

// SecurityLabels returns a pod's security labels: its labels minus noise,
// its namespace's labels under LabelNamespaceLabelsPrefix, and the namespace
// name under LabelNamespace. The same inputs give the same set on every node.
func (f Filter) SecurityLabels(namespace string, podLabels, namespaceLabels map[string]string) Labels {
	out := make(Labels, len(podLabels)+len(namespaceLabels)+1)
	for k, v := range podLabels {
		if !f.noisy(k) {
			out[K8sKey(k)] = v
		}
	}
	for k, v := range namespaceLabels {
		out[K8sKey(LabelNamespaceLabelsPrefix+k)] = v
	}
	out[K8sKey(LabelNamespace)] = namespace
	return out
}

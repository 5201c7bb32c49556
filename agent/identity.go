package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sigil-net/sigil/agent/apitypes"

	"github.com/sigil-net/sigil/identity"
)

// LabelSource resolves the security-relevant labels of a pod. Until the
// control plane watches pods, labels come from the ADD request and from a
// local labels directory; the control plane will plug in a source backed by
// the pod informer.
type LabelSource interface {
	PodLabels(req apitypes.EndpointRequest) (map[string]string, error)
}

// IdentityAllocator maps a label set to a numeric security identity.
type IdentityAllocator interface {
	AllocateIdentity(labels map[string]string) (uint32, error)
}

// RequestLabels takes labels from the request, adds the namespace label
// and, when Dir is set, merges Dir/<namespace>/<name>.json (a JSON object of
// labels) if it exists. Keys without a source prefix get "k8s:".
type RequestLabels struct {
	Dir string
}

// NamespaceLabel is the label every pod carries with its namespace.
const NamespaceLabel = "k8s:io.kubernetes.pod.namespace"

func normLabel(k string) string {
	if strings.Contains(k, ":") {
		return k
	}
	return "k8s:" + k
}

// PodLabels implements LabelSource.
func (r RequestLabels) PodLabels(req apitypes.EndpointRequest) (map[string]string, error) {
	out := map[string]string{}
	if r.Dir != "" && req.PodNamespace != "" && req.PodName != "" &&
		!strings.ContainsAny(req.PodNamespace+req.PodName, "/\x00") {
		data, err := os.ReadFile(filepath.Join(r.Dir, req.PodNamespace, req.PodName+".json"))
		if err == nil {
			var m map[string]string
			if err := json.Unmarshal(data, &m); err != nil {
				return nil, fmt.Errorf("labels file for %s/%s: %w", req.PodNamespace, req.PodName, err)
			}
			for k, v := range m {
				out[normLabel(k)] = v
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	for k, v := range req.Labels {
		out[normLabel(k)] = v
	}
	if req.PodNamespace != "" {
		out[NamespaceLabel] = req.PodNamespace
	}
	if len(out) == 0 {
		out["reserved:unlabelled"] = ""
	}
	return out, nil
}

// LabelKey is the canonical string of a label set (identity.Labels.String).
func LabelKey(labels map[string]string) string {
	return identity.Labels(labels).String()
}

// LocalIdentities is a node-local label-set -> identity allocator, IDs from
// 256 up, persisted in a JSON file (written atomically). It is the stand-in
// until the cluster-wide allocator exists; identities are never reused.
type LocalIdentities struct {
	mu   sync.Mutex
	path string
	ids  map[string]uint32
	next uint32
}

// FirstLocalIdentity is the first identity handed out for a label set.
const FirstLocalIdentity = 256

// OpenLocalIdentities loads (or starts) the allocator file.
func OpenLocalIdentities(path string) (*LocalIdentities, error) {
	l := &LocalIdentities{path: path, ids: map[string]uint32{}, next: FirstLocalIdentity}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err == nil {
		if err := json.Unmarshal(data, &l.ids); err != nil {
			return nil, fmt.Errorf("identities file %s: %w", path, err)
		}
	}
	for _, id := range l.ids {
		if id >= l.next {
			l.next = id + 1
		}
	}
	return l, nil
}

// AllocateIdentity implements IdentityAllocator.
func (l *LocalIdentities) AllocateIdentity(labels map[string]string) (uint32, error) {
	key := LabelKey(labels)
	l.mu.Lock()
	defer l.mu.Unlock()
	if id, ok := l.ids[key]; ok {
		return id, nil
	}
	id := l.next
	l.ids[key] = id
	data, _ := json.MarshalIndent(l.ids, "", "  ")
	if err := WriteFileAtomic(l.path, data, 0o600); err != nil {
		delete(l.ids, key)
		return 0, err
	}
	l.next++
	return id, nil
}

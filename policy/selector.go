package policy

import (
	"fmt"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sigil-net/sigil/identity"
)

// Operator is a label requirement operator.
type Operator string

// Operators, as in Kubernetes label selectors.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one condition on a security label, keyed "source:key".
type Requirement struct {
	Key    string
	Op     Operator
	Values []string // sorted; only for In and NotIn
}

func (r Requirement) matches(l identity.Labels) bool {
	v, ok := l[r.Key]
	switch r.Op {
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	case OpIn:
		return ok && contains(r.Values, v)
	case OpNotIn:
		return !ok || !contains(r.Values, v)
	}
	return false
}

func contains(vals []string, v string) bool {
	for _, x := range vals {
		if x == v {
			return true
		}
	}
	return false
}

// Selector is a conjunction of label requirements over security labels.
// The zero Selector matches every label set.
type Selector struct {
	reqs []Requirement
}

// NewSelector returns the selector of the given requirements, normalized
// so that equal selectors have equal String forms.
func NewSelector(reqs ...Requirement) Selector {
	out := make([]Requirement, 0, len(reqs))
	for _, r := range reqs {
		vals := append([]string(nil), r.Values...)
		sort.Strings(vals)
		out = append(out, Requirement{Key: r.Key, Op: r.Op, Values: vals})
	}
	sort.Slice(out, func(i, j int) bool { return reqLess(out[i], out[j]) })
	return Selector{reqs: dedupReqs(out)}
}

func reqLess(a, b Requirement) bool {
	if a.Key != b.Key {
		return a.Key < b.Key
	}
	if a.Op != b.Op {
		return a.Op < b.Op
	}
	return strings.Join(a.Values, ",") < strings.Join(b.Values, ",")
}

func dedupReqs(in []Requirement) []Requirement {
	out := in[:0]
	for i, r := range in {
		if i > 0 && !reqLess(in[i-1], r) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// And returns a selector requiring both s and o.
func (s Selector) And(o Selector) Selector {
	return NewSelector(append(append([]Requirement(nil), s.reqs...), o.reqs...)...)
}

// Matches reports whether the label set satisfies every requirement.
func (s Selector) Matches(l identity.Labels) bool {
	for _, r := range s.reqs {
		if !r.matches(l) {
			return false
		}
	}
	return true
}

// Namespace returns the namespace the selector is limited to, if it has a
// requirement naming exactly one.
func (s Selector) Namespace() (string, bool) {
	key := identity.K8sKey(identity.LabelNamespace)
	for _, r := range s.reqs {
		if r.Key == key && r.Op == OpIn && len(r.Values) == 1 {
			return r.Values[0], true
		}
	}
	return "", false
}

// HasKey reports whether some requirement is about key.
func (s Selector) HasKey(key string) bool {
	for _, r := range s.reqs {
		if r.Key == key {
			return true
		}
	}
	return false
}

// String is the canonical form, e.g. "k8s:app In (web),k8s:tier Exists".
func (s Selector) String() string {
	parts := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		parts[i] = r.Key + " " + string(r.Op)
		if r.Op == OpIn || r.Op == OpNotIn {
			parts[i] += " (" + strings.Join(r.Values, ",") + ")"
		}
	}
	return strings.Join(parts, ",")
}

// LabelKey maps a user-written selector key to a security label key: keys
// without a source get "k8s:", and "any:" is read as "k8s:".
func LabelKey(key string) string {
	src, rest, ok := strings.Cut(key, ":")
	switch {
	case !ok:
		return identity.K8sKey(key)
	case src == "any":
		return identity.K8sKey(rest)
	}
	return key
}

// FromLabelSelector converts a Kubernetes label selector, mapping every key
// through keyFn (LabelKey, or a namespace-label prefixer). A nil selector
// converts to the match-all selector; callers decide what nil means.
func FromLabelSelector(ls *metav1.LabelSelector, keyFn func(string) string) (Selector, error) {
	if ls == nil {
		return Selector{}, nil
	}
	var reqs []Requirement
	for k, v := range ls.MatchLabels {
		reqs = append(reqs, Requirement{Key: keyFn(k), Op: OpIn, Values: []string{v}})
	}
	for _, e := range ls.MatchExpressions {
		op := Operator(e.Operator)
		switch op {
		case OpIn, OpNotIn:
			if len(e.Values) == 0 {
				return Selector{}, fmt.Errorf("selector key %q: operator %s needs values", e.Key, op)
			}
		case OpExists, OpDoesNotExist:
			if len(e.Values) > 0 {
				return Selector{}, fmt.Errorf("selector key %q: operator %s takes no values", e.Key, op)
			}
		default:
			return Selector{}, fmt.Errorf("selector key %q: unknown operator %q", e.Key, e.Operator)
		}
		reqs = append(reqs, Requirement{Key: keyFn(e.Key), Op: op, Values: e.Values})
	}
	return NewSelector(reqs...), nil
}

// NamespaceLabelKey maps a namespace label key to the security label that
// carries it on pods.
func NamespaceLabelKey(key string) string {
	return identity.K8sKey(identity.LabelNamespaceLabelsPrefix + key)
}

// InNamespace is the selector of the pods of one namespace.
func InNamespace(ns string) Selector {
	return NewSelector(Requirement{Key: identity.K8sKey(identity.LabelNamespace), Op: OpIn, Values: []string{ns}})
}

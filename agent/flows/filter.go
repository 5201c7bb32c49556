package flows

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
)

// Filter selects flows. Within one field the values are alternatives (any
// may match); the fields are all required, as in hubble observe. The zero
// Filter matches every flow.
type Filter struct {
	// Pods match either side: "ns/pod", "pod" (any namespace), or "ns/"
	// (every pod of the namespace). A trailing "*" makes the pod name a
	// prefix.
	Pods     []string
	FromPods []string
	ToPods   []string
	// Namespaces match either side.
	Namespaces []string
	// Labels match either side: "key=value" or "key" (any value), with or
	// without a source prefix ("k8s:app=web"). Several labels in one value,
	// comma separated, must all be present on the same side.
	Labels []string
	// Identities match either side; FromIdentities the source, ToIdentities
	// the destination.
	Identities     []uint32
	FromIdentities []uint32
	ToIdentities   []uint32
	// Verdicts: FORWARDED or DROPPED.
	Verdicts []string
	// Protocols: tcp, udp, icmp, sctp (case-insensitive).
	Protocols []string
	// Ports match either side's port.
	Ports []uint16
	// Types: policy-verdict, drop or trace.
	Types []string
	// Reasons match the drop reason, case-insensitive substring
	// ("policy" matches both policy reasons).
	Reasons []string
}

// Query is a flow request: a filter and what to replay.
type Query struct {
	Filter Filter
	// Last replays up to Last buffered flows before following; 0 replays
	// none, a negative value every buffered flow.
	Last int
	// Since drops flows older than Since (zero: no bound).
	Since time.Time
	// Follow keeps the stream open for new flows.
	Follow bool
	// Raw asks for the undecoded events (sigil monitor).
	Raw bool
}

// Valid verdicts, types and protocols for flags and queries.
var (
	Verdicts  = []string{"FORWARDED", "DROPPED"}
	Types     = []string{"policy-verdict", "drop", "trace"}
	Protocols = []string{"tcp", "udp", "icmp", "sctp"}
)

// Validate reports a filter value that could never match.
func (f Filter) Validate() error {
	for _, v := range f.Verdicts {
		if !oneOf(strings.ToUpper(v), Verdicts) {
			return fmt.Errorf("verdict %q: want one of %s", v, strings.Join(Verdicts, ", "))
		}
	}
	for _, t := range f.Types {
		if !oneOf(strings.ToLower(t), Types) {
			return fmt.Errorf("type %q: want one of %s", t, strings.Join(Types, ", "))
		}
	}
	for _, p := range f.Protocols {
		if !oneOf(strings.ToLower(p), Protocols) {
			return fmt.Errorf("protocol %q: want one of %s", p, strings.Join(Protocols, ", "))
		}
	}
	for _, lists := range [][]string{f.Pods, f.FromPods, f.ToPods} {
		for _, p := range lists {
			if p == "" || strings.Count(p, "/") > 1 || p == "/" {
				return fmt.Errorf("pod %q: want pod, namespace/pod or namespace/", p)
			}
		}
	}
	for _, l := range f.Labels {
		if strings.TrimSpace(l) == "" {
			return fmt.Errorf("empty label selector")
		}
	}
	return nil
}

func oneOf(s string, set []string) bool {
	for _, v := range set {
		if s == v {
			return true
		}
	}
	return false
}

// Match reports whether f selects the flow.
func (f *Filter) Match(fl *apitypes.Flow) bool {
	if len(f.Pods) > 0 && !matchPods(f.Pods, &fl.Source) && !matchPods(f.Pods, &fl.Destination) {
		return false
	}
	if len(f.FromPods) > 0 && !matchPods(f.FromPods, &fl.Source) {
		return false
	}
	if len(f.ToPods) > 0 && !matchPods(f.ToPods, &fl.Destination) {
		return false
	}
	if len(f.Namespaces) > 0 && !oneOf(fl.Source.Namespace, f.Namespaces) && !oneOf(fl.Destination.Namespace, f.Namespaces) {
		return false
	}
	if len(f.Labels) > 0 && !matchLabels(f.Labels, fl.Source.Labels) && !matchLabels(f.Labels, fl.Destination.Labels) {
		return false
	}
	if len(f.Identities) > 0 && !hasID(f.Identities, fl.Source.Identity) && !hasID(f.Identities, fl.Destination.Identity) {
		return false
	}
	if len(f.FromIdentities) > 0 && !hasID(f.FromIdentities, fl.Source.Identity) {
		return false
	}
	if len(f.ToIdentities) > 0 && !hasID(f.ToIdentities, fl.Destination.Identity) {
		return false
	}
	if len(f.Verdicts) > 0 && !oneOfFold(fl.Verdict, f.Verdicts) {
		return false
	}
	if len(f.Types) > 0 && !oneOfFold(fl.Type, f.Types) {
		return false
	}
	if len(f.Protocols) > 0 && !oneOfFold(fl.Protocol, f.Protocols) {
		return false
	}
	if len(f.Ports) > 0 && !hasPort(f.Ports, fl) {
		return false
	}
	if len(f.Reasons) > 0 {
		ok := false
		for _, r := range f.Reasons {
			if fl.DropReason != "" && strings.Contains(strings.ToLower(fl.DropReason), strings.ToLower(r)) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func oneOfFold(s string, set []string) bool {
	for _, v := range set {
		if strings.EqualFold(s, v) {
			return true
		}
	}
	return false
}

func hasID(ids []uint32, id uint32) bool {
	for _, v := range ids {
		if v == id {
			return true
		}
	}
	return false
}

func hasPort(ports []uint16, fl *apitypes.Flow) bool {
	if fl.ICMP != nil {
		return false
	}
	for _, p := range ports {
		if fl.Source.Port == p || fl.Destination.Port == p {
			return true
		}
	}
	return false
}

func matchPods(pats []string, ep *apitypes.FlowEndpoint) bool {
	if ep.PodName == "" {
		return false
	}
	for _, p := range pats {
		ns, name, hasNS := strings.Cut(p, "/")
		if !hasNS {
			name, ns = ns, ""
		}
		if hasNS && ns != ep.Namespace {
			continue
		}
		switch {
		case name == "":
			return true // "ns/": every pod of ns
		case strings.HasSuffix(name, "*"):
			if strings.HasPrefix(ep.PodName, strings.TrimSuffix(name, "*")) {
				return true
			}
		case name == ep.PodName:
			return true
		}
	}
	return false
}

// matchLabels reports whether one of the selectors (each a comma-separated
// conjunction) is satisfied by labels ("source:key=value").
func matchLabels(sels []string, labels []string) bool {
	if len(labels) == 0 {
		return false
	}
	for _, sel := range sels {
		all := true
		for _, req := range strings.Split(sel, ",") {
			if !hasLabel(labels, strings.TrimSpace(req)) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

func hasLabel(labels []string, req string) bool {
	key, val, hasVal := strings.Cut(req, "=")
	for _, l := range labels {
		lk, lv, _ := strings.Cut(l, "=")
		if lk != key && !(strings.IndexByte(key, ':') < 0 && stripSource(lk) == key) {
			continue
		}
		if !hasVal || lv == val {
			return true
		}
	}
	return false
}

func stripSource(k string) string {
	if i := strings.IndexByte(k, ':'); i >= 0 {
		return k[i+1:]
	}
	return k
}

// Query parameter names of GET /v1/flows.
const (
	paramFollow       = "follow"
	paramLast         = "last"
	paramSince        = "since"
	paramRaw          = "raw"
	paramPod          = "pod"
	paramFromPod      = "from-pod"
	paramToPod        = "to-pod"
	paramNamespace    = "namespace"
	paramLabel        = "label"
	paramIdentity     = "identity"
	paramFromIdentity = "from-identity"
	paramToIdentity   = "to-identity"
	paramVerdict      = "verdict"
	paramProtocol     = "protocol"
	paramPort         = "port"
	paramType         = "type"
	paramReason       = "reason"
)

// Values encodes q as the query string of GET /v1/flows.
func (q Query) Values() url.Values {
	v := url.Values{}
	if q.Follow {
		v.Set(paramFollow, "1")
	}
	v.Set(paramLast, strconv.Itoa(q.Last))
	if !q.Since.IsZero() {
		v.Set(paramSince, q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Raw {
		v.Set(paramRaw, "1")
	}
	f := q.Filter
	for name, vals := range map[string][]string{paramPod: f.Pods, paramFromPod: f.FromPods, paramToPod: f.ToPods,
		paramNamespace: f.Namespaces, paramLabel: f.Labels, paramVerdict: f.Verdicts, paramProtocol: f.Protocols,
		paramType: f.Types, paramReason: f.Reasons} {
		for _, s := range vals {
			v.Add(name, s)
		}
	}
	for name, ids := range map[string][]uint32{paramIdentity: f.Identities, paramFromIdentity: f.FromIdentities,
		paramToIdentity: f.ToIdentities} {
		for _, id := range ids {
			v.Add(name, strconv.FormatUint(uint64(id), 10))
		}
	}
	for _, p := range f.Ports {
		v.Add(paramPort, strconv.Itoa(int(p)))
	}
	return v
}

// ParseQuery decodes the query string of GET /v1/flows. Without "last",
// a following query replays nothing and a one-shot query every buffered
// flow.
func ParseQuery(v url.Values) (Query, error) {
	var q Query
	var err error
	if q.Follow, err = parseBool(v, paramFollow); err != nil {
		return q, err
	}
	if q.Raw, err = parseBool(v, paramRaw); err != nil {
		return q, err
	}
	q.Last = -1
	if q.Follow {
		q.Last = 0
	}
	if s := v.Get(paramLast); s != "" {
		if q.Last, err = strconv.Atoi(s); err != nil {
			return q, fmt.Errorf("last %q: want a number", s)
		}
	}
	if s := v.Get(paramSince); s != "" {
		if q.Since, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return q, fmt.Errorf("since %q: want an RFC 3339 time", s)
		}
	}
	f := &q.Filter
	f.Pods, f.FromPods, f.ToPods = v[paramPod], v[paramFromPod], v[paramToPod]
	f.Namespaces, f.Labels, f.Verdicts = v[paramNamespace], v[paramLabel], v[paramVerdict]
	f.Protocols, f.Types, f.Reasons = v[paramProtocol], v[paramType], v[paramReason]
	for name, dst := range map[string]*[]uint32{paramIdentity: &f.Identities, paramFromIdentity: &f.FromIdentities,
		paramToIdentity: &f.ToIdentities} {
		for _, s := range v[name] {
			id, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return q, fmt.Errorf("%s %q: want a numeric identity", name, s)
			}
			*dst = append(*dst, uint32(id))
		}
	}
	for _, s := range v[paramPort] {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			return q, fmt.Errorf("port %q: want 1-65535", s)
		}
		f.Ports = append(f.Ports, uint16(p))
	}
	return q, f.Validate()
}

func parseBool(v url.Values, name string) (bool, error) {
	s := v.Get(name)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%s %q: want 1 or 0", name, s)
	}
	return b, nil
}

package policy

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// evalFunc evaluates an endpoint's desired state for one flow direction.
// The default is datapath.EvaluatePolicy (the Go mirror of the C); a BPF
// harness can plug in BPF_PROG_TEST_RUN over the real program.
type evalFunc func(ep EndpointPolicy, dir datapath.Direction, peer datapath.Identity, proto uint8, port uint16) datapath.Reason

func mirrorEval(ep EndpointPolicy, dir datapath.Direction, peer datapath.Identity, proto uint8, port uint16) datapath.Reason {
	r, _ := datapath.EvaluatePolicy(datapath.RuntimeConfig{}, ep.Flags, ep.Entries, dir, peer, proto, port)
	return r
}

type testPod struct {
	ns, name string
	labels   map[string]string
	ip       netip.Addr
	epID     uint32
	id       datapath.Identity
}

// cluster is a fake cluster driving an Engine incrementally, and applying
// every EndpointUpdate to "installed" maps as an agent would.
type cluster struct {
	t         testing.TB
	eng       *Engine
	alloc     *identity.MemoryAllocator
	filter    identity.Filter
	nsLabels  map[string]map[string]string
	pods      map[string]*testPod
	policies  map[PolicyRef]*Policy
	installed map[uint32]EndpointPolicy
	nextEP    uint32
	nextIP    netip.Addr
}

func newCluster(t testing.TB, capacity int) *cluster {
	return &cluster{t: t, eng: NewEngine(Config{Capacity: capacity}), alloc: identity.NewMemoryAllocator(),
		filter: identity.NewFilter(), nsLabels: map[string]map[string]string{}, pods: map[string]*testPod{},
		policies: map[PolicyRef]*Policy{}, installed: map[uint32]EndpointPolicy{}, nextEP: 1,
		nextIP: netip.MustParseAddr("192.168.1.100")}
}

func (c *cluster) apply(ch Changes) {
	for _, u := range ch.Endpoints {
		if u.Removed {
			delete(c.installed, u.ID)
			continue
		}
		cur, ok := c.installed[u.ID]
		if !ok {
			cur.Entries = datapath.PolicyMapEntries{}
		}
		for _, k := range u.Deletes {
			if _, ok := cur.Entries[k]; !ok {
				c.t.Fatalf("endpoint %d: delete of absent key %v", u.ID, k)
			}
			delete(cur.Entries, k)
		}
		for k, v := range u.Upserts {
			cur.Entries[k] = v
		}
		cur.Flags, cur.OverCapacity = u.Flags, u.OverCapacity
		c.installed[u.ID] = cur
	}
}

func (c *cluster) addNamespace(ns string, lbls map[string]string) {
	c.nsLabels[ns] = lbls
}

func (c *cluster) setNamespaceLabels(ns string, lbls map[string]string) {
	c.nsLabels[ns] = lbls
	for _, p := range c.sortedPods() {
		if p.ns == ns {
			c.relabel(p, p.labels)
		}
	}
}

func (c *cluster) deleteNamespace(ns string) {
	for _, p := range c.sortedPods() {
		if p.ns == ns {
			c.deletePod(ns, p.name)
		}
	}
	for ref := range c.policies {
		if ref.Namespace == ns {
			c.deletePolicy(ref)
		}
	}
	delete(c.nsLabels, ns)
}

func (c *cluster) addPod(ns, name string, lbls map[string]string, ip netip.Addr) {
	if !ip.IsValid() {
		ip, c.nextIP = c.nextIP, c.nextIP.Next()
	}
	p := &testPod{ns: ns, name: name, ip: ip, epID: c.nextEP}
	c.nextEP++
	c.pods[ns+"/"+name] = p
	c.relabel(p, lbls)
}

func (c *cluster) relabel(p *testPod, lbls map[string]string) {
	ctx := context.Background()
	old := p.id
	p.labels = lbls
	sec := c.filter.SecurityLabels(p.ns, lbls, c.nsLabels[p.ns])
	id, isNew, err := c.alloc.Allocate(ctx, sec)
	if err != nil {
		c.t.Fatal(err)
	}
	p.id = id
	if isNew {
		ch, err := c.eng.UpsertIdentity(id, sec)
		if err != nil {
			c.t.Fatal(err)
		}
		c.apply(ch)
	}
	ch, err := c.eng.UpsertEndpoint(Endpoint{ID: p.epID, Identity: id, IPs: []netip.Addr{p.ip}, NamedPorts: fixturePorts})
	if err != nil {
		c.t.Fatal(err)
	}
	c.apply(ch)
	if old != 0 {
		c.release(old)
	}
}

func (c *cluster) release(id datapath.Identity) {
	if gone, _ := c.alloc.Release(context.Background(), id); gone {
		c.apply(c.eng.RemoveIdentity(id))
	}
}

func (c *cluster) deletePod(ns, name string) {
	p, ok := c.pods[ns+"/"+name]
	if !ok {
		return
	}
	delete(c.pods, ns+"/"+name)
	c.apply(c.eng.RemoveEndpoint(p.epID))
	c.release(p.id)
}

func (c *cluster) upsertNetworkPolicy(np *networkingv1.NetworkPolicy) {
	p, err := FromNetworkPolicy(np)
	if err != nil {
		c.t.Fatalf("translate %s/%s: %v", np.Namespace, np.Name, err)
	}
	c.upsertPolicy(p)
}

func (c *cluster) upsertPolicy(p *Policy) {
	c.policies[p.Ref] = p
	c.apply(c.eng.UpsertPolicy(p))
}

func (c *cluster) deletePolicy(ref PolicyRef) {
	delete(c.policies, ref)
	c.apply(c.eng.RemovePolicy(ref))
}

func (c *cluster) sortedPods() []*testPod {
	out := make([]*testPod, 0, len(c.pods))
	for _, p := range c.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ns+"/"+out[i].name < out[j].ns+"/"+out[j].name })
	return out
}

// checkConsistent compares the incrementally maintained engine with the
// installed maps (diffs applied) and with a fresh engine built from scratch.
func (c *cluster) checkConsistent() {
	fresh := NewEngine(Config{Capacity: c.eng.capacity})
	ids := map[datapath.Identity]bool{}
	for _, p := range c.sortedPods() {
		if !ids[p.id] {
			lbls, _ := c.alloc.Lookup(p.id)
			if _, err := fresh.UpsertIdentity(p.id, lbls); err != nil {
				c.t.Fatal(err)
			}
			ids[p.id] = true
		}
		if _, err := fresh.UpsertEndpoint(Endpoint{ID: p.epID, Identity: p.id, IPs: []netip.Addr{p.ip}, NamedPorts: fixturePorts}); err != nil {
			c.t.Fatal(err)
		}
	}
	refs := make([]PolicyRef, 0, len(c.policies))
	for ref := range c.policies {
		refs = append(refs, ref)
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].String() < refs[j].String() })
	for _, ref := range refs {
		fresh.UpsertPolicy(c.policies[ref])
	}
	for _, p := range c.sortedPods() {
		inc, _ := c.eng.EndpointPolicy(p.epID)
		fr, _ := fresh.EndpointPolicy(p.epID)
		inst := c.installed[p.epID]
		if !samePolicy(inc, inst) {
			c.t.Fatalf("pod %s/%s: installed (diffs applied) %s != desired %s", p.ns, p.name, dump(inst), dump(inc))
		}
		if inc.Flags != fr.Flags || len(inc.Entries) != len(fr.Entries) {
			c.t.Fatalf("pod %s/%s: incremental %s != fresh %s", p.ns, p.name, dump(inc), dump(fr))
		}
		for k, v := range inc.Entries {
			if w, ok := fr.Entries[k]; !ok || w.Deny != v.Deny {
				c.t.Fatalf("pod %s/%s: incremental %s != fresh %s", p.ns, p.name, dump(inc), dump(fr))
			}
		}
	}
}

func samePolicy(a, b EndpointPolicy) bool {
	if a.Flags != b.Flags || len(a.Entries) != len(b.Entries) {
		return false
	}
	for k, v := range a.Entries {
		if b.Entries[k] != v {
			return false
		}
	}
	return true
}

func dump(p EndpointPolicy) string {
	keys := make([]datapath.PolicyKey, 0, len(p.Entries))
	for k := range p.Entries {
		keys = append(keys, k)
	}
	SortKeys(keys)
	s := fmt.Sprintf("flags=%d over=%v [", p.Flags, p.OverCapacity)
	for _, k := range keys {
		s += fmt.Sprintf("%s deny=%v; ", k, p.Entries[k].Deny)
	}
	return s + "]"
}

// verdict evaluates a pod-to-pod flow with the installed maps.
func (c *cluster) verdict(eval evalFunc, src, dst *testPod, proto uint8, port uint16) bool {
	out := c.installed[src.epID]
	in := c.installed[dst.epID]
	return eval(out, datapath.Egress, dst.id, proto, port) == datapath.ReasonForwarded &&
		eval(in, datapath.Ingress, src.id, proto, port) == datapath.ReasonForwarded
}

// fixturePorts are the container ports of every fixture pod, named as
// cyclonus names them.
var fixturePorts = func() []NamedPort {
	var out []NamedPort
	for _, port := range []uint16{80, 81} {
		for proto, name := range map[uint8]string{datapath.ProtoTCP: "tcp", datapath.ProtoUDP: "udp", datapath.ProtoSCTP: "sctp"} {
			out = append(out, NamedPort{Name: fmt.Sprintf("serve-%d-%s", port, name), Proto: proto, Port: port})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}()

// fixtureIPs: generator pod IP 192.168.1.10 gives ipBlock 192.168.1.0/24
// except 192.168.1.0/28; pods sit inside the except, inside the block,
// and outside it.
var fixtureIPs = map[string]string{
	"x/a": "192.168.1.10", "x/b": "192.168.1.20", "x/c": "192.168.1.5",
	"y/a": "192.168.1.30", "y/b": "192.168.1.8", "y/c": "192.168.2.1",
	"z/a": "192.168.1.40", "z/b": "192.168.1.3", "z/c": "10.0.0.1",
}

func newFixture(t testing.TB) *cluster {
	c := newCluster(t, DefaultCapacity)
	for _, ns := range []string{"x", "y", "z"} {
		c.addNamespace(ns, map[string]string{"ns": ns})
		for _, pod := range []string{"a", "b", "c"} {
			c.addPod(ns, pod, map[string]string{"pod": pod}, netip.MustParseAddr(fixtureIPs[ns+"/"+pod]))
		}
	}
	return c
}

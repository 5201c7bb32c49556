package agent

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/policy"
)

// TestEnforcerCapacityFailsClosed drives the enforcer against real BPF
// maps: an endpoint whose policy needs more entries than its map holds is
// failed closed (both directions enforced, no entries), and recovers when
// the policy shrinks. The endpoint is registered the way the manager does
// (PolicyFlags, then the wrapped datapath's writes).
func TestEnforcerCapacityFailsClosed(t *testing.T) {
	h := dt.New(t, datapath.Config{})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	enf, err := NewEnforcer(EnforcerConfig{Datapath: NewBPFDatapath(h.Datapath), Capacity: 4, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	enf.MarkSynced()
	web := identity.Labels{"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "ns"}
	cli := identity.Labels{"k8s:app": "cli", "k8s:io.kubernetes.pod.namespace": "ns"}
	if err := enf.UpsertIdentity(300, web); err != nil {
		t.Fatal(err)
	}
	if err := enf.UpsertIdentity(301, cli); err != nil {
		t.Fatal(err)
	}

	ip := netip.MustParseAddr("198.18.3.2")
	ep := &apitypes.Endpoint{ID: 7, Identity: 300, ContainerID: "c", IfName: "eth0", PodNamespace: "ns", PodName: "web",
		Addresses: []apitypes.Address{{IP: ip}}}
	flags := enf.PolicyFlags(ep)
	if flags != 0 {
		t.Fatalf("flags of an unselected endpoint %d, want 0", flags)
	}
	w := enf.Datapath()
	if err := w.UpsertLocalIdentity(ip, 300); err != nil {
		t.Fatal(err)
	}
	if err := w.SyncPolicy(7); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:07")
	if err := w.UpsertEndpoint(ip, EndpointInfo{ID: 7, IfIndex: 1, Identity: 300, Flags: flags, MAC: mac, NodeMAC: mac}); err != nil {
		t.Fatal(err)
	}

	ports := func(n int) []policy.PortSpec {
		var out []policy.PortSpec
		for i := 0; i < n; i++ {
			p := uint16(1000 + 2*i) // not mergeable into one prefix
			out = append(out, policy.PortSpec{Proto: datapath.ProtoTCP, Lo: p, Hi: p})
		}
		return out
	}
	subject := policy.NewSelector(policy.Requirement{Key: "k8s:app", Op: policy.OpIn, Values: []string{"web"}})
	peer := policy.Peer{Kind: policy.PeerLabels, Selector: policy.NewSelector(policy.Requirement{Key: "k8s:app", Op: policy.OpIn, Values: []string{"cli"}})}
	pol := func(n int) *policy.Policy {
		p := &policy.Policy{Ref: policy.PolicyRef{Kind: policy.KindSigilNetworkPolicy, Namespace: "ns", Name: "p"}, Subject: subject,
			Rules: []policy.Rule{{Direction: datapath.Ingress, Peers: []policy.Peer{peer}, Ports: ports(n)}}}
		p.Enforce[datapath.Ingress] = true
		return p
	}
	check := func(wantFlags datapath.EndpointFlags, wantEntries int) {
		t.Helper()
		e, err := h.Endpoints.Lookup(ip)
		if err != nil {
			t.Fatal(err)
		}
		entries, err := h.Policy.List(7)
		if err != nil {
			t.Fatal(err)
		}
		if e.Flags != wantFlags || len(entries) != wantEntries || e.Identity != 300 {
			t.Fatalf("endpoint %+v with %d entries %v, want flags %d and %d entries", e, len(entries), entries, wantFlags, wantEntries)
		}
		if got, ok := enf.Endpoint(7); !ok || got.Flags != wantFlags {
			t.Fatalf("enforcer's view %+v", got)
		}
	}

	enf.UpsertPolicy(pol(3), time.Now())
	check(datapath.EndpointEnforceIngress, 3)
	enf.UpsertPolicy(pol(6), time.Now()) // over the capacity of 4
	check(FailClosedFlags, 0)
	enf.UpsertPolicy(pol(2), time.Now())
	check(datapath.EndpointEnforceIngress, 2)
	enf.RemovePolicy(pol(2).Ref, time.Now())
	check(0, 0)

	// The endpoint's removal forgets it and deletes its map.
	if err := w.RemovePolicy(7); err != nil {
		t.Fatal(err)
	}
	if _, ok := enf.Endpoint(7); ok || h.Policy.Has(7) {
		t.Fatal("endpoint still known after RemovePolicy")
	}
}

package identity

import (
	"context"
	"net/netip"
	"testing"

	"github.com/sigil-net/sigil/datapath"
)

func TestSecurityLabels(t *testing.T) {
	f := NewFilter("example.com/")
	got := f.SecurityLabels("prod",
		map[string]string{"app": "web", "pod-template-hash": "abc", "controller-revision-hash": "1", "example.com/build": "7"},
		map[string]string{"team": "a", "kubernetes.io/metadata.name": "prod"})
	want := Labels{
		"k8s:app":                         "web",
		"k8s:io.kubernetes.pod.namespace": "prod",
		"k8s:io.kubernetes.pod.namespace.labels.team":                        "a",
		"k8s:io.kubernetes.pod.namespace.labels.kubernetes.io/metadata.name": "prod",
	}
	if !got.Equal(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got.Namespace() != "prod" {
		t.Fatalf("namespace %q", got.Namespace())
	}
	// Replicas differing only in noise get the same canonical form.
	other := f.SecurityLabels("prod", map[string]string{"app": "web", "pod-template-hash": "zzz"},
		map[string]string{"team": "a", "kubernetes.io/metadata.name": "prod"})
	if other.String() != got.String() || other.Hash() != got.Hash() {
		t.Fatalf("noise split the identity: %s vs %s", other, got)
	}
}

func TestMemoryAllocator(t *testing.T) {
	ctx := context.Background()
	a := NewMemoryAllocator()
	l1 := Labels{"k8s:app": "a"}
	id1, isNew, err := a.Allocate(ctx, l1)
	if err != nil || !isNew || id1 != datapath.IdentityClusterMin {
		t.Fatalf("first: %d %v %v", id1, isNew, err)
	}
	id1b, isNew, _ := a.Allocate(ctx, Labels{"k8s:app": "a"})
	if id1b != id1 || isNew {
		t.Fatalf("same labels got %d new=%v", id1b, isNew)
	}
	id2, _, _ := a.Allocate(ctx, Labels{"k8s:app": "b"})
	if id2 == id1 || KindOf(id2) != KindCluster {
		t.Fatalf("second identity %d", id2)
	}
	if rel, _ := a.Release(ctx, id1); rel {
		t.Fatal("released with a reference left")
	}
	if rel, _ := a.Release(ctx, id1); !rel {
		t.Fatal("not released at the last reference")
	}
	if _, ok := a.Lookup(id1); ok {
		t.Fatal("lookup after release")
	}
	if _, err := a.Release(ctx, id1); err == nil {
		t.Fatal("double release accepted")
	}
}

func TestCIDRAllocatorAndKinds(t *testing.T) {
	a := NewCIDRAllocator()
	p := netip.MustParsePrefix("10.1.2.3/8")
	id, isNew, err := a.Allocate(p)
	if err != nil || !isNew || KindOf(id) != KindLocal {
		t.Fatalf("%d %v %v", id, isNew, err)
	}
	if got, _ := a.Prefix(id); got != netip.MustParsePrefix("10.0.0.0/8") {
		t.Fatalf("prefix %v", got)
	}
	if id2, isNew, _ := a.Allocate(netip.MustParsePrefix("10.0.0.0/8")); id2 != id || isNew {
		t.Fatal("same prefix, other identity")
	}
	if _, rel := a.Release(p); rel {
		t.Fatal("released early")
	}
	if _, rel := a.Release(p); !rel {
		t.Fatal("not released")
	}
	for id, want := range map[datapath.Identity]Kind{0: KindAny, datapath.IdentityWorld: KindReserved,
		300: KindCluster, datapath.IdentityLocalFlag | 5: KindLocal} {
		if KindOf(id) != want {
			t.Errorf("KindOf(%d)=%d want %d", id, KindOf(id), want)
		}
	}
	if id, ok := ReservedByName("remote-node"); !ok || id != datapath.IdentityRemoteNode || ReservedName(id) != "remote-node" {
		t.Fatal("reserved names")
	}
	if l := CIDRLabels(p); len(l) != 2 {
		t.Fatalf("cidr labels %v", l)
	}
}

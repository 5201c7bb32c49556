package identityalloc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

func TestMain(m *testing.M) { os.Exit(k8stest.Run(m)) }

// run makes label sets unique per run, so -count=N reruns against the
// package's shared API server start afresh.
var run = fmt.Sprint(time.Now().UnixNano())

func labelSet(test string, i int) identity.Labels {
	return identity.Labels{
		"k8s:run":                                run,
		"k8s:test":                               test,
		"k8s:app":                                fmt.Sprintf("app-%d", i),
		identity.K8sKey(identity.LabelNamespace): "default",
	}
}

// identitiesOf lists the SigilIdentities whose labels carry k8s:test=test.
func identitiesOf(t *testing.T, c client.Client, test string) []sigilv1.SigilIdentity {
	t.Helper()
	var list sigilv1.SigilIdentityList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	var out []sigilv1.SigilIdentity
	for _, it := range list.Items {
		if it.Spec.SecurityLabels["k8s:test"] == test && it.Spec.SecurityLabels["k8s:run"] == run {
			out = append(out, it)
		}
	}
	return out
}

// clients returns n independent uncached clients, as n agents would have.
func clients(t *testing.T, n int) []client.Client {
	t.Helper()
	e := k8stest.StartEnv(t)
	out := make([]client.Client, n)
	for i := range out {
		c, err := client.New(e.Config, client.Options{Scheme: e.Scheme})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = c
	}
	return out
}

// TestConcurrentConverge: 10 racers per label set, 20 sets, each racer with
// its own client: exactly 20 identities, one per set, all distinct.
func TestConcurrentConverge(t *testing.T) {
	cs := clients(t, 10)
	ctx := context.Background()
	const sets, racers = 20, 10
	got := make([][racers]datapath.Identity, sets)
	var wg sync.WaitGroup
	errs := make(chan error, sets*racers)
	for s := 0; s < sets; s++ {
		for r := 0; r < racers; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := identityalloc.Allocate(ctx, cs[r], labelSet("converge", s))
				if err != nil {
					errs <- err
					return
				}
				got[s][r] = id
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[datapath.Identity]int{}
	for s := range got {
		for r := range got[s] {
			if got[s][r] != got[s][0] {
				t.Fatalf("set %d: racers got %d and %d", s, got[s][0], got[s][r])
			}
		}
		if prev, dup := seen[got[s][0]]; dup {
			t.Fatalf("sets %d and %d share identity %d", prev, s, got[s][0])
		}
		seen[got[s][0]] = s
	}
	objs := identitiesOf(t, cs[0], "converge")
	if len(objs) != sets {
		t.Fatalf("%d SigilIdentities, want %d", len(objs), sets)
	}
	for _, o := range objs {
		if o.Labels[identityalloc.LabelLabelsHash] != identity.Labels(o.Spec.SecurityLabels).Hash() {
			t.Errorf("%s: label %s=%q, want the labels' hash", o.Name, identityalloc.LabelLabelsHash, o.Labels[identityalloc.LabelLabelsHash])
		}
	}
	// Lookup agrees with Allocate and does not create.
	for s := 0; s < sets; s++ {
		id, ok, err := identityalloc.Lookup(ctx, cs[0], labelSet("converge", s))
		if err != nil || !ok || id != got[s][0] {
			t.Fatalf("Lookup(set %d) = %d, %v, %v; want %d", s, id, ok, err, got[s][0])
		}
	}
	if _, ok, err := identityalloc.Lookup(ctx, cs[0], labelSet("converge", 999)); err != nil || ok {
		t.Fatalf("Lookup of an unallocated set: ok=%v err=%v", ok, err)
	}
}

// TestCollisionsAndExhaustion: a range of 8 IDs and 8 label sets allocated
// concurrently by two clients forces candidate collisions; every set gets a
// distinct ID, and a ninth set finds the range exhausted.
func TestCollisionsAndExhaustion(t *testing.T) {
	cs := clients(t, 2)
	ctx := context.Background()
	r := identityalloc.Range{Min: 70000, Max: 70007}
	cleanRange(t, cs[0], r)
	ids := make([][2]datapath.Identity, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for s := 0; s < 8; s++ {
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := r.Allocate(ctx, cs[k], labelSet("exhaust", s))
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				ids[s][k] = id
			}()
		}
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	seen := map[datapath.Identity]bool{}
	for s, pair := range ids {
		if pair[0] != pair[1] {
			t.Fatalf("set %d: clients got %d and %d", s, pair[0], pair[1])
		}
		if pair[0] < r.Min || pair[0] > r.Max || seen[pair[0]] {
			t.Fatalf("set %d: identity %d out of range or duplicated (%v)", s, pair[0], ids)
		}
		seen[pair[0]] = true
	}
	_, err := r.Allocate(ctx, cs[0], labelSet("exhaust", 8))
	if !errors.Is(err, identityalloc.ErrExhausted) {
		t.Fatalf("ninth set: err = %v, want ErrExhausted", err)
	}
	if n := len(identitiesOf(t, cs[0], "exhaust")); n != 8 {
		t.Fatalf("%d identities, want 8", n)
	}
}

// TestClaimRacesGC: reusing an identity the GC marked unused clears the
// mark with a conditioned update, so the GC's conditioned delete of the
// version it saw fails; and an identity deleted by the GC is allocated anew.
func TestClaimRacesGC(t *testing.T) {
	c := clients(t, 1)[0]
	ctx := context.Background()
	lbls := labelSet("claim", 0)
	id, err := identityalloc.Allocate(ctx, c, lbls)
	if err != nil {
		t.Fatal(err)
	}
	var obj sigilv1.SigilIdentity
	key := client.ObjectKey{Name: identityalloc.Name(id)}
	if err := c.Get(ctx, key, &obj); err != nil {
		t.Fatal(err)
	}
	obj.Annotations = map[string]string{identityalloc.AnnotationUnusedSince: time.Now().Add(-time.Hour).Format(time.RFC3339)}
	if err := c.Update(ctx, &obj); err != nil {
		t.Fatal(err)
	}
	gcSaw := obj.ResourceVersion
	// An agent reuses it.
	if again, err := identityalloc.Allocate(ctx, c, lbls); err != nil || again != id {
		t.Fatalf("reuse: %d, %v; want %d", again, err, id)
	}
	if err := c.Get(ctx, key, &obj); err != nil {
		t.Fatal(err)
	}
	if _, marked := obj.Annotations[identityalloc.AnnotationUnusedSince]; marked {
		t.Fatal("reuse left the unused mark")
	}
	// The GC's delete, conditioned on what it saw, must fail.
	err = c.Delete(ctx, &obj, client.Preconditions{ResourceVersion: &gcSaw})
	if !apierrors.IsConflict(err) {
		t.Fatalf("GC delete after reuse: %v, want Conflict", err)
	}
	// Once really deleted, the same labels get an identity again.
	if err := c.Delete(ctx, &obj); err != nil {
		t.Fatal(err)
	}
	if again, err := identityalloc.Allocate(ctx, c, lbls); err != nil || again != id {
		t.Fatalf("after deletion: %d, %v; want %d again (same first candidate)", again, err, id)
	}
}

// TestForeignOccupant: a candidate held by other labels (an object made
// without the hash label, e.g. by an older version) is skipped.
func TestForeignOccupant(t *testing.T) {
	c := clients(t, 1)[0]
	ctx := context.Background()
	lbls := labelSet("foreign", 0)
	r := identityalloc.Range{Min: 80000, Max: 80099}
	cleanRange(t, c, r)
	cand := r.Candidate(lbls)
	squatter := &sigilv1.SigilIdentity{}
	squatter.Name = identityalloc.Name(cand)
	squatter.Spec = sigilv1.SigilIdentitySpec{ID: int64(cand), SecurityLabels: labelSet("foreign", 1)}
	if err := c.Create(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	id, err := r.Allocate(ctx, c, lbls)
	if err != nil {
		t.Fatal(err)
	}
	want := cand + 1
	if want > r.Max {
		want = r.Min
	}
	if id != want {
		t.Fatalf("got %d, want the next ID %d", id, want)
	}
	if got, ok, err := r.Lookup(ctx, c, lbls); err != nil || !ok || got != id {
		t.Fatalf("Lookup: %d %v %v", got, ok, err)
	}
}

// cleanRange deletes the identities of r, left by an earlier -count run.
func cleanRange(t *testing.T, c client.Client, r identityalloc.Range) {
	t.Helper()
	var list sigilv1.SigilIdentityList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if id := datapath.Identity(list.Items[i].Spec.ID); id >= r.Min && id <= r.Max {
			if err := c.Delete(context.Background(), &list.Items[i]); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
}

func TestCandidateStable(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    identityalloc.Range
	}{
		{"default", identityalloc.DefaultRange},
		{"small", identityalloc.Range{Min: 300, Max: 301}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.r.Candidate(identity.Labels{"k8s:app": "x", "k8s:b": "y"})
			b := tc.r.Candidate(identity.Labels{"k8s:b": "y", "k8s:app": "x"})
			if a != b || a < tc.r.Min || a > tc.r.Max {
				t.Fatalf("candidates %d, %d", a, b)
			}
		})
	}
}

// Package identityalloc allocates cluster-wide security identities as
// SigilIdentity objects. The operator and every agent call it; the API
// server's optimistic concurrency, not a local counter, decides who wins.
//
// Algorithm (shared by every caller, so they agree without talking):
//
//   - the first candidate ID of a label set is Min + h mod (Max-Min+1), with
//     h taken from the label set's canonical hash (identity.Labels.Hash);
//   - the SigilIdentity named after the candidate is read: if it holds the
//     same labels, that is the identity; if it does not exist, it is
//     created (named after the decimal ID, labeled sigil.io/labels-hash);
//   - if the candidate holds other labels, the identities labeled with the
//     label set's hash are listed and the lowest one is reused; if there is
//     none, IDs after the candidate are probed in order (wrapping around)
//     the same way: Create, and on AlreadyExists read it and compare.
//
// Two racers with the same labels start from the same candidate and so
// converge on one object: whoever's Create loses reads the winner's object
// and reuses it.
//
// Garbage collection (done by the operator) first marks an unused identity
// with the annotation sigil.io/unused-since and deletes it only after a
// grace period, with the resourceVersion it saw as a precondition.
// Allocate clears that mark (an update conditioned on the resourceVersion)
// before reusing a marked identity, so a reuse and a deletion cannot both
// succeed: one of them gets a Conflict and the allocation is retried.
package identityalloc

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

const (
	// LabelLabelsHash is the label holding identity.Labels.Hash of the
	// security labels, on SigilIdentity and SigilEndpoint objects.
	LabelLabelsHash = "sigil.io/labels-hash"
	// AnnotationUnusedSince marks an identity no endpoint uses, with the
	// RFC 3339 time (with fractional seconds) the operator first saw it unused.
	AnnotationUnusedSince = "sigil.io/unused-since"

	// MinID is the first cluster identity.
	MinID = datapath.IdentityClusterMin
	// MaxID is the last identity this allocator hands out.
	MaxID datapath.Identity = 65535
)

// ErrExhausted is returned when every ID of the range holds other labels.
var ErrExhausted = errors.New("identityalloc: identity range exhausted")

// Range is an inclusive range of identities to allocate from.
type Range struct {
	Min, Max datapath.Identity
}

// DefaultRange is MinID..MaxID.
var DefaultRange = Range{Min: MinID, Max: MaxID}

// size is the number of IDs in the range.
func (r Range) size() uint64 { return uint64(r.Max-r.Min) + 1 }

// maxAttempts bounds the retries after conflicts (a racing deletion, a
// reader's cache lagging a Create).
const maxAttempts = 20

// Allocate returns the identity of lbls in DefaultRange, creating its
// SigilIdentity if needed. c should read from the API server directly; a
// cached client works too, at the cost of retries when its cache lags.
func Allocate(ctx context.Context, c client.Client, lbls identity.Labels) (datapath.Identity, error) {
	return DefaultRange.Allocate(ctx, c, lbls)
}

// Lookup returns the existing identity of lbls without creating or
// changing anything.
func Lookup(ctx context.Context, c client.Reader, lbls identity.Labels) (datapath.Identity, bool, error) {
	return DefaultRange.Lookup(ctx, c, lbls)
}

// Candidate returns the first ID Allocate tries for lbls in r.
func (r Range) Candidate(lbls identity.Labels) datapath.Identity {
	return r.candidate(lbls.Hash())
}

func (r Range) candidate(hash string) datapath.Identity {
	raw, err := hex.DecodeString(hash)
	var h uint64
	if err == nil && len(raw) >= 8 {
		h = binary.BigEndian.Uint64(raw[:8])
	}
	return r.Min + datapath.Identity(h%r.size())
}

// Name returns the SigilIdentity object name of an ID.
func Name(id datapath.Identity) string { return strconv.FormatUint(uint64(id), 10) }

// Labels returns the security labels of a SigilIdentity.
func Labels(obj *sigilv1.SigilIdentity) identity.Labels { return obj.Spec.SecurityLabels }

// Lookup returns the existing identity of lbls in r without creating or
// changing anything.
func (r Range) Lookup(ctx context.Context, c client.Reader, lbls identity.Labels) (datapath.Identity, bool, error) {
	obj, err := r.find(ctx, c, lbls)
	if err != nil || obj == nil {
		return 0, false, err
	}
	return datapath.Identity(obj.Spec.ID), true, nil
}

// find returns the SigilIdentity of lbls: the first candidate if it holds
// lbls, else the lowest-numbered one labeled with their hash.
func (r Range) find(ctx context.Context, c client.Reader, lbls identity.Labels) (*sigilv1.SigilIdentity, error) {
	hash := lbls.Hash()
	var obj sigilv1.SigilIdentity
	err := c.Get(ctx, client.ObjectKey{Name: Name(r.candidate(hash))}, &obj)
	switch {
	case err == nil && Labels(&obj).Equal(lbls):
		return &obj, nil
	case err != nil && !apierrors.IsNotFound(err):
		return nil, err
	}
	var list sigilv1.SigilIdentityList
	if err := c.List(ctx, &list, client.MatchingLabels{LabelLabelsHash: hash}); err != nil {
		return nil, err
	}
	var best *sigilv1.SigilIdentity
	for i := range list.Items {
		it := &list.Items[i]
		if it.DeletionTimestamp == nil && Labels(it).Equal(lbls) && (best == nil || it.Spec.ID < best.Spec.ID) {
			best = it
		}
	}
	return best, nil
}

// Allocate returns the identity of lbls in r, creating its SigilIdentity
// if needed.
func (r Range) Allocate(ctx context.Context, c client.Client, lbls identity.Labels) (datapath.Identity, error) {
	if len(lbls) == 0 {
		return 0, errors.New("identityalloc: empty label set")
	}
	if r.Min < MinID || r.Max < r.Min || r.Max > identity.ClusterMax {
		return 0, fmt.Errorf("identityalloc: bad range %d..%d", r.Min, r.Max)
	}
	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return 0, err
			}
		}
		obj, err := r.find(ctx, c, lbls)
		if err != nil {
			return 0, err
		}
		if obj != nil {
			if err := claim(ctx, c, obj); err != nil {
				if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
					lastErr = err // raced with the garbage collector
					continue
				}
				return 0, err
			}
			return datapath.Identity(obj.Spec.ID), nil
		}
		id, retry, err := r.create(ctx, c, lbls)
		if retry {
			lastErr = err
			continue
		}
		return id, err
	}
	return 0, fmt.Errorf("identityalloc: no stable result after %d attempts: %w", maxAttempts, lastErr)
}

// claim clears the garbage collector's unused mark, if any, with an update
// conditioned on the resourceVersion the caller read.
func claim(ctx context.Context, c client.Client, obj *sigilv1.SigilIdentity) error {
	if _, marked := obj.Annotations[AnnotationUnusedSince]; !marked {
		return nil
	}
	upd := obj.DeepCopy()
	delete(upd.Annotations, AnnotationUnusedSince)
	return c.Update(ctx, upd) // carries obj's resourceVersion: Conflict if it changed
}

// create probes IDs from the candidate on; retry reports a race worth
// starting over for (an object seen by Create but not by Get).
func (r Range) create(ctx context.Context, c client.Client, lbls identity.Labels) (datapath.Identity, bool, error) {
	hash := lbls.Hash()
	first := r.candidate(hash)
	var taken map[datapath.Identity]bool // filled by one List after many collisions
	for i := uint64(0); i < r.size(); i++ {
		id := r.Min + datapath.Identity((uint64(first-r.Min)+i)%r.size())
		if taken != nil && taken[id] {
			continue
		}
		obj := newIdentity(id, lbls, hash)
		err := c.Create(ctx, obj)
		if err == nil {
			return id, false, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return 0, false, err
		}
		var cur sigilv1.SigilIdentity
		if err := c.Get(ctx, client.ObjectKey{Name: obj.Name}, &cur); err != nil {
			if apierrors.IsNotFound(err) {
				return 0, true, fmt.Errorf("identity %d vanished or is not cached yet: %w", id, err)
			}
			return 0, false, err
		}
		if Labels(&cur).Equal(lbls) {
			if err := claim(ctx, c, &cur); err != nil {
				return 0, apierrors.IsConflict(err) || apierrors.IsNotFound(err), err
			}
			return id, false, nil
		}
		if i == 16 && taken == nil {
			// A crowded range: skip known-taken IDs instead of paying a
			// Create and a Get for each. IDs are still only taken by a
			// successful Create, so a stale list costs no correctness.
			var list sigilv1.SigilIdentityList
			if err := c.List(ctx, &list); err != nil {
				return 0, false, err
			}
			taken = make(map[datapath.Identity]bool, len(list.Items))
			for j := range list.Items {
				if Labels(&list.Items[j]).Equal(lbls) {
					return datapath.Identity(list.Items[j].Spec.ID), true, nil // a racer won: start over
				}
				taken[datapath.Identity(list.Items[j].Spec.ID)] = true
			}
		}
	}
	return 0, false, fmt.Errorf("%w: %d..%d all hold other labels", ErrExhausted, r.Min, r.Max)
}

func newIdentity(id datapath.Identity, lbls identity.Labels, hash string) *sigilv1.SigilIdentity {
	cp := make(map[string]string, len(lbls))
	for k, v := range lbls {
		cp[k] = v
	}
	return &sigilv1.SigilIdentity{
		ObjectMeta: metav1.ObjectMeta{Name: Name(id), Labels: map[string]string{LabelLabelsHash: hash}},
		Spec:       sigilv1.SigilIdentitySpec{ID: int64(id), SecurityLabels: cp},
	}
}

func backoff(ctx context.Context, attempt int) error {
	d := time.Duration(attempt) * 20 * time.Millisecond
	if d > 250*time.Millisecond {
		d = 250 * time.Millisecond
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

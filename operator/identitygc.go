package operator

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/operator/identityalloc"
)

// IdentityGC deletes SigilIdentities that no live pod and no SigilEndpoint
// has used for Grace. An identity is in use when a SigilEndpoint names it,
// or when a live, non-hostNetwork pod has its security labels (this covers
// pods an agent is setting up before they have IPs). The first sweep that
// finds an identity unused marks it with identityalloc.AnnotationUnusedSince;
// a later sweep past Grace deletes it conditioned on the resourceVersion it
// read, so a concurrent reuse (which clears the mark) wins.
type IdentityGC struct {
	Client   client.Client
	Filter   identity.Filter
	Grace    time.Duration
	Interval time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// GCStats counts what a sweep did.
type GCStats struct {
	Identities, InUse, Marked, Unmarked, Deleted int
}

// NeedLeaderElection makes the GC run on the leader only.
func (g *IdentityGC) NeedLeaderElection() bool { return true }

// Start sweeps every Interval until ctx ends.
func (g *IdentityGC) Start(ctx context.Context) error {
	lg := log.FromContext(ctx).WithName("identity-gc")
	t := time.NewTicker(g.Interval)
	defer t.Stop()
	for {
		st, err := g.Sweep(ctx)
		if err != nil {
			lg.Error(err, "identity GC sweep")
		} else if st.Marked+st.Unmarked+st.Deleted > 0 {
			lg.Info("identity GC sweep", "identities", st.Identities, "inUse", st.InUse,
				"marked", st.Marked, "unmarked", st.Unmarked, "deleted", st.Deleted)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (g *IdentityGC) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}
	return time.Now()
}

// Sweep runs one garbage collection pass.
func (g *IdentityGC) Sweep(ctx context.Context) (GCStats, error) {
	var st GCStats
	usedHash, usedID, err := g.inUse(ctx)
	if err != nil {
		return st, err
	}
	var ids sigilv1.SigilIdentityList
	if err := g.Client.List(ctx, &ids); err != nil {
		return st, err
	}
	now := g.now()
	st.Identities = len(ids.Items)
	for i := range ids.Items {
		obj := &ids.Items[i]
		if obj.DeletionTimestamp != nil {
			continue
		}
		used := usedID[datapath.Identity(obj.Spec.ID)] || usedHash[identity.Labels(obj.Spec.SecurityLabels).Hash()]
		mark, marked := obj.Annotations[identityalloc.AnnotationUnusedSince]
		since, perr := time.Parse(time.RFC3339, mark)
		var err error
		switch {
		case used:
			st.InUse++
			if marked {
				upd := obj.DeepCopy()
				delete(upd.Annotations, identityalloc.AnnotationUnusedSince)
				if err = g.Client.Update(ctx, upd); err == nil {
					st.Unmarked++
				}
			}
		case !marked || perr != nil:
			upd := obj.DeepCopy()
			if upd.Annotations == nil {
				upd.Annotations = map[string]string{}
			}
			upd.Annotations[identityalloc.AnnotationUnusedSince] = now.UTC().Format(time.RFC3339Nano)
			if err = g.Client.Update(ctx, upd); err == nil {
				st.Marked++
			}
		case now.Sub(since) >= g.Grace:
			rv, uid := obj.ResourceVersion, obj.UID
			if err = g.Client.Delete(ctx, obj, client.Preconditions{ResourceVersion: &rv, UID: &uid}); err == nil {
				st.Deleted++
			}
		}
		// Conflict: someone reused or changed it since we read; NotFound:
		// already gone. Both are settled by the next sweep.
		if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return st, err
		}
	}
	return st, nil
}

// inUse returns the label hashes of live pods and the identities named by
// SigilEndpoints.
func (g *IdentityGC) inUse(ctx context.Context) (map[string]bool, map[datapath.Identity]bool, error) {
	var nss corev1.NamespaceList
	if err := g.Client.List(ctx, &nss); err != nil {
		return nil, nil, err
	}
	nsLabels := make(map[string]map[string]string, len(nss.Items))
	for i := range nss.Items {
		nsLabels[nss.Items[i].Name] = nss.Items[i].Labels
	}
	var pods corev1.PodList
	if err := g.Client.List(ctx, &pods); err != nil {
		return nil, nil, err
	}
	hashes := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if PodManaged(p) {
			hashes[g.Filter.SecurityLabels(p.Namespace, p.Labels, nsLabels[p.Namespace]).Hash()] = true
		}
	}
	var eps sigilv1.SigilEndpointList
	if err := g.Client.List(ctx, &eps); err != nil {
		return nil, nil, err
	}
	ids := make(map[datapath.Identity]bool, len(eps.Items))
	for i := range eps.Items {
		ids[datapath.Identity(eps.Items[i].Status.Identity)] = true
		if h := eps.Items[i].Status.LabelsHash; h != "" {
			hashes[h] = true
		}
	}
	return hashes, ids, nil
}

package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// unresolvedLabel marks a label set built without the pod's API object; no
// SigilIdentity ever carries it, so such a set resolves to init.
const unresolvedLabel = "reserved:init"

// LabelSource returns the endpoint manager's label hook: a new endpoint's
// labels are its pod's security labels from the informer cache; when the
// pod is not cached yet, the request's labels marked unresolved.
func (c *Controller) LabelSource() agent.LabelSource { return labelSource{c} }

type labelSource struct{ c *Controller }

func (l labelSource) PodLabels(req apitypes.EndpointRequest) (map[string]string, error) {
	if l.c.cacheSynced() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if lbls, _, ok, err := l.c.securityLabels(ctx, req.PodNamespace, req.PodName); err == nil && ok {
			return lbls, nil
		}
	}
	out, err := agent.RequestLabels{}.PodLabels(req)
	if err != nil {
		return nil, err
	}
	out[unresolvedLabel] = ""
	return out, nil
}

func (c *Controller) cacheSynced() bool {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	return c.cacheSync
}

// IdentityAllocator returns the endpoint manager's identity hook: the
// identity of the label set if the cache has it, else init (the
// reconciler resolves or allocates it right after). It never calls the
// API server, so endpoint creation does not wait on it.
func (c *Controller) IdentityAllocator() agent.IdentityAllocator { return identityHook{c} }

type identityHook struct{ c *Controller }

func (h identityHook) AllocateIdentity(labels map[string]string) (uint32, error) {
	if _, unresolved := labels[unresolvedLabel]; unresolved || !h.c.cacheSynced() {
		return uint32(datapath.IdentityInit), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	id, ok, err := h.c.lookupIdentity(ctx, identity.Labels(labels))
	if err != nil || !ok {
		return uint32(datapath.IdentityInit), nil
	}
	return uint32(id), nil
}

// NodePodCIDR reads this node's IPv4 pod CIDR from its SigilNode, waiting
// (with backoff) until the operator has assigned one or ctx ends.
func NodePodCIDR(ctx context.Context, cfg *rest.Config, nodeName string) (netip.Prefix, error) {
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return netip.Prefix{}, err
	}
	backoff := 500 * time.Millisecond
	var last error
	for {
		var n sigilv1.SigilNode
		err := c.Get(ctx, client.ObjectKey{Name: nodeName}, &n)
		if err == nil {
			for _, s := range n.Spec.PodCIDRs {
				if p, perr := netip.ParsePrefix(s); perr == nil && p.Addr().Is4() {
					return p.Masked(), nil
				}
			}
			err = fmt.Errorf("SigilNode %s has no IPv4 pod CIDR yet", nodeName)
		}
		last = err
		select {
		case <-ctx.Done():
			return netip.Prefix{}, fmt.Errorf("pod CIDR of node %s: %w", nodeName, last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

package k8s

import (
	"context"
	"net/netip"

	"github.com/sigil-net/sigil/agent"
	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
)

// OverlayNodes converts SigilNodes to the overlay's view of them; addresses
// and CIDRs that do not parse are skipped.
func OverlayNodes(nodes []sigilv1.SigilNode) []agent.OverlayNode {
	out := make([]agent.OverlayNode, 0, len(nodes))
	for _, n := range nodes {
		if n.DeletionTimestamp != nil {
			continue
		}
		on := agent.OverlayNode{Name: n.Name}
		if ip, err := netip.ParseAddr(n.Spec.InternalIP); err == nil {
			on.InternalIP = ip.Unmap()
		}
		if ip, err := netip.ParseAddr(n.Spec.TunnelEndpoint); err == nil {
			on.TunnelEndpoint = ip.Unmap()
		}
		for _, s := range n.Spec.PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				on.PodCIDRs = append(on.PodCIDRs, p.Masked())
			}
		}
		out = append(out, on)
	}
	return out
}

// syncOverlay programs the node's tunnel map, routes and masquerading from
// the SigilNodes (every change to any of them lands here).
func (c *Controller) syncOverlay(nodes []sigilv1.SigilNode) error {
	if c.cfg.Overlay == nil {
		return nil
	}
	return c.cfg.Overlay.Sync(c.cfg.NodeName, OverlayNodes(nodes))
}

// syncPrefilter replaces the prefilter's deny list with the one of all
// clusterwide policies in the cache.
func (c *Controller) syncPrefilter(ctx context.Context) error {
	if c.cfg.Prefilter == nil {
		return nil
	}
	var list sigilv1.SigilClusterwideNetworkPolicyList
	if err := c.cache.List(ctx, &list); err != nil {
		return err
	}
	ps := make([]*sigilv1.SigilClusterwideNetworkPolicy, 0, len(list.Items))
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp == nil {
			ps = append(ps, &list.Items[i])
		}
	}
	return c.cfg.Prefilter.Sync(ps)
}

package operator_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/operator"
)

// resetNodes deletes every Node and SigilNode, so that each IPAM test
// starts from an empty pool on the shared API server.
func resetNodes(t *testing.T, c client.Client) {
	t.Helper()
	ctx := context.Background()
	must(t, client.IgnoreNotFound(c.DeleteAllOf(ctx, &corev1.Node{})))
	must(t, client.IgnoreNotFound(c.DeleteAllOf(ctx, &sigilv1.SigilNode{})))
}

// createNode creates a Node with an InternalIP, as a kubelet would.
func createNode(t *testing.T, c client.Client, name string, ip netip.Addr, annotations map[string]string) *corev1.Node {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	must(t, c.Create(ctx, n))
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip.String()}}
	must(t, c.Status().Update(ctx, n))
	return n
}

func nodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(1 + i%250)})
}

// sigilNodes returns the SigilNodes by name.
func sigilNodes(ctx context.Context, c client.Client) (map[string]sigilv1.SigilNode, error) {
	var list sigilv1.SigilNodeList
	if err := c.List(ctx, &list); err != nil {
		return nil, err
	}
	out := map[string]sigilv1.SigilNode{}
	for _, sn := range list.Items {
		out[sn.Name] = sn
	}
	return out, nil
}

// TestNodeIPAM: 100 nodes get disjoint pod CIDRs from the pool (dual-stack
// and IPv4-only), their internal IP and tunnel endpoint; a deleted node's
// SigilNode goes; a restarted operator rebuilds its state from the
// SigilNodes and never hands out a block twice.
func TestNodeIPAM(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pools []string
		mask6 int
		fams  int
	}{
		{"ipv4", []string{"198.18.128.0/17"}, 0, 1},
		{"dual-stack", []string{"198.18.128.0/17", "fd00:5167::/104"}, 112, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := k8stest.StartEnv(t)
			c := e.Client
			ctx := context.Background()
			resetNodes(t, c)
			var pools []netip.Prefix
			for _, p := range tc.pools {
				pools = append(pools, netip.MustParsePrefix(p))
			}
			opts := operator.Options{ClusterPoolCIDRs: pools, MaskSizeIPv4: 24, MaskSizeIPv6: tc.mask6}
			stop := startOperatorStoppable(t, e.Config, opts)
			const n = 100
			for i := 0; i < n; i++ {
				var ann map[string]string
				if i == 7 {
					ann = map[string]string{operator.AnnotationTunnelEndpoint: "198.19.200.7"}
				}
				createNode(t, c, fmt.Sprintf("n%03d", i), nodeIP(i), ann)
			}
			var sns map[string]sigilv1.SigilNode
			eventually(t, "100 SigilNodes with CIDRs", func() (bool, error) {
				var err error
				if sns, err = sigilNodes(ctx, c); err != nil || len(sns) != n {
					return false, err
				}
				for _, sn := range sns {
					if len(sn.Spec.PodCIDRs) != tc.fams {
						return false, nil
					}
				}
				return true, nil
			})
			checkDisjoint(t, sns, pools)
			for i := 0; i < n; i++ {
				sn := sns[fmt.Sprintf("n%03d", i)]
				wantTun := nodeIP(i).String()
				if i == 7 {
					wantTun = "198.19.200.7"
				}
				if sn.Spec.InternalIP != nodeIP(i).String() || sn.Spec.TunnelEndpoint != wantTun {
					t.Fatalf("%s: internalIP %q tunnel %q", sn.Name, sn.Spec.InternalIP, sn.Spec.TunnelEndpoint)
				}
				if len(sn.OwnerReferences) != 1 || sn.OwnerReferences[0].Kind != "Node" || sn.OwnerReferences[0].Name != sn.Name {
					t.Fatalf("%s: owner %+v", sn.Name, sn.OwnerReferences)
				}
			}
			// Deleting a node deletes its SigilNode.
			must(t, c.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n000"}}))
			eventually(t, "n000's SigilNode deleted", func() (bool, error) {
				err := c.Get(ctx, client.ObjectKey{Name: "n000"}, &sigilv1.SigilNode{})
				return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
			})
			// A new operator (a restart, or a new leader) rebuilds the pool
			// from the SigilNodes: new nodes never reuse a block in use.
			stop()
			startOperatorStoppable(t, e.Config, opts)
			for i := n; i < n+20; i++ {
				createNode(t, c, fmt.Sprintf("n%03d", i), nodeIP(i), nil)
			}
			eventually(t, "119 SigilNodes", func() (bool, error) {
				var err error
				if sns, err = sigilNodes(ctx, c); err != nil || len(sns) != n+19 {
					return false, err
				}
				for _, sn := range sns {
					if len(sn.Spec.PodCIDRs) != tc.fams {
						return false, nil
					}
				}
				return true, nil
			})
			checkDisjoint(t, sns, pools)
			resetNodes(t, c)
		})
	}
}

// checkDisjoint fails unless every node's blocks are inside a pool and no
// two blocks overlap.
func checkDisjoint(t *testing.T, sns map[string]sigilv1.SigilNode, pools []netip.Prefix) {
	t.Helper()
	owner := map[netip.Prefix]string{}
	for _, sn := range sns {
		for _, s := range sn.Spec.PodCIDRs {
			p := netip.MustParsePrefix(s)
			inPool := false
			for _, pool := range pools {
				inPool = inPool || (pool.Contains(p.Addr()) && p.Bits() >= pool.Bits())
			}
			if !inPool {
				t.Fatalf("%s: %s outside the pools %v", sn.Name, p, pools)
			}
			for q, o := range owner {
				if q.Overlaps(p) {
					t.Fatalf("%s's %s overlaps %s's %s", sn.Name, p, o, q)
				}
			}
			owner[p] = sn.Name
		}
	}
}

// TestNodeIPAMExhaustion: a pool of two blocks serves two nodes; the third
// gets PodCIDRsAllocated=False/PoolExhausted with a message naming the pool
// and an Event, and is served as soon as a node goes.
func TestNodeIPAMExhaustion(t *testing.T) {
	e := k8stest.StartEnv(t)
	c := e.Client
	ctx := context.Background()
	resetNodes(t, c)
	startOperator(t, e.Config, operator.Options{ClusterPoolCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/23")}}, "")
	for i := 0; i < 3; i++ {
		createNode(t, c, fmt.Sprintf("x%d", i), nodeIP(i), nil)
	}
	var starved string
	eventually(t, "one node starved", func() (bool, error) {
		sns, err := sigilNodes(ctx, c)
		if err != nil || len(sns) != 3 {
			return false, err
		}
		starved = ""
		served := 0
		for _, sn := range sns {
			cond := meta.FindStatusCondition(sn.Status.Conditions, sigilv1.NodeConditionPodCIDRsAllocated)
			switch {
			case len(sn.Spec.PodCIDRs) == 1 && cond != nil && cond.Status == metav1.ConditionTrue:
				served++
			case len(sn.Spec.PodCIDRs) == 0 && cond != nil && cond.Status == metav1.ConditionFalse:
				if cond.Reason != sigilv1.NodeReasonPoolExhausted || !strings.Contains(cond.Message, "198.18.0.0/23 in /24 blocks (2 of 2 used)") {
					return false, fmt.Errorf("condition %+v", cond)
				}
				starved = sn.Name
			}
		}
		return served == 2 && starved != "", nil
	})
	eventually(t, "a PoolExhausted event on the node", func() (bool, error) {
		return hasEvent(ctx, c, "", "Node", starved, sigilv1.NodeReasonPoolExhausted)
	})
	other := "x0"
	if starved == "x0" {
		other = "x1"
	}
	must(t, c.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: other}}))
	eventually(t, "the starved node served after a node went", func() (bool, error) {
		var sn sigilv1.SigilNode
		if err := c.Get(ctx, client.ObjectKey{Name: starved}, &sn); err != nil {
			return false, err
		}
		cond := meta.FindStatusCondition(sn.Status.Conditions, sigilv1.NodeConditionPodCIDRsAllocated)
		return len(sn.Spec.PodCIDRs) == 1 && cond != nil && cond.Status == metav1.ConditionTrue, nil
	})
	resetNodes(t, c)
}

// TestNodeSchema: the API server refuses malformed SigilNodes.
func TestNodeSchema(t *testing.T) {
	_, c := k8stest.Start(t)
	for _, tc := range []struct {
		name    string
		spec    sigilv1.SigilNodeSpec
		wantErr string
	}{
		{"ok", sigilv1.SigilNodeSpec{PodCIDRs: []string{"10.9.0.0/24", "fd00::/64"}, InternalIP: "10.0.0.1"}, ""},
		{"host bits", sigilv1.SigilNodeSpec{PodCIDRs: []string{"10.9.0.1/24"}}, "each podCIDR must be a network prefix"},
		{"not a cidr", sigilv1.SigilNodeSpec{PodCIDRs: []string{"banana"}}, "each podCIDR must be a network prefix"},
		{"three cidrs", sigilv1.SigilNodeSpec{PodCIDRs: []string{"10.9.0.0/24", "10.9.1.0/24", "10.9.2.0/24"}}, "must have at most 2 items"},
		{"bad ip", sigilv1.SigilNodeSpec{InternalIP: "10.0.0.256"}, "internalIP must be an IP address"},
		{"bad tunnel", sigilv1.SigilNodeSpec{TunnelEndpoint: "host"}, "tunnelEndpoint must be an IP address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn := &sigilv1.SigilNode{ObjectMeta: metav1.ObjectMeta{Name: "schema-" + strings.ReplaceAll(tc.name, " ", "-")}, Spec: tc.spec}
			err := c.Create(context.Background(), sn)
			if tc.wantErr == "" {
				must(t, err)
				must(t, c.Delete(context.Background(), sn))
				return
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want Invalid with %q", err, tc.wantErr)
			}
		})
	}
}

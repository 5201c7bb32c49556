package policy

import (
	"net/netip"
	"sort"
	"strings"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
)

// idInfo is what the selector cache knows about one identity.
type idInfo struct {
	id     datapath.Identity
	labels identity.Labels
	kind   identity.Kind
	prefix netip.Prefix       // local CIDR identities
	podIPs map[netip.Addr]int // cluster identities: IPs of its pods (refcount)
}

// idSelector is a peer selector over identities.
type idSelector interface {
	key() string
	selects(*idInfo) bool
	// usesPodIPs: the result depends on the pod IPs of cluster identities.
	usesPodIPs() bool
	// namespace limits candidates to one namespace's identities, if known.
	namespace() (string, bool)
}

// labelSelector matches cluster identities (pods) by security labels.
type labelSelector struct{ sel Selector }

func (s labelSelector) key() string { return "labels:" + s.sel.String() }
func (s labelSelector) selects(i *idInfo) bool {
	return i.kind == identity.KindCluster && s.sel.Matches(i.labels)
}
func (s labelSelector) usesPodIPs() bool          { return false }
func (s labelSelector) namespace() (string, bool) { return s.sel.Namespace() }

// cidrSelector matches CIDR identities whose prefix lies in cidr and in no
// except prefix; with pods, also cluster identities with a pod IP there.
type cidrSelector struct {
	cidr   netip.Prefix
	except []netip.Prefix
	pods   bool
}

func (s cidrSelector) key() string {
	parts := make([]string, len(s.except))
	for i, e := range s.except {
		parts[i] = e.String()
	}
	sort.Strings(parts)
	k := "cidr:" + s.cidr.String() + " except [" + strings.Join(parts, ",") + "]"
	if s.pods {
		k += " +pods"
	}
	return k
}

func (s cidrSelector) selects(i *idInfo) bool {
	switch i.kind {
	case identity.KindLocal:
		return i.prefix.IsValid() && s.covers(i.prefix)
	case identity.KindCluster:
		if !s.pods {
			return false
		}
		for ip := range i.podIPs {
			if s.covers(netip.PrefixFrom(ip, ip.BitLen())) {
				return true
			}
		}
	}
	return false
}

func (s cidrSelector) covers(p netip.Prefix) bool {
	if !prefixContains(s.cidr, p) {
		return false
	}
	for _, e := range s.except {
		if prefixContains(e, p) {
			return false
		}
	}
	return true
}

func (s cidrSelector) usesPodIPs() bool          { return s.pods }
func (s cidrSelector) namespace() (string, bool) { return "", false }

// entitySelector matches the identities of an entity.
type entitySelector struct{ entity string }

func (s entitySelector) key() string { return "entity:" + s.entity }
func (s entitySelector) selects(i *idInfo) bool {
	switch s.entity {
	case "world":
		return i.id == datapath.IdentityWorld || i.kind == identity.KindLocal
	case "cluster":
		return i.kind == identity.KindCluster || i.kind == identity.KindReserved && i.id != datapath.IdentityWorld
	case "all":
		return true
	}
	id, ok := identity.ReservedByName(s.entity)
	return ok && i.id == id
}
func (s entitySelector) usesPodIPs() bool          { return false }
func (s entitySelector) namespace() (string, bool) { return "", false }

// cachedSelector is a selector in use and the identities it matches.
type cachedSelector struct {
	sel     idSelector
	members map[datapath.Identity]struct{}
	users   map[*policyState]int
}

func (c *cachedSelector) has(id datapath.Identity) bool {
	_, ok := c.members[id]
	return ok
}

// SelectorCache maps every selector in use to the set of identities it
// matches, and updates those sets incrementally as identities and pod IPs
// come and go. It is owned by an Engine and not safe for concurrent use.
type SelectorCache struct {
	ids  map[datapath.Identity]*idInfo
	byNS map[string]map[datapath.Identity]struct{}
	sels map[string]*cachedSelector
}

func newSelectorCache() *SelectorCache {
	c := &SelectorCache{ids: map[datapath.Identity]*idInfo{},
		byNS: map[string]map[datapath.Identity]struct{}{}, sels: map[string]*cachedSelector{}}
	for _, id := range identity.Reserved() {
		c.upsert(id, identity.ReservedLabels(id), netip.Prefix{})
	}
	return c
}

// Selections returns, sorted, the identities a selector (by its key, as
// listed by Selectors) matches.
func (c *SelectorCache) Selections(key string) []datapath.Identity {
	cs, ok := c.sels[key]
	if !ok {
		return nil
	}
	out := make([]datapath.Identity, 0, len(cs.members))
	for id := range cs.members {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Selectors lists the keys of the selectors in use, sorted.
func (c *SelectorCache) Selectors() []string {
	out := make([]string, 0, len(c.sels))
	for k := range c.sels {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// upsert adds or relabels an identity and returns the selectors whose
// membership changed.
func (c *SelectorCache) upsert(id datapath.Identity, lbls identity.Labels, pfx netip.Prefix) []*cachedSelector {
	if old, ok := c.ids[id]; ok {
		if old.labels.Equal(lbls) && old.prefix == pfx {
			return nil
		}
		info := &idInfo{id: id, labels: lbls, kind: old.kind, prefix: pfx, podIPs: old.podIPs}
		c.unindex(old)
		c.index(info)
		return c.reevaluate(info, func(*cachedSelector) bool { return true })
	}
	info := &idInfo{id: id, labels: lbls, kind: identity.KindOf(id), prefix: pfx, podIPs: map[netip.Addr]int{}}
	c.index(info)
	return c.reevaluate(info, func(*cachedSelector) bool { return true })
}

func (c *SelectorCache) index(i *idInfo) {
	c.ids[i.id] = i
	if ns := i.labels.Namespace(); i.kind == identity.KindCluster && ns != "" {
		if c.byNS[ns] == nil {
			c.byNS[ns] = map[datapath.Identity]struct{}{}
		}
		c.byNS[ns][i.id] = struct{}{}
	}
}

func (c *SelectorCache) unindex(i *idInfo) {
	delete(c.ids, i.id)
	if ns := i.labels.Namespace(); ns != "" {
		delete(c.byNS[ns], i.id)
		if len(c.byNS[ns]) == 0 {
			delete(c.byNS, ns)
		}
	}
}

// reevaluate recomputes one identity's membership in the selectors that
// filter accepts and returns those that changed.
func (c *SelectorCache) reevaluate(i *idInfo, filter func(*cachedSelector) bool) []*cachedSelector {
	var changed []*cachedSelector
	for _, cs := range c.sels {
		if !filter(cs) {
			continue
		}
		want := c.ids[i.id] == i && cs.sel.selects(i)
		if want == cs.has(i.id) {
			continue
		}
		if want {
			cs.members[i.id] = struct{}{}
		} else {
			delete(cs.members, i.id)
		}
		changed = append(changed, cs)
	}
	return changed
}

// remove drops an identity and returns the selectors that matched it.
func (c *SelectorCache) remove(id datapath.Identity) []*cachedSelector {
	info, ok := c.ids[id]
	if !ok {
		return nil
	}
	c.unindex(info)
	var changed []*cachedSelector
	for _, cs := range c.sels {
		if cs.has(id) {
			delete(cs.members, id)
			changed = append(changed, cs)
		}
	}
	return changed
}

// addPodIP and removePodIP track the IPs of a cluster identity's pods for
// selectors that match pods by address.
func (c *SelectorCache) addPodIP(id datapath.Identity, ip netip.Addr) []*cachedSelector {
	info, ok := c.ids[id]
	if !ok {
		return nil
	}
	info.podIPs[ip]++
	return c.reevaluate(info, func(cs *cachedSelector) bool { return cs.sel.usesPodIPs() })
}

func (c *SelectorCache) removePodIP(id datapath.Identity, ip netip.Addr) []*cachedSelector {
	info, ok := c.ids[id]
	if !ok || info.podIPs[ip] == 0 {
		return nil
	}
	if info.podIPs[ip]--; info.podIPs[ip] == 0 {
		delete(info.podIPs, ip)
	}
	return c.reevaluate(info, func(cs *cachedSelector) bool { return cs.sel.usesPodIPs() })
}

// acquire returns the cached selector for sel, computing its members on
// first use, and records user as one of its users.
func (c *SelectorCache) acquire(sel idSelector, user *policyState) *cachedSelector {
	k := sel.key()
	cs, ok := c.sels[k]
	if !ok {
		cs = &cachedSelector{sel: sel, members: map[datapath.Identity]struct{}{}, users: map[*policyState]int{}}
		c.fill(cs)
		c.sels[k] = cs
	}
	cs.users[user]++
	return cs
}

func (c *SelectorCache) fill(cs *cachedSelector) {
	if ns, ok := cs.sel.namespace(); ok {
		for id := range c.byNS[ns] {
			if cs.sel.selects(c.ids[id]) {
				cs.members[id] = struct{}{}
			}
		}
		return
	}
	for id, info := range c.ids {
		if cs.sel.selects(info) {
			cs.members[id] = struct{}{}
		}
	}
}

// release drops one use of cs by user; the last use removes it.
func (c *SelectorCache) release(cs *cachedSelector, user *policyState) {
	if cs.users[user]--; cs.users[user] <= 0 {
		delete(cs.users, user)
	}
	if len(cs.users) == 0 {
		delete(c.sels, cs.sel.key())
	}
}

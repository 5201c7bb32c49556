package policy

import (
	"fmt"

	"github.com/sigil-net/sigil/datapath"
)

// CookieInfo names the rule behind a policy map entry.
type CookieInfo struct {
	Policy    PolicyRef
	Direction datapath.Direction
	Deny      bool
	Index     int // position in the rule list named by Direction and Deny
}

// RuleList is the source list of the rule: ingress, egress, ingressDeny or
// egressDeny.
func (c CookieInfo) RuleList() string {
	s := c.Direction.String()
	if c.Deny {
		s += "Deny"
	}
	return s
}

func (c CookieInfo) String() string {
	return fmt.Sprintf("%s %s[%d]", c.Policy, c.RuleList(), c.Index)
}

// cookieTable hands out stable uint32 cookies for (policy, rule) pairs.
// Cookie 0 is never used: the datapath reports it when no entry decided.
type cookieTable struct {
	next   uint32
	byInfo map[CookieInfo]uint32
	byID   map[uint32]CookieInfo
}

func newCookieTable() *cookieTable {
	return &cookieTable{next: 1, byInfo: map[CookieInfo]uint32{}, byID: map[uint32]CookieInfo{}}
}

func (t *cookieTable) get(info CookieInfo) uint32 {
	if c, ok := t.byInfo[info]; ok {
		return c
	}
	for {
		c := t.next
		if t.next++; t.next == 0 {
			t.next = 1
		}
		if _, used := t.byID[c]; !used {
			t.byInfo[info], t.byID[c] = c, info
			return c
		}
	}
}

// retain drops the cookies of policy ref that are not in keep.
func (t *cookieTable) retain(ref PolicyRef, keep map[uint32]bool) {
	for info, c := range t.byInfo {
		if info.Policy == ref && !keep[c] {
			delete(t.byInfo, info)
			delete(t.byID, c)
		}
	}
}

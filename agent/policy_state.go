package agent

// UpdatePolicyState records the identity and enforcement flags the policy
// enforcer applied to an endpoint in its state file, so that a restart
// restores them. It does not touch the datapath. An unknown endpoint is
// ignored.
func (m *Manager) UpdatePolicyState(cid, ifName string, identity, flags uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep := m.eps[epKey{cid, ifName}]
	if ep == nil || (ep.Identity == identity && ep.PolicyFlags == flags) {
		return nil
	}
	cp := *ep
	cp.Identity, cp.PolicyFlags = identity, flags
	if err := m.saveState(&cp); err != nil {
		return err
	}
	*ep = cp
	return nil
}

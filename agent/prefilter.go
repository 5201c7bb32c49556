package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/policy"
)

// PrefilterConfig configures the node's XDP prefilter (docs/datapath.md,
// "XDP prefilter").
type PrefilterConfig struct {
	// PinDir and NetNS are the datapath's.
	PinDir string
	NetNS  string
	// Devices are the node interfaces to attach to; empty: prefilter off.
	Devices []string
	// Static is a deny list from the agent's configuration, always installed.
	Static []netip.Prefix
	Logger *slog.Logger
}

// NodePrefilter is the loaded prefilter, attached to the configured devices,
// whose deny list follows the clusterwide policies (Sync).
type NodePrefilter struct {
	cfg   PrefilterConfig
	pf    *datapath.Prefilter
	mu    sync.Mutex
	modes map[string]datapath.XDPMode
}

// NewPrefilter loads the prefilter, attaches it to every device (logging
// the XDP mode in use) and installs the static list.
func NewPrefilter(cfg PrefilterConfig) (*NodePrefilter, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	pf, err := datapath.LoadPrefilter(datapath.PrefilterConfig{PinDir: cfg.PinDir, NetNS: cfg.NetNS, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	p := &NodePrefilter{cfg: cfg, pf: pf, modes: map[string]datapath.XDPMode{}}
	for _, dev := range cfg.Devices {
		mode, err := pf.Attach(dev)
		if err != nil {
			pf.Close()
			return nil, fmt.Errorf("prefilter on %s: %w", dev, err)
		}
		p.modes[dev] = mode
		cfg.Logger.Info("prefilter attached", "device", dev, "xdpMode", string(mode))
	}
	// Before the policies are known, the installed list (from an earlier
	// run) stays; only the static list is guaranteed at once.
	if installed, err := pf.List(); err == nil && len(installed) == 0 && len(cfg.Static) > 0 {
		if err := p.Sync(nil); err != nil {
			pf.Close()
			return nil, err
		}
	}
	return p, nil
}

// Modes returns the XDP mode of each device.
func (p *NodePrefilter) Modes() map[string]datapath.XDPMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]datapath.XDPMode, len(p.modes))
	for k, v := range p.modes {
		out[k] = v
	}
	return out
}

// Sync replaces the deny list with the one for policies plus the static list.
func (p *NodePrefilter) Sync(policies []*sigilv1.SigilClusterwideNetworkPolicy) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	rules, err := policy.PrefilterRules(policies, p.cfg.Static)
	if err != nil {
		return fmt.Errorf("prefilter rules: %w", err)
	}
	if err := p.pf.Replace(rules); err != nil {
		return err
	}
	p.cfg.Logger.Debug("prefilter list replaced", "rules", len(rules))
	return nil
}

// List returns the installed deny list with its counters.
func (p *NodePrefilter) List() ([]datapath.PrefilterEntry, error) { return p.pf.List() }

// Close releases the handles; the prefilter stays attached and enforcing.
func (p *NodePrefilter) Close() error { return p.pf.Close() }

// CleanupPrefilter detaches the prefilter from every interface it is
// attached to under pinDir (for uninstall).
func CleanupPrefilter(pinDir, netns string) error {
	att, err := datapath.PrefilterAttachments(pinDir)
	if err != nil || len(att) == 0 {
		return err
	}
	pf, err := datapath.LoadPrefilter(datapath.PrefilterConfig{PinDir: pinDir, NetNS: netns})
	if err != nil {
		return err
	}
	defer pf.Close()
	var errs []error
	for dev := range att {
		errs = append(errs, pf.Detach(dev))
	}
	return errors.Join(errs...)
}

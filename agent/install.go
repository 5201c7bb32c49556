package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// CNIInstall describes what the agent installs for the container runtime.
type CNIInstall struct {
	ConfDir    string // e.g. /etc/cni/net.d
	ConfName   string // default 05-sigil.conflist
	BinDir     string // e.g. /opt/cni/bin
	BinarySrc  string // the sigil-cni binary to copy ("" = do not install)
	Socket     string // agent socket the plugin talks to
	MTU        int
	CNIVersion string // default DefaultCNIVersion
	NetName    string // default sigil
	// ChainPortmap appends the standard portmap meta plugin.
	ChainPortmap bool
}

// DefaultCNIVersion is the conflist's cniVersion unless configured: 1.0.0,
// the newest that containerd 1.6 and 1.7 (libcni 1.1) parse results of.
// sigil-cni itself speaks 0.3.1 to 1.1.0; runtimes that support 1.1.0 get
// STATUS and GC when the conflist says 1.1.0 (--cni-version).
const DefaultCNIVersion = "1.0.0"

// Conflist returns the network configuration list.
func (c CNIInstall) Conflist() ([]byte, error) {
	if c.CNIVersion == "" {
		c.CNIVersion = DefaultCNIVersion
	}
	if c.NetName == "" {
		c.NetName = "sigil"
	}
	plugin := map[string]any{"type": "sigil-cni", "socket": c.Socket}
	if c.MTU > 0 {
		plugin["mtu"] = c.MTU
	}
	plugins := []any{plugin}
	if c.ChainPortmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}})
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion": c.CNIVersion,
		"name":       c.NetName,
		"plugins":    plugins,
	}, "", "  ")
}

// Install copies the binary (first, so the config never names a missing
// plugin) and writes the conflist, each atomically.
func (c CNIInstall) Install() error {
	if c.BinarySrc != "" && c.BinDir != "" {
		if err := os.MkdirAll(c.BinDir, 0o755); err != nil {
			return err
		}
		if err := CopyFileAtomic(c.BinarySrc, filepath.Join(c.BinDir, "sigil-cni"), 0o755); err != nil {
			return fmt.Errorf("install sigil-cni into %s: %w", c.BinDir, err)
		}
	}
	if c.ConfDir != "" {
		if c.ConfName == "" {
			c.ConfName = "05-sigil.conflist"
		}
		data, err := c.Conflist()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(c.ConfDir, 0o755); err != nil {
			return err
		}
		if err := WriteFileAtomic(filepath.Join(c.ConfDir, c.ConfName), append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("write CNI config: %w", err)
		}
	}
	return nil
}

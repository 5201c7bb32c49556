package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// agentHealth asks the agent's local API for GET /v1/healthz: exit 0 when
// it answers 200 (ready). With --live, any HTTP answer counts (the agent is
// up, though maybe still restoring).
func agentHealth(args []string) error {
	fs := flag.NewFlagSet("agent-health", flag.ContinueOnError)
	socket := fs.String("socket", envOr("SIGIL_SOCKET", "/var/run/sigil/sigil.sock"), "the agent's API socket ($SIGIL_SOCKET)")
	live := fs.Bool("live", false, "succeed on any answer, not only ready")
	timeout := fs.Duration("timeout", 2*time.Second, "request timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	hc := &http.Client{Timeout: *timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *socket)
		},
	}}
	resp, err := hc.Get("http://sigil-agent/v1/healthz")
	if err != nil {
		return fmt.Errorf("agent unreachable: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Println(strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK && !*live {
		return fmt.Errorf("agent not ready: HTTP %d", resp.StatusCode)
	}
	return nil
}

// installCNI copies the sigil-cni binary into the CNI bin folder (through a
// temporary file and a rename, so that a running plugin is never half
// written) and, with --exclusive, renames every other network configuration
// in the conf folder to *.sigil_bak.
func installCNI(args []string) error {
	fs := flag.NewFlagSet("install-cni", flag.ContinueOnError)
	bin := fs.String("binary", "/usr/local/bin/sigil-cni", "the plugin binary to install")
	binDir := fs.String("bin-dir", "/host/opt/cni/bin", "CNI bin folder")
	confDir := fs.String("conf-dir", "/host/etc/cni/net.d", "CNI conf folder")
	confName := fs.String("conf-name", "05-sigil.conflist", "Sigil's conflist (kept with --exclusive)")
	exclusive := fs.Bool("exclusive", false, "set other CNI configurations aside")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.MkdirAll(*binDir, 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile(*bin)
	if err != nil {
		return err
	}
	dst := filepath.Join(*binDir, filepath.Base(*bin))
	tmp := dst + ".sigil-tmp"
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	fmt.Printf("installed %s\n", dst)
	if !*exclusive {
		return nil
	}
	if err := os.MkdirAll(*confDir, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(*confDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || n == *confName {
			continue
		}
		if ext := filepath.Ext(n); ext != ".conf" && ext != ".conflist" && ext != ".json" {
			continue
		}
		p := filepath.Join(*confDir, n)
		if err := os.Rename(p, p+".sigil_bak"); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Printf("set aside %s (cni.exclusive)\n", p)
	}
	return errors.Join(errs...)
}

// uninstallCNI removes Sigil's conflist (cni.uninstall, on agent stop).
func uninstallCNI(args []string) error {
	fs := flag.NewFlagSet("uninstall-cni", flag.ContinueOnError)
	confDir := fs.String("conf-dir", envOr("SIGIL_CNI_CONF_DIR", "/etc/cni/net.d"), "CNI conf folder ($SIGIL_CNI_CONF_DIR)")
	confName := fs.String("conf-name", "05-sigil.conflist", "Sigil's conflist")
	if err := fs.Parse(args); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(*confDir, *confName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// envOr is the environment variable's value, or def when it is unset or
// empty. Kubernetes does not expand $(VAR) in probe and lifecycle commands,
// so the chart passes per-node paths to them through the environment.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

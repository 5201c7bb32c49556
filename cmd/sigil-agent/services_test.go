package main

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// TestServicesOff: with --kube-proxy-replacement=false the agent detaches
// the socket load-balancer a previous run attached; without Kubernetes it
// loads nothing.
func TestServicesOff(t *testing.T) {
	dt.RequireBPF(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pinDir := dt.PinDir(t)
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: pinDir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Detach(); lb.Close() })
	if err := lb.Attach(); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(pinDir, "links", "cgroup-sock4_connect")
	if _, err := os.Stat(link); err != nil {
		t.Fatal(err)
	}
	s, err := startServices(context.Background(), serviceFlags{kubeProxyReplacement: true, cgroup: datapath.DefaultCgroup2},
		"bpf", pinDir, nil, nil, log)
	if err != nil || s != nil {
		t.Fatalf("without Kubernetes: %v, %v", s, err)
	}
	if _, err := os.Stat(link); err != nil {
		t.Errorf("without Kubernetes the attachment went: %v", err)
	}
	s, err = startServices(context.Background(), serviceFlags{kubeProxyReplacement: false, cgroup: datapath.DefaultCgroup2},
		"bpf", pinDir, nil, nil, log)
	if err != nil || s != nil {
		t.Fatalf("off: %v, %v", s, err)
	}
	if _, err := os.Stat(link); !os.IsNotExist(err) {
		t.Errorf("--kube-proxy-replacement=false left %s attached: %v", link, err)
	}
}

// TestServiceRuntimeFlags: which service bits the agent sets in the
// runtime configuration.
func TestServiceRuntimeFlags(t *testing.T) {
	base := datapath.RuntimeConfig{Flags: datapath.ConfigTunnel | datapath.ConfigLBTC | datapath.ConfigServiceDefer,
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.200.0/24")}}
	for _, tc := range []struct {
		name     string
		f        serviceFlags
		lbOn     bool
		flags    uint32
		cidrs    int
		deferred bool
		err      bool
	}{
		{"sigil load-balances", serviceFlags{kubeProxyReplacement: true, serviceCIDRs: "198.18.250.0/24"}, true, datapath.ConfigTunnel | datapath.ConfigLBTC, 0, false, false},
		{"no load-balancer (no Kubernetes)", serviceFlags{kubeProxyReplacement: true}, false, datapath.ConfigTunnel, 0, false, false},
		{"kube-proxy, service CIDRs", serviceFlags{serviceCIDRs: "198.18.250.0/24, 198.18.251.0/24"}, true, datapath.ConfigTunnel | datapath.ConfigServiceDefer, 2, true, false},
		{"kube-proxy, no service CIDR", serviceFlags{}, true, datapath.ConfigTunnel, 0, false, false},
		{"bad CIDR", serviceFlags{serviceCIDRs: "nope"}, false, 0, 0, false, true},
		{"IPv6", serviceFlags{serviceCIDRs: "fd00::/108"}, false, 0, 0, false, true},
		{"too many", serviceFlags{serviceCIDRs: "198.18.1.0/24,198.18.2.0/24,198.18.3.0/24,198.18.4.0/24,198.18.5.0/24"}, false, 0, 0, false, true},
	} {
		rc := base
		on, err := tc.f.applyRuntime(&rc, tc.lbOn)
		if tc.err {
			if err == nil {
				t.Errorf("%s: accepted", tc.name)
			}
			continue
		}
		if err != nil || on != tc.deferred || rc.Flags != tc.flags || len(rc.ServiceCIDRs) != tc.cidrs {
			t.Errorf("%s: flags %#x cidrs %v defer %v err %v; want flags %#x, %d CIDRs, defer %v", tc.name, rc.Flags, rc.ServiceCIDRs, on, err, tc.flags, tc.cidrs, tc.deferred)
		}
	}
}

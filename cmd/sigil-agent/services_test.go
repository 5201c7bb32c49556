package main

import (
	"context"
	"io"
	"log/slog"
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

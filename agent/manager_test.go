package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/client"
)

type fakeLinks struct {
	mu sync.Mutex
	m  map[string]int
}

func (f *fakeLinks) exists(name string, idx int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[name] == idx
}

func (f *fakeLinks) set(name string, idx int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if idx == 0 {
		delete(f.m, name)
	} else {
		f.m[name] = idx
	}
}

func newTestManager(t *testing.T, dir string, dp *MemDatapath, links *fakeLinks, cidr string) *Manager {
	t.Helper()
	m, err := NewManager(Config{StateDir: dir, PodCIDR: netip.MustParsePrefix(cidr), Datapath: dp,
		LinkExists: links.exists, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	return m
}

func req(i int) apitypes.EndpointRequest {
	return apitypes.EndpointRequest{
		ContainerID: fmt.Sprintf("c%04d", i), IfName: "eth0", NetNS: "/proc/1/ns/net",
		HostIfName: fmt.Sprintf("sgl%04d", i), HostIfIndex: 100 + i,
		HostMAC: "02:00:00:00:00:01", MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256),
		PodNamespace: "default", PodName: fmt.Sprint("pod", i), Labels: map[string]string{"app": "web"},
	}
}

func TestManagerLifecycle(t *testing.T) {
	dir := t.TempDir()
	dp := NewMemDatapath()
	links := &fakeLinks{m: map[string]int{}}
	m := newTestManager(t, dir, dp, links, "198.18.0.0/24")

	r := req(1)
	links.set(r.HostIfName, r.HostIfIndex)
	ep, err := m.Create(r)
	if err != nil {
		t.Fatal(err)
	}
	if ep.ID != 1 || ep.Identity != FirstLocalIdentity || ep.Addresses[0].IP != netip.MustParseAddr("198.18.0.2") ||
		ep.Addresses[0].Gateway != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("endpoint %+v", ep)
	}
	if ep.Labels[NamespaceLabel] != "default" || ep.Labels["k8s:app"] != "web" {
		t.Fatalf("labels %v", ep.Labels)
	}
	again, err := m.Create(r)
	if err != nil || again.ID != ep.ID || again.Addresses[0].IP != ep.Addresses[0].IP {
		t.Fatalf("retry: %+v %v", again, err)
	}
	if len(dp.Eps) != 1 || len(dp.IPC) != 1 || len(dp.Links) != 1 || !dp.Policies[1] {
		t.Fatalf("datapath %+v", dp)
	}
	// Same pod labels -> same identity.
	r2 := req(2)
	links.set(r2.HostIfName, r2.HostIfIndex)
	ep2, err := m.Create(r2)
	if err != nil || ep2.Identity != ep.Identity || ep2.ID != 2 {
		t.Fatalf("second: %+v %v", ep2, err)
	}

	// Restart: a new manager on the same state restores both; an endpoint
	// whose veth vanished meanwhile is cleaned up.
	m.Close()
	links.set(r2.HostIfName, 0)
	dp.Eps[netip.MustParseAddr("198.18.0.99")] = EndpointInfo{ID: 77} // stale entry
	dp.Links["sglstale"] = 5
	m = newTestManager(t, dir, dp, links, "198.18.0.0/24")
	if l := m.List(); len(l) != 1 || l[0].ContainerID != r.ContainerID {
		t.Fatalf("restored %+v", l)
	}
	if len(dp.Eps) != 1 || len(dp.Links) != 1 || len(dp.IPC) != 1 {
		t.Fatalf("stale datapath state not cleaned: %+v", dp)
	}
	allocs, _ := m.Allocations()
	if len(allocs) != 1 {
		t.Fatalf("allocations after restore: %+v", allocs)
	}

	res, err := m.Delete(r.ContainerID, r.IfName)
	if err != nil || !res.Found || len(res.ReleasedIPs) != 1 {
		t.Fatalf("delete %+v %v", res, err)
	}
	res, err = m.Delete(r.ContainerID, r.IfName)
	if err != nil || res.Found {
		t.Fatalf("second delete %+v %v", res, err)
	}
	if len(dp.Eps)+len(dp.IPC)+len(dp.Links)+len(dp.Policies) != 0 {
		t.Fatalf("leftovers %+v", dp)
	}
	files, _ := os.ReadDir(filepath.Join(dir, "endpoints"))
	if len(files) != 0 {
		t.Fatalf("state files left: %v", files)
	}
	m.Close()
}

func TestManagerExhaustionRollbackGC(t *testing.T) {
	dp := NewMemDatapath()
	links := &fakeLinks{m: map[string]int{}}
	m := newTestManager(t, t.TempDir(), dp, links, "198.18.0.0/29")
	defer m.Close()
	for i := 0; i < 5; i++ {
		if _, err := m.Create(req(i)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := m.Create(req(9))
	if e, ok := err.(*Error); !ok || e.Code != apitypes.CodePoolExhaust {
		t.Fatalf("want pool_exhausted, got %v", err)
	}
	// Attach failure rolls everything back, including the address.
	m.Delete("c0004", "eth0")
	dp.FailAttach = fmt.Errorf("boom")
	if _, err := m.Create(req(9)); err == nil {
		t.Fatal("want attach failure")
	}
	dp.FailAttach = nil
	if a, _ := m.Allocations(); len(a) != 4 {
		t.Fatalf("rollback leaked an address: %d", len(a))
	}
	if len(dp.Eps) != 4 || len(dp.IPC) != 4 {
		t.Fatalf("rollback leaked map entries: %+v", dp)
	}
	res, err := m.GC([]apitypes.Attachment{{ContainerID: "c0001", IfName: "eth0"}})
	if err != nil || len(res.RemovedEndpoints) != 3 {
		t.Fatalf("gc %+v %v", res, err)
	}
	if a, _ := m.Allocations(); len(a) != 1 {
		t.Fatalf("after gc: %d allocations", len(a))
	}
}

func TestAPIOverSocket(t *testing.T) {
	dir := t.TempDir()
	dp := NewMemDatapath()
	links := &fakeLinks{m: map[string]int{}}
	m := newTestManager(t, filepath.Join(dir, "state"), dp, links, "198.18.0.0/24")
	defer m.Close()
	sock := filepath.Join(dir, "run", "sigil.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(sock)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v", st.Mode())
	}
	srv := NewServer(m, nil)
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())

	c := client.New(sock, 5*time.Second)
	ctx := context.Background()
	if h, err := c.Health(ctx); err != nil || !h.Ready {
		t.Fatalf("health %+v %v", h, err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := c.PutEndpoint(ctx, req(i))
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	eps, _ := c.ListEndpoints(ctx)
	seen := map[netip.Addr]bool{}
	for _, ep := range eps {
		seen[ep.Addresses[0].IP] = true
	}
	if len(eps) != 50 || len(seen) != 50 {
		t.Fatalf("%d endpoints, %d distinct IPs", len(eps), len(seen))
	}
	if _, err := c.GetEndpoint(ctx, "nope", "eth0"); !client.IsCode(err, apitypes.CodeNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	bad := req(1)
	bad.MAC = "zz"
	if _, err := c.PutEndpoint(ctx, bad); !client.IsCode(err, apitypes.CodeInvalid) {
		t.Fatalf("bad mac: %v", err)
	}
	if r, err := c.DeleteEndpoint(ctx, "c0003", "eth0"); err != nil || !r.Found {
		t.Fatalf("delete %+v %v", r, err)
	}
	if _, err := c.GC(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if a, _ := c.ListIPAM(ctx); len(a) != 0 {
		t.Fatalf("ipam after gc: %v", a)
	}
	// Unreachable agent: a clear error.
	_, err = client.New(filepath.Join(dir, "none.sock"), time.Second).Health(ctx)
	if err == nil || !errorsIs(err, client.ErrUnreachable) {
		t.Fatalf("unreachable: %v", err)
	}
	t.Log(err)
}

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("#!/bin/sh\n"), 0o755)
	in := CNIInstall{ConfDir: filepath.Join(dir, "net.d"), BinDir: filepath.Join(dir, "bin"), BinarySrc: src, Socket: "/x.sock", MTU: 1400}
	if err := in.Install(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "net.d", "05-sigil.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", data)
	if st, err := os.Stat(filepath.Join(dir, "bin", "sigil-cni")); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("binary: %v %v", st, err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

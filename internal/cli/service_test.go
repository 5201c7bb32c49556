package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// fakeLB is a ServiceSource with fixed services.
type fakeLB []datapath.LBEntry

func (f fakeLB) List() ([]datapath.LBEntry, error) { return f, nil }

func be(s string, port uint16) datapath.Backend {
	return datapath.Backend{Address: netip.MustParseAddr(s), Port: port}
}

var fakeServices = fakeLB{
	{Service: datapath.Service{Frontend: datapath.Frontend{Address: netip.MustParseAddr("10.96.0.10"), Port: 53, Proto: datapath.ProtoUDP},
		Backends: []datapath.Backend{be("198.18.50.7", 5353), be("198.18.51.9", 5353)}}},
	{Service: datapath.Service{Frontend: datapath.Frontend{Address: netip.MustParseAddr("10.96.0.20"), Port: 80, Proto: datapath.ProtoTCP},
		Backends: []datapath.Backend{be("198.18.50.3", 8080)}, Affinity: 10800 * time.Second}},
	{Service: datapath.Service{Frontend: datapath.Frontend{Address: netip.MustParseAddr("10.96.0.30"), Port: 443, Proto: datapath.ProtoTCP}}},
}

// startServiceAgent serves the API with src as the service source (nil:
// services off).
func startServiceAgent(t *testing.T, src agent.ServiceSource) string {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := agent.NewManager(agent.Config{StateDir: t.TempDir(), PodCIDR: netip.MustParsePrefix("198.18.50.0/24"),
		Datapath: agent.NewMemDatapath(), LinkExists: links{}.exists, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	srv := agent.NewServer(m, log)
	if src != nil {
		srv.SetServices(src)
	}
	sock := filepath.Join(t.TempDir(), "sigil.sock")
	ln, err := agent.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return "--socket=" + sock
}

func TestServiceList(t *testing.T) {
	sock := startServiceAgent(t, fakeServices)
	golden(t, "service-list", mustCLI(t, "service", "list", sock))
	golden(t, "service-list-json", mustCLI(t, "service", "list", "-o", "json", sock))
	golden(t, "service-list-yaml", mustCLI(t, "svc", "list", "-o", "yaml", sock))

	off := startServiceAgent(t, nil)
	if _, err := runCLI(t, "service", "list", off); err == nil || !strings.Contains(err.Error(), "service load-balancing is off") {
		t.Errorf("services off: %v", err)
	}
}

// TestBPFLBList reads a real pinned load-balancer (loaded, not attached).
func TestBPFLBList(t *testing.T) {
	dt.RequireBPF(t)
	pinDir := dt.PinDir(t)
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	for _, e := range fakeServices {
		if err := lb.UpsertService(e.Service); err != nil {
			t.Fatal(err)
		}
	}
	var got []BPFLBService
	if err := json.Unmarshal([]byte(mustCLI(t, "bpf", "lb", "list", "-o", "json", "--pin-dir", pinDir)), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Frontend.Protocol != "UDP" || len(got[0].Backends) != 2 || len(got[0].BackendIDs) != 2 ||
		got[0].RevNATIndex == 0 || got[1].AffinityTimeoutSeconds != 10800 || len(got[2].Backends) != 0 {
		t.Errorf("bpf lb list: %+v", got)
	}
	table := mustCLI(t, "bpf", "lb", "list", "--pin-dir", pinDir)
	for _, want := range []string{"FRONTEND", "10.96.0.10:53/UDP", "198.18.50.7:5353,198.18.51.9:5353", "ClientIP 10800s",
		"10.96.0.30:443/TCP  (none: connections refused)"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if _, err := runCLI(t, "bpf", "lb", "list", "--pin-dir", "/sys/fs/bpf/sigil-does-not-exist"); err == nil ||
		!strings.Contains(err.Error(), "no service load-balancer pinned") {
		t.Errorf("missing lb: %v", err)
	}
}

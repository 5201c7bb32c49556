package cli

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// TestBPFPrefilterList reads a real pinned prefilter: rules, counters, and
// the error when none is pinned.
func TestBPFPrefilterList(t *testing.T) {
	dt.RequireBPF(t)
	pinDir := dt.PinDir(t)
	pf, err := datapath.LoadPrefilter(datapath.PrefilterConfig{PinDir: pinDir, MaxEntries: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if err := pf.Replace([]datapath.PrefilterRule{
		{Prefix: netip.MustParsePrefix("198.18.66.0/24")},
		{Prefix: netip.MustParsePrefix("198.18.66.128/25"), Except: true},
	}); err != nil {
		t.Fatal(err)
	}
	frame := dt.Packet{Src: netip.MustParseAddr("198.18.66.7"), Dst: netip.MustParseAddr("198.18.60.2"), Proto: 17}.Bytes()
	if _, err := pf.Program().Run(&ebpf.RunOptions{Data: frame, Repeat: 2}); err != nil {
		t.Fatal(err)
	}

	var got BPFPrefilter
	if err := json.Unmarshal([]byte(mustCLI(t, "bpf", "prefilter", "list", "-o", "json", "--pin-dir", pinDir)), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Rules) != 2 || got.Rules[0].CIDR.String() != "198.18.66.0/24" || got.Rules[0].Packets != 2 ||
		!got.Rules[1].Except || got.Rules[1].Packets != 0 {
		t.Errorf("prefilter list: %+v", got)
	}
	table := mustCLI(t, "bpf", "prefilter", "list", "--pin-dir", pinDir)
	for _, want := range []string{"CIDR", "198.18.66.0/24", "198.18.66.128/25 (except)", "INTERFACE"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if _, err := runCLI(t, "bpf", "prefilter", "list", "--pin-dir", "/sys/fs/bpf/sigil-does-not-exist"); err == nil ||
		!strings.Contains(err.Error(), "no prefilter pinned") {
		t.Errorf("missing prefilter: %v", err)
	}
}

package datapath_test

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
)

// TestUpgradeCarriesGrownValues: conntrack entries and the runtime
// configuration pinned by the previous release (ct_entry of 40 bytes,
// runtime_config of 16, before the service fields) are carried over,
// zero-extended, when the datapath is loaded: an agent upgrade keeps
// established flows and the tunnel settings.
func TestUpgradeCarriesGrownValues(t *testing.T) {
	dt.RequireBPF(t)
	dir := dt.PinDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pin := func(spec *ebpf.MapSpec) *ebpf.Map {
		t.Helper()
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		if err := m.Pin(filepath.Join(dir, spec.Name)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	ct := pin(&ebpf.MapSpec{Name: datapath.MapCT4, Type: ebpf.LRUHash, KeySize: 16, ValueSize: 40, MaxEntries: 131072})
	cfg := pin(&ebpf.MapSpec{Name: datapath.MapConfig, Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})

	key := make([]byte, 16)
	copy(key[0:], ipA.AsSlice())
	copy(key[4:], ipB.AsSlice())
	binary.BigEndian.PutUint16(key[8:], 40000)
	binary.BigEndian.PutUint16(key[10:], 80)
	key[12], key[13] = 6, uint8(datapath.Egress)
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	val := make([]byte, 40)
	binary.NativeEndian.PutUint64(val[0:], uint64(ts.Nano()+int64(time.Hour)))
	binary.NativeEndian.PutUint64(val[8:], 3)   // packets
	binary.NativeEndian.PutUint32(val[24:], 77) // cookie
	val[37] = datapath.CTSeenReply
	if err := ct.Put(key, val); err != nil {
		t.Fatal(err)
	}
	rc := make([]byte, 16)
	binary.NativeEndian.PutUint32(rc[0:], uint32(datapath.EnforceAlways))
	binary.NativeEndian.PutUint32(rc[4:], datapath.ConfigTunnel)
	binary.NativeEndian.PutUint32(rc[12:], 7)
	if err := cfg.Put(uint32(0), rc); err != nil {
		t.Fatal(err)
	}

	dp, err := datapath.Load(datapath.Config{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	es, err := dp.Conntrack.List()
	if err != nil || len(es) != 1 {
		t.Fatalf("conntrack after the upgrade: %v, %v; want the one entry", es, err)
	}
	e := es[0]
	if e.Tuple.Src != ipA || e.Tuple.Dst != ipB || e.Tuple.DstPort != 80 || e.Packets != 3 || e.Cookie != 77 ||
		e.Flags != datapath.CTSeenReply || e.RevNATIndex != 0 || e.Backend.IsValid() || e.Expires < 30*time.Minute {
		t.Errorf("carried entry %+v", e)
	}
	got, err := dp.Config.Get()
	if err != nil || got.Enforcement != datapath.EnforceAlways || got.Flags != datapath.ConfigTunnel ||
		got.TunnelIfIndex != 7 || len(got.ServiceCIDRs) != 0 {
		t.Errorf("runtime config after the upgrade %+v, %v", got, err)
	}
	// And the new fields work.
	want := datapath.RuntimeConfig{Flags: datapath.ConfigServiceDefer, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.128.0/17")}}
	if err := dp.SetRuntimeConfig(want); err != nil {
		t.Fatal(err)
	}
	if got, err := dp.Config.Get(); err != nil || len(got.ServiceCIDRs) != 1 || got.ServiceCIDRs[0] != want.ServiceCIDRs[0] {
		t.Errorf("service CIDRs read back %v, %v", got.ServiceCIDRs, err)
	}
}

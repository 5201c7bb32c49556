package datapathtest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sigil-net/sigil/datapath"
)

// BPFFSRoot is where test pin directories are made.
const BPFFSRoot = "/sys/fs/bpf"

// TC return codes as the programs return them.
const (
	ActNext int32 = -1 // TC_ACT_UNSPEC: allowed, let later programs run
	ActShot int32 = 2  // TC_ACT_SHOT: dropped
)

// Harness is a loaded datapath in a throwaway pin directory.
type Harness struct {
	*datapath.Datapath
	t      testing.TB
	events *datapath.EventReader
}

// PinDir returns a fresh, unused pin directory path under /sys/fs/bpf and
// removes it when the test ends.
func PinDir(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	dir := filepath.Join(BPFFSRoot, "sigil-test-"+hex.EncodeToString(b))
	t.Cleanup(func() { datapath.Unpin(dir) })
	return dir
}

// RequireBPF skips the test when the process cannot load BPF programs.
func RequireBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
	if _, err := os.Stat(BPFFSRoot); err != nil {
		t.Skip("no bpffs at /sys/fs/bpf")
	}
}

// New loads the datapath with cfg (PinDir filled in when empty) and a
// reader on its event ring buffer. Everything is removed at test end.
func New(t testing.TB, cfg datapath.Config) *Harness {
	t.Helper()
	RequireBPF(t)
	if cfg.PinDir == "" {
		cfg.PinDir = PinDir(t)
	}
	if cfg.EventsBytes == 0 {
		cfg.EventsBytes = 1 << 16
	}
	dp, err := datapath.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := dp.NewEventReader()
	if err != nil {
		dp.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ev.Close()
		dp.Close()
	})
	return &Harness{Datapath: dp, t: t, events: ev}
}

// Result is what one program run did.
type Result struct {
	Action int32
	// Event is the flow event the run emitted, if any.
	Event *datapath.FlowEvent
	// Data is the frame as the program left it (translated, for instance).
	Data []byte
	// Mark is skb->mark as the program left it.
	Mark uint32
}

// ActRedirect is TC_ACT_REDIRECT: the program redirected the packet.
const ActRedirect int32 = 7

// skbCtx is struct __sk_buff as BPF_PROG_TEST_RUN takes and returns it; only
// mark is set or read here.
type skbCtx struct {
	Len     uint32
	PktType uint32
	Mark    uint32
	Rest    [192 - 12]byte
}

// Allowed reports whether the packet was passed on.
func (r Result) Allowed() bool { return r.Action == ActNext }

// Reason is the event's reason, or ReasonForwarded when no event was emitted.
func (r Result) Reason() datapath.Reason {
	if r.Event == nil {
		return datapath.ReasonForwarded
	}
	return r.Event.Reason
}

// Run runs the program for dir (Egress: from-container, Ingress:
// to-container) on p. The packet's skb comes from loopback (ifindex 1), so
// endpoints under test use IfIndex 1.
func (h *Harness) Run(dir datapath.Direction, p Packet) Result {
	h.t.Helper()
	return h.RunRaw(dir, p.Bytes())
}

// RunRaw is Run on raw frame bytes.
func (h *Harness) RunRaw(dir datapath.Direction, frame []byte) Result {
	h.t.Helper()
	return h.RunProg(h.program(dir), frame, 0)
}

// RunMarked is Run with skb->mark set to mark on entry.
func (h *Harness) RunMarked(dir datapath.Direction, p Packet, mark uint32) Result {
	h.t.Helper()
	return h.RunProg(h.program(dir), p.Bytes(), mark)
}

// RunProg runs any of the datapath's programs on frame, with skb->mark set
// to mark on entry.
func (h *Harness) RunProg(prog *ebpf.Program, frame []byte, mark uint32) Result {
	h.t.Helper()
	in := skbCtx{Mark: mark}
	var out skbCtx
	data := make([]byte, len(frame)+256)
	opts := &ebpf.RunOptions{Data: frame, DataOut: data, Context: in, ContextOut: &out}
	ret, err := prog.Run(opts)
	if err != nil {
		h.t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	res := Result{Action: int32(ret), Data: opts.DataOut, Mark: out.Mark}
	h.events.SetDeadline(time.Now().Add(5 * time.Millisecond))
	ev, err := h.events.Read()
	if err == nil {
		res.Event = &ev
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		h.t.Fatalf("read event: %v", err)
	}
	return res
}

func (h *Harness) program(dir datapath.Direction) *ebpf.Program {
	from, to := h.Programs()
	if dir == datapath.Egress {
		return from
	}
	return to
}

// Endpoint installs a test endpoint on loopback (ifindex 1).
func (h *Harness) Endpoint(ip string, id uint32, identity datapath.Identity, flags datapath.EndpointFlags) netip.Addr {
	h.t.Helper()
	addr := netip.MustParseAddr(ip)
	if err := h.Endpoints.Upsert(addr, datapath.EndpointInfo{ID: id, IfIndex: 1, Identity: identity, Flags: flags}); err != nil {
		h.t.Fatal(err)
	}
	if err := h.IPCache.Upsert(netip.PrefixFrom(addr, 32), datapath.IPCacheEntry{Identity: identity, LocalEndpoint: true}); err != nil {
		h.t.Fatal(err)
	}
	return addr
}

// Peer maps prefix to identity in the ipcache.
func (h *Harness) Peer(prefix string, identity datapath.Identity) {
	h.t.Helper()
	if err := h.IPCache.Upsert(netip.MustParsePrefix(prefix), datapath.IPCacheEntry{Identity: identity}); err != nil {
		h.t.Fatal(err)
	}
}

// SetPolicy installs exactly entries as the endpoint's policy map.
func (h *Harness) SetPolicy(epID uint32, entries datapath.PolicyMapEntries) {
	h.t.Helper()
	if _, err := h.Datapath.Policy.Sync(epID, entries); err != nil {
		h.t.Fatal(err)
	}
}

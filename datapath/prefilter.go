package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Prefilter map names, as in bpf/lib/prefilter.h.
const (
	MapPrefilter4     = "sigil_pf4"
	MapPrefilterStats = "sigil_pf_stats"
)

// DefaultPrefilterEntries is the default capacity of the deny list.
const DefaultPrefilterEntries = 131072

// XDPMode is how the prefilter is attached to an interface.
type XDPMode string

const (
	// XDPNative runs in the driver, before an skb exists (veth supports it).
	XDPNative XDPMode = "native"
	// XDPGeneric runs after skb allocation, for drivers without XDP.
	XDPGeneric XDPMode = "generic"
)

// PrefilterConfig configures the XDP prefilter.
type PrefilterConfig struct {
	// PinDir is the node's bpffs directory, shared with the tc datapath (the
	// flow-event ring buffer is shared through it).
	PinDir string
	// NetNS, if set, is the namespace whose interfaces Attach resolves.
	NetNS string
	// MaxEntries is the deny list's capacity (prefixes, excepts included).
	MaxEntries uint32
	Logger     *slog.Logger
}

// PrefilterRule is one prefix of the deny list. An Except prefix is carved
// out of a broader denied one: it passes.
type PrefilterRule struct {
	Prefix netip.Prefix
	Except bool
}

// PrefilterEntry is an installed rule with its counters (summed over CPUs).
type PrefilterEntry struct {
	PrefilterRule
	RuleID  uint32
	Packets uint64
	Bytes   uint64
}

// Prefilter is the loaded XDP prefilter of one node.
type Prefilter struct {
	cfg      PrefilterConfig
	log      *slog.Logger
	coll     *ebpf.Collection
	prog     *ebpf.Program
	outer    *ebpf.Map
	stats    *ebpf.Map
	innerMax uint32

	mu  sync.Mutex
	ids map[PrefilterRule]uint32
}

type pf4Key struct {
	PrefixLen uint32
	Addr      [4]byte
}

type pfEntry struct {
	RuleID uint32
	Flags  uint32
}

type pfStats struct {
	Packets   uint64
	Bytes     uint64
	LastEvent uint64
}

const pfFlagPass = 1 << 0

// LoadPrefilter loads the XDP program and its maps under cfg.PinDir, reusing
// the installed deny list (and its rule IDs) if there is one.
func LoadPrefilter(cfg PrefilterConfig) (*Prefilter, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("prefilter: %w", err)
	}
	spec, err := loadXdp()
	if err != nil {
		return nil, fmt.Errorf("prefilter: parse object: %w", err)
	}
	if cfg.MaxEntries != 0 {
		spec.Maps[MapPrefilter4].InnerMap.MaxEntries = cfg.MaxEntries
		spec.Maps[MapPrefilterStats].MaxEntries = cfg.MaxEntries
	}
	// Maps shared with the tc datapath take the size they were pinned with.
	for _, name := range []string{MapEvents, MapEvStats, MapEvRate} {
		if m, err := ebpf.LoadPinnedMap(filepath.Join(cfg.PinDir, name), nil); err == nil {
			spec.Maps[name].MaxEntries = m.MaxEntries()
			m.Close()
		}
	}
	coll, old, err := loadPinned("prefilter", spec, cfg.PinDir, []string{MapPrefilter4, MapPrefilterStats}, log)
	if err != nil {
		return nil, err
	}
	closeAll(old) // rebuilt by the agent, nothing to carry over
	p := &Prefilter{cfg: cfg, log: log, coll: coll, prog: coll.Programs["xdp_prefilter"],
		outer: coll.Maps[MapPrefilter4], stats: coll.Maps[MapPrefilterStats],
		innerMax: spec.Maps[MapPrefilter4].InnerMap.MaxEntries, ids: map[PrefilterRule]uint32{}}
	installed, err := p.List()
	if err != nil {
		coll.Close()
		return nil, err
	}
	for _, e := range installed {
		p.ids[e.PrefilterRule] = e.RuleID
	}
	return p, nil
}

// Close releases this process's handles; the pinned program stays attached.
func (p *Prefilter) Close() error {
	p.coll.Close()
	return nil
}

// Program returns the XDP program, for tests and benchmarks.
func (p *Prefilter) Program() *ebpf.Program { return p.prog }

// TCProgram returns the same deny list as a tc program (tc_prefilter),
// which Sigil does not attach: benchmarks compare the two hook points with it.
func (p *Prefilter) TCProgram() *ebpf.Program { return p.coll.Programs["tc_prefilter"] }

func (p *Prefilter) linkPin(ifName string, mode XDPMode) string {
	return filepath.Join(p.cfg.PinDir, "links", "xdp-"+ifName+"-"+string(mode))
}

// Attach attaches the prefilter to ifName, in native mode where the driver
// supports it and generic mode otherwise, and returns the mode in use.
// Attaching again swaps in this process's program.
func (p *Prefilter) Attach(ifName string) (XDPMode, error) {
	var mode XDPMode
	err := inNetNS(p.cfg.NetNS, func() error {
		ifIndex, err := interfaceIndex(ifName)
		if err != nil {
			return err
		}
		valid := func(info *link.Info) bool { return info.XDP() != nil && int(info.XDP().Ifindex) == ifIndex }
		for _, m := range []XDPMode{XDPNative, XDPGeneric} {
			updated, err := updatePinnedLink(p.linkPin(ifName, m), p.prog, valid)
			if err != nil {
				return err
			}
			if updated {
				mode = m
				return nil
			}
		}
		var errs []error
		for _, m := range []XDPMode{XDPNative, XDPGeneric} {
			flags := link.XDPDriverMode
			if m == XDPGeneric {
				flags = link.XDPGenericMode
			}
			err := pinNewLink(p.linkPin(ifName, m), func() (link.Link, error) {
				return link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifIndex, Flags: flags})
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m, err))
				continue
			}
			mode = m
			return nil
		}
		return fmt.Errorf("attach prefilter to %s: %w", ifName, errors.Join(errs...))
	})
	return mode, err
}

// Detach removes the prefilter from ifName; a missing attachment is fine.
func (p *Prefilter) Detach(ifName string) error {
	var errs []error
	for _, m := range []XDPMode{XDPNative, XDPGeneric} {
		if err := detachPinnedLink(p.linkPin(ifName, m)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PrefilterAttachments lists the interfaces the prefilter pinned under
// pinDir is attached to, with their modes.
func PrefilterAttachments(pinDir string) (map[string]XDPMode, error) {
	entries, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]XDPMode{}
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "xdp-")
		if !ok {
			continue
		}
		for _, m := range []XDPMode{XDPNative, XDPGeneric} {
			if ifName, ok := strings.CutSuffix(name, "-"+string(m)); ok {
				out[ifName] = m
			}
		}
	}
	return out, nil
}

// Replace makes the deny list exactly rules, atomically: a new trie is
// filled and swapped in with one map update, so packets see either the old
// list or the new one. Rule IDs (and so counters) stay with their prefixes.
func (p *Prefilter) Replace(rules []PrefilterRule) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(rules) > int(p.innerMax) {
		return fmt.Errorf("prefilter: %d rules exceed the capacity of %d", len(rules), p.innerMax)
	}
	want := map[PrefilterRule]bool{}
	for _, r := range rules {
		if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() {
			return fmt.Errorf("prefilter: %v is not an IPv4 prefix", r.Prefix)
		}
		r.Prefix = r.Prefix.Masked()
		want[r] = true
	}
	ids := map[PrefilterRule]uint32{}
	used := map[uint32]bool{}
	for r, id := range p.ids {
		if want[r] {
			ids[r] = id
			used[id] = true
		}
	}
	// New rules get IDs in prefix order, so the same list always numbers
	// the same way.
	ordered := make([]PrefilterRule, 0, len(want))
	for r := range want {
		ordered = append(ordered, r)
	}
	sort.Slice(ordered, func(i, j int) bool {
		a, b := ordered[i], ordered[j]
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c < 0
		}
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return a.Prefix.Bits() < b.Prefix.Bits()
		}
		return !a.Except && b.Except
	})
	next := uint32(1)
	var fresh []uint32
	for _, r := range ordered {
		if _, ok := ids[r]; ok {
			continue
		}
		for used[next] {
			next++
		}
		ids[r] = next
		used[next] = true
		fresh = append(fresh, next)
	}
	// A recycled ID starts from zero.
	zero := make([]pfStats, ebpf.MustPossibleCPU())
	for _, id := range fresh {
		if err := p.stats.Put(id, zero); err != nil {
			return fmt.Errorf("prefilter: reset counters of rule %d: %w", id, err)
		}
	}

	inner, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sigil_pf4_list", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8,
		MaxEntries: p.innerMax, Flags: 1 /* BPF_F_NO_PREALLOC */})
	if err != nil {
		return fmt.Errorf("prefilter: new list: %w", err)
	}
	defer inner.Close()
	for r, id := range ids {
		v := pfEntry{RuleID: id}
		if r.Except {
			v.Flags = pfFlagPass
		}
		if err := inner.Put(pf4Key{PrefixLen: uint32(r.Prefix.Bits()), Addr: r.Prefix.Addr().As4()}, v); err != nil {
			return fmt.Errorf("prefilter: add %s: %w", r.Prefix, err)
		}
	}
	if err := p.outer.Put(uint32(0), inner); err != nil {
		return fmt.Errorf("prefilter: swap in the new list: %w", err)
	}
	p.ids = ids
	return nil
}

// List returns the installed rules with their counters.
func (p *Prefilter) List() ([]PrefilterEntry, error) {
	return listPrefilter(p.outer, p.stats)
}

// ListPinnedPrefilter reads the deny list pinned under pinDir, for the CLI.
func ListPinnedPrefilter(pinDir string) ([]PrefilterEntry, error) {
	outer, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapPrefilter4), nil)
	if err != nil {
		return nil, fmt.Errorf("open prefilter list: %w", err)
	}
	defer outer.Close()
	stats, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapPrefilterStats), nil)
	if err != nil {
		return nil, fmt.Errorf("open prefilter counters: %w", err)
	}
	defer stats.Close()
	return listPrefilter(outer, stats)
}

func listPrefilter(outer, stats *ebpf.Map) ([]PrefilterEntry, error) {
	var inner *ebpf.Map
	if err := outer.Lookup(uint32(0), &inner); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("prefilter list: %w", err)
	}
	defer inner.Close()
	var out []PrefilterEntry
	var k pf4Key
	var v pfEntry
	it := inner.Iterate()
	for it.Next(&k, &v) {
		e := PrefilterEntry{PrefilterRule: PrefilterRule{Prefix: netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.PrefixLen)),
			Except: v.Flags&pfFlagPass != 0}, RuleID: v.RuleID}
		var perCPU []pfStats
		if err := stats.Lookup(v.RuleID, &perCPU); err == nil {
			for _, s := range perCPU {
				e.Packets += s.Packets
				e.Bytes += s.Bytes
			}
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RuleID < out[j].RuleID })
	return out, nil
}

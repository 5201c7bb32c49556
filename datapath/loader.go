package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Config configures a Datapath. Zero sizes take the defaults compiled into
// the object (bpf/lib/maps.h).
type Config struct {
	// PinDir is the bpffs directory under which maps and links are pinned,
	// e.g. /sys/fs/bpf/sigil. Each simulated node needs its own.
	PinDir string
	// NetNS, if set, is the network namespace (a path such as
	// /var/run/netns/node1) in which interfaces are resolved for attaching.
	// Empty means the calling thread's namespace.
	NetNS string
	// AttachMode selects TCX, legacy tc (clsact) or auto (TCX, falling back
	// to tc where the kernel lacks it).
	AttachMode AttachMode

	EndpointsMax    uint32
	IPCacheMax      uint32
	PolicyEndpoints uint32
	PolicyEntries   uint32 // per endpoint
	CTMax           uint32
	EventsBytes     uint32 // ring buffer size, a power of two multiple of the page size

	Logger *slog.Logger
}

// Datapath is the loaded set of programs and maps of one node.
type Datapath struct {
	*Maps
	cfg           Config
	log           *slog.Logger
	coll          *ebpf.Collection
	fromContainer *ebpf.Program
	toContainer   *ebpf.Program
	fromOverlay   *ebpf.Program
	toOverlay     *ebpf.Program
	toNetdev      *ebpf.Program
	fromNetdev    *ebpf.Program
	localIngress  *ebpf.Program
	mode          AttachMode
}

const bpffsMagic = 0xcafe4a11

// Load loads the programs, and creates or reuses the pinned maps under
// cfg.PinDir. A pinned map whose layout no longer matches is replaced, with
// its entries copied over when only its capacity changed, and the reason is
// logged.
func Load(cfg Config) (*Datapath, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.PinDir == "" {
		return nil, errors.New("datapath: PinDir is required")
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("datapath: create pin dir: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.PinDir, &st); err != nil {
		return nil, fmt.Errorf("datapath: statfs %s: %w", cfg.PinDir, err)
	}
	if uint32(st.Type) != bpffsMagic {
		return nil, fmt.Errorf("datapath: %s is not on a bpf filesystem (mount bpffs at /sys/fs/bpf; note `ip netns exec` hides it)", cfg.PinDir)
	}

	spec, err := loadLxc()
	if err != nil {
		return nil, fmt.Errorf("datapath: parse object: %w", err)
	}
	applySizes(spec, &cfg)

	coll, old, err := loadPinned("datapath", spec, cfg.PinDir, pinnedMaps, log)
	if err != nil {
		return nil, err
	}
	defer closeAll(old)
	for name, m := range old {
		migrateEntries(name, m, coll.Maps[name], log)
	}

	raw := map[string]*ebpf.Map{}
	for _, name := range pinnedMaps {
		raw[name] = coll.Maps[name]
	}
	maps := newMaps(raw, cfg.PinDir)
	maps.Policy.innerMax = spec.Maps[MapPolicy].InnerMap.MaxEntries

	d := &Datapath{Maps: maps, cfg: cfg, log: log, coll: coll,
		fromContainer: coll.Programs["from_container"], toContainer: coll.Programs["to_container"],
		fromOverlay: coll.Programs["from_overlay"], toOverlay: coll.Programs["to_overlay"],
		toNetdev: coll.Programs["to_netdev"], fromNetdev: coll.Programs["from_netdev"],
		localIngress: coll.Programs["local_ingress"]}
	if d.mode, err = resolveAttachMode(cfg.AttachMode); err != nil {
		coll.Close()
		return nil, err
	}
	return d, nil
}

func applySizes(spec *ebpf.CollectionSpec, cfg *Config) {
	set := func(name string, v uint32) {
		if v != 0 {
			spec.Maps[name].MaxEntries = v
		}
	}
	set(MapEndpoints, cfg.EndpointsMax)
	set(MapIPCache, cfg.IPCacheMax)
	set(MapPolicy, cfg.PolicyEndpoints)
	set(MapCT4, cfg.CTMax)
	set(MapEvents, cfg.EventsBytes)
	if cfg.PolicyEntries != 0 {
		spec.Maps[MapPolicy].InnerMap.MaxEntries = cfg.PolicyEntries
	}
}

// loadPinned loads spec with its maps pinned under pinDir, reusing the
// pinned maps whose layout matches. Those among names that no longer match
// are unpinned first and returned, still open, so the caller can carry their
// entries over (and must close them). what prefixes errors.
func loadPinned(what string, spec *ebpf.CollectionSpec, pinDir string, names []string, log *slog.Logger) (*ebpf.Collection, map[string]*ebpf.Map, error) {
	old, err := retirePinnedMaps(spec, pinDir, names, log)
	if err != nil {
		return nil, nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}})
	if err != nil {
		closeAll(old)
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, nil, fmt.Errorf("%s: verifier rejected the programs: %+v", what, ve)
		}
		return nil, nil, fmt.Errorf("%s: load: %w", what, err)
	}
	return coll, old, nil
}

// retirePinnedMaps unpins maps whose pinned layout differs from spec, and
// returns them (still open) so their entries can be carried over.
func retirePinnedMaps(spec *ebpf.CollectionSpec, pinDir string, names []string, log *slog.Logger) (map[string]*ebpf.Map, error) {
	old := map[string]*ebpf.Map{}
	for _, name := range names {
		path := filepath.Join(pinDir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll(old)
			return nil, fmt.Errorf("datapath: open pinned %s: %w", name, err)
		}
		reason := incompatibility(spec.Maps[name], m)
		if reason == "" {
			m.Close()
			continue
		}
		log.Warn("replacing pinned map", "map", name, "reason", reason)
		if err := os.Remove(path); err != nil {
			m.Close()
			closeAll(old)
			return nil, fmt.Errorf("datapath: unpin %s: %w", name, err)
		}
		old[name] = m
	}
	return old, nil
}

// incompatibility says why a pinned map cannot be reused for spec, or "".
func incompatibility(spec *ebpf.MapSpec, m *ebpf.Map) string {
	if err := spec.Compatible(m); err != nil {
		return err.Error()
	}
	if spec.Type != ebpf.HashOfMaps {
		return ""
	}
	// The outer map's inner template is not visible from user space: compare
	// with an installed inner map, and re-create an empty outer map anyway,
	// which costs nothing and guarantees the template.
	var k uint32
	var id uint32
	it := m.Iterate()
	if !it.Next(&k, &id) {
		return "empty map-in-map is re-created to refresh its inner template"
	}
	inner, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return fmt.Sprintf("inner map unreadable: %v", err)
	}
	defer inner.Close()
	if inner.MaxEntries() != spec.InnerMap.MaxEntries {
		return fmt.Sprintf("inner map capacity %d, want %d", inner.MaxEntries(), spec.InnerMap.MaxEntries)
	}
	return ""
}

// migrateEntries copies entries from a retired map into its replacement when
// their key and value layouts agree (a capacity change). Maps whose contents
// the agent rebuilds (policy, events, counters) are not copied.
func migrateEntries(name string, from, to *ebpf.Map, log *slog.Logger) {
	switch name {
	case MapEndpoints, MapIPCache, MapCT4, MapConfig:
	default:
		log.Info("pinned map replaced empty; the agent repopulates it", "map", name)
		return
	}
	// A value that grew at its end (new fields, zero for old entries) is
	// carried over too: conntrack entries and the runtime configuration
	// gained fields that way.
	if from.Type() != to.Type() || from.KeySize() != to.KeySize() || from.ValueSize() > to.ValueSize() {
		log.Warn("pinned map layout changed; entries not carried over, the agent repopulates them", "map", name)
		return
	}
	k := make([]byte, from.KeySize())
	v := make([]byte, from.ValueSize())
	nv := make([]byte, to.ValueSize())
	n, failed := 0, 0
	it := from.Iterate()
	for it.Next(&k, &v) {
		copy(nv, v)
		if err := to.Put(k, nv); err != nil {
			failed++
			continue
		}
		n++
	}
	log.Info("carried entries over to the replaced map", "map", name, "copied", n, "failed", failed)
}

// Mode returns the attach mode in use (TCX or tc).
func (d *Datapath) Mode() AttachMode { return d.mode }

// SetRuntimeConfig writes the runtime configuration.
func (d *Datapath) SetRuntimeConfig(rc RuntimeConfig) error { return d.Config.Set(rc) }

// Programs returns the per-endpoint programs, for tests and benchmarks.
func (d *Datapath) Programs() (fromContainer, toContainer *ebpf.Program) {
	return d.fromContainer, d.toContainer
}

// OverlayPrograms returns the tunnel device's and the native device's
// programs, for tests.
func (d *Datapath) OverlayPrograms() (fromOverlay, toOverlay, toNetdev *ebpf.Program) {
	return d.fromOverlay, d.toOverlay, d.toNetdev
}

// NetdevIngressProgram returns from_netdev, the native-routing devices'
// ingress program, for tests.
func (d *Datapath) NetdevIngressProgram() *ebpf.Program { return d.fromNetdev }

// LocalIngressProgram returns the cgroup ingress program, for tests.
func (d *Datapath) LocalIngressProgram() *ebpf.Program { return d.localIngress }

// Close releases this process's handles. Pinned maps and links, and so the
// datapath itself, stay in place.
func (d *Datapath) Close() error {
	d.coll.Close()
	return nil
}

// Unpin removes every pinned map and link under the pin directory and the
// directory itself, detaching the programs. For tests and uninstall.
func Unpin(pinDir string) error {
	if err := os.RemoveAll(pinDir); err != nil {
		return fmt.Errorf("datapath: remove %s: %w", pinDir, err)
	}
	return nil
}

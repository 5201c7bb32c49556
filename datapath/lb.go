package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Service load-balancing map names, as in bpf/lib/lb.h.
const (
	MapLBServices  = "sigil_lb4_svc"
	MapLBBackends  = "sigil_lb4_be"
	MapLBRevNAT    = "sigil_lb4_rnat"
	MapLBSockNAT   = "sigil_lb4_sknat"
	MapLBAffinity  = "sigil_lb_aff"
	DefaultCgroup2 = "/sys/fs/cgroup/unified"
)

var lbMaps = []string{MapLBServices, MapLBBackends, MapLBRevNAT, MapLBSockNAT, MapLBAffinity}

// Frontend is a service address: virtual IP, port and protocol.
type Frontend struct {
	Address netip.Addr
	Port    uint16
	Proto   uint8 // ProtoTCP or ProtoUDP
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s:%d/%s", f.Address, f.Port, ProtoName(f.Proto))
}

// Backend is where a service's connections go.
type Backend struct {
	Address netip.Addr
	Port    uint16
}

// Service is a frontend and its ready backends.
type Service struct {
	Frontend Frontend
	Backends []Backend
	// Affinity, when non-zero, keeps a client (its network namespace) on
	// the same backend for this long (sessionAffinity: ClientIP).
	Affinity time.Duration
}

// LBConfig configures the socket load-balancer.
type LBConfig struct {
	PinDir string // the node's bpffs directory
	// Cgroup is the cgroup v2 directory the programs attach to; its root
	// makes them apply to every process of the node (pods and host).
	Cgroup string
	Logger *slog.Logger
}

// LB is the loaded socket-level service load-balancer.
type LB struct {
	cfg  LBConfig
	coll *ebpf.Collection

	mu       sync.Mutex
	backends map[Backend]uint32  // backend -> ID
	refs     map[uint32]int      // backend ID -> services using it
	revNAT   map[Frontend]uint16 // frontend -> reverse NAT index
	services map[Frontend]Service
}

type lb4Key struct {
	Address [4]byte
	Port    [2]byte
	Slot    uint16
	Proto   uint8
	Pad     [3]uint8
}

type lb4Service struct {
	BackendID       uint32
	Count           uint16
	RevNATIndex     uint16
	AffinityTimeout uint32
	Flags           uint8
	Pad             [3]uint8
}

type lb4Backend struct {
	Address [4]byte
	Port    [2]byte
	Proto   uint8
	Pad     uint8
}

type lb4RevNAT struct {
	Address [4]byte
	Port    [2]byte
	Pad     uint16
}

const lbFlagAffinity = 1 << 0

var lbPrograms = map[string]ebpf.AttachType{
	"sock4_connect":     ebpf.AttachCGroupInet4Connect,
	"sock4_sendmsg":     ebpf.AttachCGroupUDP4Sendmsg,
	"sock4_recvmsg":     ebpf.AttachCGroupUDP4Recvmsg,
	"sock4_getpeername": ebpf.AttachCgroupInet4GetPeername,
}

// LoadLB loads the socket load-balancer's programs and maps under
// cfg.PinDir, and adopts the services already installed there.
func LoadLB(cfg LBConfig) (*LB, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Cgroup == "" {
		cfg.Cgroup = DefaultCgroup2
	}
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("lb: parse object: %w", err)
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("lb: %w", err)
	}
	coll, old, err := loadPinned("lb", spec, cfg.PinDir, lbMaps, log)
	if err != nil {
		return nil, err
	}
	closeAll(old) // rebuilt by the agent, nothing to carry over
	lb := &LB{cfg: cfg, coll: coll, backends: map[Backend]uint32{}, refs: map[uint32]int{},
		revNAT: map[Frontend]uint16{}, services: map[Frontend]Service{}}
	if err := lb.adopt(); err != nil {
		coll.Close()
		return nil, err
	}
	return lb, nil
}

// adopt reads the installed services back, so IDs stay stable across
// restarts.
func (lb *LB) adopt() error {
	svcs, err := listLB(lb.coll.Maps[MapLBServices], lb.coll.Maps[MapLBBackends], lb.coll.Maps[MapLBRevNAT])
	if err != nil {
		return err
	}
	for _, s := range svcs {
		lb.services[s.Frontend] = s.Service
		lb.revNAT[s.Frontend] = s.RevNATIndex
		for i, b := range s.Backends {
			lb.backends[b] = s.BackendIDs[i]
			lb.refs[s.BackendIDs[i]]++
		}
	}
	return nil
}

// Close releases this process's handles; attached programs stay.
func (lb *LB) Close() error {
	lb.coll.Close()
	return nil
}

func (lb *LB) linkPin(prog string) string {
	return filepath.Join(lb.cfg.PinDir, "links", "cgroup-"+prog)
}

// Attach attaches the socket programs to the cgroup (or swaps in this
// process's programs where they are attached already).
func (lb *LB) Attach() error {
	for name, at := range lbPrograms {
		prog := lb.coll.Programs[name]
		updated, err := updatePinnedLink(lb.linkPin(name), prog, nil)
		if err != nil {
			return fmt.Errorf("lb: %w", err)
		}
		if updated {
			continue
		}
		if err := pinNewLink(lb.linkPin(name), func() (link.Link, error) {
			return link.AttachCgroup(link.CgroupOptions{Path: lb.cfg.Cgroup, Attach: at, Program: prog})
		}); err != nil {
			return fmt.Errorf("lb: attach %s to %s: %w", name, lb.cfg.Cgroup, err)
		}
	}
	return nil
}

// Detach removes the socket programs from the cgroup.
func (lb *LB) Detach() error {
	var errs []error
	for name := range lbPrograms {
		errs = append(errs, detachPinnedLink(lb.linkPin(name)))
	}
	return errors.Join(errs...)
}

func lbKey(f Frontend, slot uint16) lb4Key {
	return lb4Key{Address: f.Address.As4(), Port: be16(f.Port), Slot: slot, Proto: f.Proto}
}

func (lb *LB) nextRevNAT() uint16 {
	used := map[uint16]bool{}
	for _, i := range lb.revNAT {
		used[i] = true
	}
	for i := uint16(1); ; i++ {
		if !used[i] {
			return i
		}
	}
}

func (lb *LB) backendID(b Backend) uint32 {
	if id, ok := lb.backends[b]; ok {
		return id
	}
	used := map[uint32]bool{}
	for _, id := range lb.backends {
		used[id] = true
	}
	id := uint32(1)
	for used[id] {
		id++
	}
	lb.backends[b] = id
	return id
}

// UpsertService installs or updates a service. The new backend slots are
// written first and the service's count last, so connections are balanced
// over either the old set or the new one; backends that remain keep their
// IDs, and established connections to them are untouched (they were
// translated at connect time).
func (lb *LB) UpsertService(s Service) error {
	f := s.Frontend
	if !f.Address.Is4() || (f.Proto != ProtoTCP && f.Proto != ProtoUDP) {
		return fmt.Errorf("lb: service %s: IPv4 TCP or UDP frontends only", f)
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	svcMap, beMap, rnMap := lb.coll.Maps[MapLBServices], lb.coll.Maps[MapLBBackends], lb.coll.Maps[MapLBRevNAT]
	prev, existed := lb.services[f]
	rev, ok := lb.revNAT[f]
	if !ok {
		rev = lb.nextRevNAT()
	}
	if err := rnMap.Put(rev, lb4RevNAT{Address: f.Address.As4(), Port: be16(f.Port)}); err != nil {
		return fmt.Errorf("lb: reverse NAT for %s: %w", f, err)
	}
	ids := make([]uint32, len(s.Backends))
	for i, b := range s.Backends {
		if !b.Address.Is4() {
			return fmt.Errorf("lb: service %s: backend %s is not IPv4", f, b.Address)
		}
		ids[i] = lb.backendID(b)
		if err := beMap.Put(ids[i], lb4Backend{Address: b.Address.As4(), Port: be16(b.Port), Proto: f.Proto}); err != nil {
			return fmt.Errorf("lb: backend %s: %w", b.Address, err)
		}
		if err := svcMap.Put(lbKey(f, uint16(i+1)), lb4Service{BackendID: ids[i]}); err != nil {
			return fmt.Errorf("lb: service %s slot %d: %w", f, i+1, err)
		}
	}
	master := lb4Service{Count: uint16(len(s.Backends)), RevNATIndex: rev}
	if s.Affinity > 0 {
		master.Flags |= lbFlagAffinity
		master.AffinityTimeout = uint32(s.Affinity / time.Second)
	}
	if err := svcMap.Put(lbKey(f, 0), master); err != nil {
		return fmt.Errorf("lb: service %s: %w", f, err)
	}
	for slot := len(s.Backends) + 1; existed && slot <= len(prev.Backends); slot++ {
		svcMap.Delete(lbKey(f, uint16(slot)))
	}
	lb.revNAT[f] = rev
	lb.services[f] = s
	for _, id := range ids {
		lb.refs[id]++
	}
	if existed {
		lb.release(prev)
	}
	return nil
}

// release drops a service's references to its backends, deleting backends
// no service uses any more and affinity entries pointing at them.
func (lb *LB) release(s Service) {
	for _, b := range s.Backends {
		id := lb.backends[b]
		if lb.refs[id]--; lb.refs[id] > 0 {
			continue
		}
		delete(lb.refs, id)
		delete(lb.backends, b)
		lb.coll.Maps[MapLBBackends].Delete(id)
	}
	lb.flushAffinity()
}

// flushAffinity deletes affinity entries whose backend is gone.
func (lb *LB) flushAffinity() {
	live := map[uint32]bool{}
	for _, id := range lb.backends {
		live[id] = true
	}
	aff := lb.coll.Maps[MapLBAffinity]
	var k [16]byte
	var v [16]byte
	var stale [][16]byte
	it := aff.Iterate()
	for it.Next(&k, &v) {
		id := binary.NativeEndian.Uint32(v[8:12]) // lb_affinity_value.backend_id
		if !live[id] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		aff.Delete(k)
	}
}

// DeleteService removes a service; a missing one is not an error.
func (lb *LB) DeleteService(f Frontend) error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	s, ok := lb.services[f]
	if !ok {
		return nil
	}
	svcMap := lb.coll.Maps[MapLBServices]
	if err := svcMap.Delete(lbKey(f, 0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("lb: delete %s: %w", f, err)
	}
	for slot := 1; slot <= len(s.Backends); slot++ {
		svcMap.Delete(lbKey(f, uint16(slot)))
	}
	lb.coll.Maps[MapLBRevNAT].Delete(lb.revNAT[f])
	delete(lb.revNAT, f)
	delete(lb.services, f)
	lb.release(s)
	return nil
}

// LBEntry is an installed service as the maps hold it.
type LBEntry struct {
	Service
	RevNATIndex uint16
	BackendIDs  []uint32
}

// List returns the installed services.
func (lb *LB) List() ([]LBEntry, error) {
	return listLB(lb.coll.Maps[MapLBServices], lb.coll.Maps[MapLBBackends], lb.coll.Maps[MapLBRevNAT])
}

// ListPinnedLB reads the services pinned under pinDir, for the CLI.
func ListPinnedLB(pinDir string) ([]LBEntry, error) {
	var ms []*ebpf.Map
	for _, name := range []string{MapLBServices, MapLBBackends, MapLBRevNAT} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		defer m.Close()
		ms = append(ms, m)
	}
	return listLB(ms[0], ms[1], ms[2])
}

func listLB(svcMap, beMap, _ *ebpf.Map) ([]LBEntry, error) {
	masters := map[Frontend]lb4Service{}
	slots := map[Frontend]map[uint16]uint32{}
	var k lb4Key
	var v lb4Service
	it := svcMap.Iterate()
	for it.Next(&k, &v) {
		f := Frontend{Address: netip.AddrFrom4(k.Address), Port: fromBE16(k.Port), Proto: k.Proto}
		if k.Slot == 0 {
			masters[f] = v
			continue
		}
		if slots[f] == nil {
			slots[f] = map[uint16]uint32{}
		}
		slots[f][k.Slot] = v.BackendID
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	var out []LBEntry
	for f, m := range masters {
		e := LBEntry{Service: Service{Frontend: f}, RevNATIndex: m.RevNATIndex}
		if m.Flags&lbFlagAffinity != 0 {
			e.Affinity = time.Duration(m.AffinityTimeout) * time.Second
		}
		for slot := uint16(1); slot <= m.Count; slot++ {
			id, ok := slots[f][slot]
			if !ok {
				continue
			}
			var be lb4Backend
			if err := beMap.Lookup(id, &be); err != nil {
				continue
			}
			e.Backends = append(e.Backends, Backend{Address: netip.AddrFrom4(be.Address), Port: fromBE16(be.Port)})
			e.BackendIDs = append(e.BackendIDs, id)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Frontend.String() < out[j].Frontend.String() })
	return out, nil
}

// Package ipam allocates pod addresses from a node's pod CIDR and persists
// every allocation crash-safely.
//
// The store is a bbolt file. bbolt takes an exclusive flock on the file while
// it is open for writing and every committed transaction is fsync'd before
// Commit returns, so:
//
//   - a process killed at any point either committed an allocation or did not;
//     nothing is half-written and nothing committed is lost;
//   - several processes may share one store by opening it per operation
//     (OpenWithTimeout / Do): they serialise on the file lock.
//
// Allocations are keyed by owner (container ID + interface name) and address
// family, so a retried ADD for the same owner returns the same address.
//
// On-disk layout (schema 1), designed for dual stack and for more pools:
//
//	meta/schema                     -> "1"
//	pools/<pool-id>/ips/<16-byte IP> -> JSON Allocation
//	pools/<pool-id>/cursor           -> 16-byte IP of the last allocation
//	owners/<containerID>/<ifName>/<family> -> "<pool-id>|<ip>"
//
// IPv4 addresses are stored as their 4-in-6 mapped 16-byte form so v4 and v6
// keys have one width and sort numerically. A pool id names a pool ("node-v4",
// "node-v6", later "cluster-<n>"); the family is part of the owner key.
package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the on-disk schema this package writes.
const SchemaVersion = "1"

// ErrExhausted is returned when a pool has no free address left.
var ErrExhausted = errors.New("ipam: address pool exhausted")

// ErrNotInPool is returned when a requested address is outside the pool.
var ErrNotInPool = errors.New("ipam: address not in pool")

var (
	bktMeta   = []byte("meta")
	bktPools  = []byte("pools")
	bktOwners = []byte("owners")
	bktIPs    = []byte("ips")
	keySchema = []byte("schema")
	keyCursor = []byte("cursor")
)

// Family is an address family.
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// FamilyOf returns the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Pool is a range to allocate from.
type Pool struct {
	// ID names the pool in the store ("node-v4").
	ID string
	// Prefix is the pool's CIDR.
	Prefix netip.Prefix
	// Gateway is the node-side gateway address; it is never allocated.
	// Zero means the first usable address of Prefix.
	Gateway netip.Addr
	// Reserved addresses are never allocated (besides network, broadcast
	// and gateway, which always are).
	Reserved []netip.Addr
}

// NewPool returns a pool for prefix with the default gateway (first usable
// address) and an id derived from the family ("node-v4" / "node-v6").
func NewPool(prefix netip.Prefix) (Pool, error) {
	if !prefix.IsValid() {
		return Pool{}, fmt.Errorf("ipam: invalid pool prefix")
	}
	prefix = prefix.Masked()
	p := Pool{Prefix: prefix}
	if prefix.Addr().Is4() {
		p.ID = "node-v4"
		if prefix.Bits() > 30 {
			return Pool{}, fmt.Errorf("ipam: pool %s too small: need at least a /30", prefix)
		}
	} else {
		p.ID = "node-v6"
		if prefix.Bits() > 126 {
			return Pool{}, fmt.Errorf("ipam: pool %s too small: need at least a /126", prefix)
		}
	}
	p.Gateway = prefix.Addr().Next()
	return p, nil
}

// Family returns the pool's address family.
func (p Pool) Family() Family { return FamilyOf(p.Prefix.Addr()) }

func (p Pool) gateway() netip.Addr {
	if p.Gateway.IsValid() {
		return p.Gateway
	}
	return p.Prefix.Masked().Addr().Next()
}

// lastAddr returns the last address in the prefix (broadcast for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Usable reports whether a may be handed to a pod.
func (p Pool) Usable(a netip.Addr) bool {
	pr := p.Prefix.Masked()
	if !pr.Contains(a) {
		return false
	}
	if a == pr.Addr() || a == p.gateway() {
		return false
	}
	if a.Is4() && a == lastAddr(pr) {
		return false
	}
	for _, r := range p.Reserved {
		if r == a {
			return false
		}
	}
	return true
}

// Size returns the number of allocatable addresses (capped at 1<<31).
func (p Pool) Size() int {
	pr := p.Prefix.Masked()
	host := pr.Addr().BitLen() - pr.Bits()
	if host >= 31 {
		return 1 << 31
	}
	n := 1<<host - 2 // network + gateway
	if pr.Addr().Is4() {
		n-- // broadcast
	}
	for _, r := range p.Reserved {
		if pr.Contains(r) && r != pr.Addr() && r != p.gateway() && !(r.Is4() && r == lastAddr(pr)) {
			n--
		}
	}
	return n
}

// Owner identifies an attachment.
type Owner struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (o Owner) String() string { return o.ContainerID + "/" + o.IfName }

func (o Owner) validate() error {
	if o.ContainerID == "" || o.IfName == "" {
		return fmt.Errorf("ipam: owner needs a container ID and an interface name")
	}
	if strings.ContainsRune(o.ContainerID, 0) || strings.ContainsRune(o.IfName, 0) {
		return fmt.Errorf("ipam: owner contains a NUL byte")
	}
	return nil
}

// Allocation is one address handed out.
type Allocation struct {
	Owner       Owner        `json:"owner"`
	Pool        string       `json:"pool"`
	IP          netip.Addr   `json:"ip"`
	Prefix      netip.Prefix `json:"prefix"`
	Gateway     netip.Addr   `json:"gateway"`
	AllocatedAt time.Time    `json:"allocatedAt"`
}

// Store is an open IPAM store. It is safe for concurrent use by goroutines
// (bbolt serialises writers); across processes use one open Store at a time
// (the file lock enforces it).
type Store struct {
	db   *bolt.DB
	path string
}

// DefaultLockTimeout bounds the wait for another process's file lock.
const DefaultLockTimeout = 30 * time.Second

// Open opens (creating if needed) the store at path, waiting up to
// DefaultLockTimeout for the file lock.
func Open(path string) (*Store, error) { return OpenWithTimeout(path, DefaultLockTimeout) }

// OpenWithTimeout opens the store, waiting at most timeout for the lock.
func OpenWithTimeout(path string, timeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ipam: create store dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("ipam: store %s is locked by another process (waited %s): %w", path, timeout, err)
		}
		return nil, fmt.Errorf("ipam: open store %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	err = db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(bktMeta)
		if err != nil {
			return err
		}
		if v := m.Get(keySchema); v != nil && string(v) != SchemaVersion {
			return fmt.Errorf("ipam: store schema %q, this build understands %q", v, SchemaVersion)
		}
		if err := m.Put(keySchema, []byte(SchemaVersion)); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bktPools); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(bktOwners)
		return err
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Do opens the store, runs fn and closes it: the way several processes
// share one store.
func Do(path string, timeout time.Duration, fn func(*Store) error) error {
	s, err := OpenWithTimeout(path, timeout)
	if err != nil {
		return err
	}
	ferr := fn(s)
	if cerr := s.Close(); ferr == nil {
		ferr = cerr
	}
	return ferr
}

// Path returns the store's file.
func (s *Store) Path() string { return s.path }

// Close closes the store and releases the file lock.
func (s *Store) Close() error { return s.db.Close() }

func ipKey(a netip.Addr) []byte {
	b := a.Unmap()
	if b.Is4() {
		b = netip.AddrFrom16(b.As16())
	}
	k := b.As16()
	return k[:]
}

func keyIP(k []byte) netip.Addr {
	a := netip.AddrFrom16([16]byte(k))
	return a.Unmap()
}

func ownerBucket(tx *bolt.Tx, o Owner, create bool) (*bolt.Bucket, error) {
	root := tx.Bucket(bktOwners)
	if create {
		c, err := root.CreateBucketIfNotExists([]byte(o.ContainerID))
		if err != nil {
			return nil, err
		}
		return c.CreateBucketIfNotExists([]byte(o.IfName))
	}
	c := root.Bucket([]byte(o.ContainerID))
	if c == nil {
		return nil, nil
	}
	return c.Bucket([]byte(o.IfName)), nil
}

func poolBucket(tx *bolt.Tx, id string, create bool) (*bolt.Bucket, error) {
	root := tx.Bucket(bktPools)
	if create {
		p, err := root.CreateBucketIfNotExists([]byte(id))
		if err != nil {
			return nil, err
		}
		if _, err := p.CreateBucketIfNotExists(bktIPs); err != nil {
			return nil, err
		}
		return p, nil
	}
	return root.Bucket([]byte(id)), nil
}

func splitRef(v []byte) (pool string, ip netip.Addr, ok bool) {
	i := bytes.LastIndexByte(v, '|')
	if i < 0 {
		return "", netip.Addr{}, false
	}
	a, err := netip.ParseAddr(string(v[i+1:]))
	if err != nil {
		return "", netip.Addr{}, false
	}
	return string(v[:i]), a, true
}

func getAlloc(pb *bolt.Bucket, ip netip.Addr) (*Allocation, error) {
	v := pb.Bucket(bktIPs).Get(ipKey(ip))
	if v == nil {
		return nil, nil
	}
	var a Allocation
	if err := json.Unmarshal(v, &a); err != nil {
		return nil, fmt.Errorf("ipam: corrupt allocation for %s: %w", ip, err)
	}
	return &a, nil
}

// Allocate returns owner's address from pool, allocating one if the owner
// has none of that family yet. A retried call returns the same address.
func (s *Store) Allocate(pool Pool, owner Owner) (Allocation, error) {
	return s.allocate(pool, owner, netip.Addr{})
}

// AllocateIP allocates a specific address (or returns owner's existing
// address of that family if it already has one equal to ip).
func (s *Store) AllocateIP(pool Pool, owner Owner, ip netip.Addr) (Allocation, error) {
	if !pool.Usable(ip) {
		return Allocation{}, fmt.Errorf("%w: %s is not allocatable in %s", ErrNotInPool, ip, pool.Prefix)
	}
	return s.allocate(pool, owner, ip)
}

func (s *Store) allocate(pool Pool, owner Owner, want netip.Addr) (Allocation, error) {
	if err := owner.validate(); err != nil {
		return Allocation{}, err
	}
	if pool.ID == "" || !pool.Prefix.IsValid() {
		return Allocation{}, fmt.Errorf("ipam: pool needs an id and a prefix")
	}
	fam := pool.Family()
	var out Allocation
	err := s.db.Update(func(tx *bolt.Tx) error {
		ob, err := ownerBucket(tx, owner, true)
		if err != nil {
			return err
		}
		pb, err := poolBucket(tx, pool.ID, true)
		if err != nil {
			return err
		}
		ips := pb.Bucket(bktIPs)
		// Existing allocation of this family for the owner?
		if ref := ob.Get([]byte(fam)); ref != nil {
			pid, ip, ok := splitRef(ref)
			if ok {
				if xb, _ := poolBucket(tx, pid, false); xb != nil {
					if a, err := getAlloc(xb, ip); err == nil && a != nil && a.Owner == owner {
						if !want.IsValid() || want == ip {
							out = *a
							return nil
						}
						return fmt.Errorf("ipam: %s already holds %s, not %s", owner, ip, want)
					}
				}
			}
			// Dangling reference: drop it and allocate afresh.
			if err := ob.Delete([]byte(fam)); err != nil {
				return err
			}
		}
		var ip netip.Addr
		if want.IsValid() {
			if ips.Get(ipKey(want)) != nil {
				return fmt.Errorf("ipam: %s is already allocated", want)
			}
			ip = want
		} else {
			ip, err = nextFree(pool, ips, pb.Get(keyCursor))
			if err != nil {
				return err
			}
		}
		a := Allocation{
			Owner: owner, Pool: pool.ID, IP: ip, Prefix: pool.Prefix.Masked(),
			Gateway: pool.gateway(), AllocatedAt: time.Now().UTC().Truncate(time.Second),
		}
		v, err := json.Marshal(a)
		if err != nil {
			return err
		}
		if err := ips.Put(ipKey(ip), v); err != nil {
			return err
		}
		if err := pb.Put(keyCursor, ipKey(ip)); err != nil {
			return err
		}
		if err := ob.Put([]byte(fam), []byte(pool.ID+"|"+ip.String())); err != nil {
			return err
		}
		out = a
		return nil
	})
	return out, err
}

// nextFree scans round-robin from the address after the cursor, so a just
// released address is not immediately handed to the next pod.
func nextFree(pool Pool, ips *bolt.Bucket, cursor []byte) (netip.Addr, error) {
	pr := pool.Prefix.Masked()
	first := pr.Addr()
	start := first
	if len(cursor) == 16 {
		if c := keyIP(cursor); pr.Contains(c) {
			start = c
		}
	}
	a := start
	// At most the whole prefix once around.
	limit := pool.Size() + len(pool.Reserved) + 4
	for i := 0; i <= limit; i++ {
		a = a.Next()
		if !a.IsValid() || !pr.Contains(a) {
			a = first
		}
		if pool.Usable(a) && ips.Get(ipKey(a)) == nil {
			return a, nil
		}
		if a == start && i > 0 {
			break
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: no free address in %s (%d allocatable)", ErrExhausted, pr, pool.Size())
}

// Get returns owner's allocations (one per family).
func (s *Store) Get(owner Owner) ([]Allocation, error) {
	var out []Allocation
	err := s.db.View(func(tx *bolt.Tx) error {
		ob, err := ownerBucket(tx, owner, false)
		if err != nil || ob == nil {
			return err
		}
		return ob.ForEach(func(_, ref []byte) error {
			pid, ip, ok := splitRef(ref)
			if !ok {
				return nil
			}
			pb, _ := poolBucket(tx, pid, false)
			if pb == nil {
				return nil
			}
			a, err := getAlloc(pb, ip)
			if err != nil {
				return err
			}
			if a != nil && a.Owner == owner {
				out = append(out, *a)
			}
			return nil
		})
	})
	return out, err
}

// Release frees every address owner holds. Releasing an owner without
// allocations is not an error. It returns what was released.
func (s *Store) Release(owner Owner) ([]Allocation, error) {
	if err := owner.validate(); err != nil {
		return nil, err
	}
	var out []Allocation
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		out, err = releaseOwner(tx, owner)
		return err
	})
	return out, err
}

func releaseOwner(tx *bolt.Tx, owner Owner) ([]Allocation, error) {
	var out []Allocation
	ob, err := ownerBucket(tx, owner, false)
	if err != nil || ob == nil {
		return nil, err
	}
	var refs [][]byte
	if err := ob.ForEach(func(_, ref []byte) error {
		refs = append(refs, bytes.Clone(ref))
		return nil
	}); err != nil {
		return nil, err
	}
	for _, ref := range refs {
		pid, ip, ok := splitRef(ref)
		if !ok {
			continue
		}
		pb, _ := poolBucket(tx, pid, false)
		if pb == nil {
			continue
		}
		a, err := getAlloc(pb, ip)
		if err != nil {
			return nil, err
		}
		if a != nil && a.Owner == owner {
			if err := pb.Bucket(bktIPs).Delete(ipKey(ip)); err != nil {
				return nil, err
			}
			out = append(out, *a)
		}
	}
	c := tx.Bucket(bktOwners).Bucket([]byte(owner.ContainerID))
	if err := c.DeleteBucket([]byte(owner.IfName)); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
		return nil, err
	}
	if k, _ := c.Cursor().First(); k == nil {
		if err := tx.Bucket(bktOwners).DeleteBucket([]byte(owner.ContainerID)); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return nil, err
		}
	}
	return out, nil
}

// List returns every allocation in every pool.
func (s *Store) List() ([]Allocation, error) {
	var out []Allocation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktPools).ForEachBucket(func(pid []byte) error {
			pb := tx.Bucket(bktPools).Bucket(pid)
			ips := pb.Bucket(bktIPs)
			if ips == nil {
				return nil
			}
			return ips.ForEach(func(_, v []byte) error {
				var a Allocation
				if err := json.Unmarshal(v, &a); err != nil {
					return fmt.Errorf("ipam: corrupt allocation: %w", err)
				}
				out = append(out, a)
				return nil
			})
		})
	})
	return out, err
}

// GC releases every allocation whose owner keep rejects, and repairs owner
// index entries that point nowhere. It returns what was released.
func (s *Store) GC(keep func(Owner) bool) ([]Allocation, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	seen := map[Owner]bool{}
	var out []Allocation
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, a := range all {
			if seen[a.Owner] || keep(a.Owner) {
				continue
			}
			seen[a.Owner] = true
			rel, err := releaseOwner(tx, a.Owner)
			if err != nil {
				return err
			}
			out = append(out, rel...)
			// An allocation whose owner index was lost is still freed.
			if len(rel) == 0 {
				if pb, _ := poolBucket(tx, a.Pool, false); pb != nil {
					if err := pb.Bucket(bktIPs).Delete(ipKey(a.IP)); err != nil {
						return err
					}
					out = append(out, a)
				}
			}
		}
		return nil
	})
	return out, err
}

// Package cidrpool hands out fixed-size blocks of a cluster CIDR pool, for
// per-node pod CIDRs. A Pool is plain memory; the operator rebuilds it from
// the SigilNode objects when it starts (Occupy) and is the only writer, as
// the leader.
package cidrpool

import (
	"errors"
	"fmt"
	"net/netip"
)

// MaxBlocks bounds the number of blocks a pool may hold (2^24), so its
// bitmap stays small (2 MiB).
const MaxBlocks = 1 << 24

// ErrExhausted is returned when every block of a pool is in use.
var ErrExhausted = errors.New("cidrpool: pool exhausted")

// Pool is a CIDR split into blocks of one prefix length. Not safe for
// concurrent use.
type Pool struct {
	prefix   netip.Prefix
	maskSize int
	n        uint64 // number of blocks
	used     uint64
	bits     []uint64
	next     uint64 // where the next search starts, so released blocks rest a while
}

// New returns an empty pool of cidr split into /maskSize blocks.
func New(cidr netip.Prefix, maskSize int) (*Pool, error) {
	if !cidr.IsValid() {
		return nil, errors.New("cidrpool: invalid CIDR")
	}
	if cidr != cidr.Masked() {
		return nil, fmt.Errorf("cidrpool: %s is not a network prefix (want %s)", cidr, cidr.Masked())
	}
	if maskSize < cidr.Bits() || maskSize > cidr.Addr().BitLen() {
		return nil, fmt.Errorf("cidrpool: mask size /%d must lie between the pool's /%d and /%d", maskSize, cidr.Bits(), cidr.Addr().BitLen())
	}
	if maskSize-cidr.Bits() > 24 {
		return nil, fmt.Errorf("cidrpool: %s in /%d blocks is more than %d blocks", cidr, maskSize, MaxBlocks)
	}
	n := uint64(1) << (maskSize - cidr.Bits())
	return &Pool{prefix: cidr, maskSize: maskSize, n: n, bits: make([]uint64, (n+63)/64)}, nil
}

// Prefix returns the pool's CIDR.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// MaskSize returns the block prefix length.
func (p *Pool) MaskSize() int { return p.maskSize }

// Size returns the number of blocks.
func (p *Pool) Size() uint64 { return p.n }

// Used returns the number of blocks in use.
func (p *Pool) Used() uint64 { return p.used }

// String describes the pool and its use, e.g. "10.0.0.0/8 in /24 blocks (3 of 65536 used)".
func (p *Pool) String() string {
	return fmt.Sprintf("%s in /%d blocks (%d of %d used)", p.prefix, p.maskSize, p.used, p.n)
}

// Contains reports whether block is one of the pool's blocks.
func (p *Pool) Contains(block netip.Prefix) bool {
	_, err := p.index(block)
	return err == nil
}

// index returns the block number of block.
func (p *Pool) index(block netip.Prefix) (uint64, error) {
	if !block.IsValid() || block.Bits() != p.maskSize || block != block.Masked() ||
		block.Addr().Is4() != p.prefix.Addr().Is4() || !p.prefix.Contains(block.Addr()) {
		return 0, fmt.Errorf("cidrpool: %s is not a /%d block of %s", block, p.maskSize, p.prefix)
	}
	a := block.Addr().As16()
	off := 128 - p.prefix.Addr().BitLen() // IPv4 sits in the last 32 bits of As16
	var idx uint64
	for i := p.prefix.Bits(); i < p.maskSize; i++ {
		bit := off + i
		idx = idx<<1 | uint64(a[bit/8]>>(7-bit%8)&1)
	}
	return idx, nil
}

// block returns the block with number idx.
func (p *Pool) block(idx uint64) netip.Prefix {
	a := p.prefix.Addr().As16()
	off := 128 - p.prefix.Addr().BitLen()
	for i := p.maskSize - 1; i >= p.prefix.Bits(); i-- {
		bit := off + i
		if idx&1 == 1 {
			a[bit/8] |= 1 << (7 - bit%8)
		}
		idx >>= 1
	}
	addr := netip.AddrFrom16(a)
	if p.prefix.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, p.maskSize)
}

func (p *Pool) isUsed(i uint64) bool { return p.bits[i/64]&(1<<(i%64)) != 0 }

// Allocate takes a free block.
func (p *Pool) Allocate() (netip.Prefix, error) {
	if p.used == p.n {
		return netip.Prefix{}, fmt.Errorf("%w: %s", ErrExhausted, p)
	}
	for k := uint64(0); k < p.n; k++ {
		i := (p.next + k) % p.n
		if !p.isUsed(i) {
			p.bits[i/64] |= 1 << (i % 64)
			p.used++
			p.next = (i + 1) % p.n
			return p.block(i), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: %s", ErrExhausted, p) // unreachable: used < n
}

// Occupy marks block as in use (a block found on an existing node).
func (p *Pool) Occupy(block netip.Prefix) error {
	i, err := p.index(block)
	if err != nil {
		return err
	}
	if p.isUsed(i) {
		return fmt.Errorf("cidrpool: %s is already in use", block)
	}
	p.bits[i/64] |= 1 << (i % 64)
	p.used++
	return nil
}

// Release frees block; releasing a free block or one outside the pool is
// a no-op that reports false.
func (p *Pool) Release(block netip.Prefix) bool {
	i, err := p.index(block)
	if err != nil || !p.isUsed(i) {
		return false
	}
	p.bits[i/64] &^= 1 << (i % 64)
	p.used--
	return true
}

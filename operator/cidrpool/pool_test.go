package cidrpool

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cidr    string
		mask    int
		blocks  uint64
		wantErr string
	}{
		{"10.0.0.0/8", 24, 65536, ""},
		{"198.18.128.0/17", 24, 128, ""},
		{"10.0.0.0/24", 24, 1, ""},
		{"fd00::/48", 64, 65536, ""},
		{"10.0.0.1/8", 24, 0, "not a network prefix"},
		{"10.0.0.0/16", 8, 0, "must lie between"},
		{"10.0.0.0/16", 33, 0, "must lie between"},
		{"fd00::/32", 64, 0, "more than"},
	} {
		p, err := New(netip.MustParsePrefix(tc.cidr), tc.mask)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New(%s, %d) = %v, want error %q", tc.cidr, tc.mask, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("New(%s, %d): %v", tc.cidr, tc.mask, err)
		case p.Size() != tc.blocks:
			t.Errorf("New(%s, %d): %d blocks, want %d", tc.cidr, tc.mask, p.Size(), tc.blocks)
		}
	}
}

func TestAllocateAll(t *testing.T) {
	for _, tc := range []struct {
		cidr        string
		mask        int
		first, last string
	}{
		{"198.18.128.0/17", 24, "198.18.128.0/24", "198.18.255.0/24"},
		{"10.0.0.0/30", 31, "10.0.0.0/31", "10.0.0.2/31"},
		{"fd00:1::/112", 120, "fd00:1::/120", "fd00:1::ff00/120"},
	} {
		t.Run(tc.cidr, func(t *testing.T) {
			p, err := New(netip.MustParsePrefix(tc.cidr), tc.mask)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[netip.Prefix]bool{}
			var got []netip.Prefix
			for i := uint64(0); i < p.Size(); i++ {
				b, err := p.Allocate()
				if err != nil {
					t.Fatal(err)
				}
				if seen[b] || !p.Contains(b) {
					t.Fatalf("block %s duplicated or outside the pool", b)
				}
				seen[b] = true
				got = append(got, b)
			}
			if got[0].String() != tc.first || got[len(got)-1].String() != tc.last {
				t.Fatalf("first %s last %s, want %s %s", got[0], got[len(got)-1], tc.first, tc.last)
			}
			_, err = p.Allocate()
			if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), tc.cidr) {
				t.Fatalf("allocate on a full pool: %v", err)
			}
			// A released block is handed out again.
			if !p.Release(got[1]) || p.Release(got[1]) {
				t.Fatal("release semantics")
			}
			if b, err := p.Allocate(); err != nil || b != got[1] {
				t.Fatalf("after release: %s %v, want %s", b, err, got[1])
			}
		})
	}
}

func TestOccupy(t *testing.T) {
	p, err := New(netip.MustParsePrefix("10.1.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		block   string
		wantErr string
	}{
		{"10.1.0.0/24", ""},
		{"10.1.7.0/24", ""},
		{"10.1.7.0/24", "already in use"},
		{"10.2.0.0/24", "not a /24 block"},
		{"10.1.8.0/25", "not a /24 block"},
		{"fd00::/24", "not a /24 block"},
	} {
		err := p.Occupy(netip.MustParsePrefix(tc.block))
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Occupy(%s) = %v, want %q", tc.block, err, tc.wantErr)
		}
	}
	// Allocation skips occupied blocks.
	for _, want := range []string{"10.1.1.0/24", "10.1.2.0/24"} {
		if b, err := p.Allocate(); err != nil || b.String() != want {
			t.Fatalf("Allocate = %s, %v; want %s", b, err, want)
		}
	}
	if p.Used() != 4 {
		t.Fatalf("used %d, want 4", p.Used())
	}
}

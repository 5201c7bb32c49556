package main

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sigil-net/sigil/operator"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, c config)
	}{
		{"defaults", nil, "", func(t *testing.T, c config) {
			if !c.leaderElect || c.leaseNamespace != "sigil-system" || c.ops.IPAM != operator.IPAMClusterPool ||
				len(c.ops.ClusterPoolCIDRs) != 1 || c.ops.ClusterPoolCIDRs[0] != operator.DefaultClusterPool ||
				c.ops.MaskSizeIPv4 != 24 || c.ops.IdentityGCGrace != 5*time.Minute || c.ops.Filter == nil {
				t.Fatalf("%+v", c)
			}
		}},
		{"lab pool, dual stack", []string{"--cluster-pool-cidr=198.18.128.0/17,fd00:5167::/104", "--cluster-pool-ipv6-mask-size=112",
			"--leader-election-namespace=lab", "--identity-gc-grace=30s"}, "", func(t *testing.T, c config) {
			if len(c.ops.ClusterPoolCIDRs) != 2 || c.ops.ClusterPoolCIDRs[1] != netip.MustParsePrefix("fd00:5167::/104") ||
				c.leaseNamespace != "lab" || c.ops.IdentityGCGrace != 30*time.Second {
				t.Fatalf("%+v", c)
			}
		}},
		{"identity range", []string{"--identity-range=1000-1999"}, "", func(t *testing.T, c config) {
			if c.ops.IdentityRange.Min != 1000 || c.ops.IdentityRange.Max != 1999 {
				t.Fatalf("%+v", c.ops.IdentityRange)
			}
		}},
		{"noise labels", []string{"--identity-ignore-labels=build-id,example.com/"}, "", func(t *testing.T, c config) {
			if l := c.ops.Filter.SecurityLabels("ns", map[string]string{"build-id": "1", "example.com/x": "y", "app": "a"}, nil); len(l) != 2 {
				t.Fatalf("labels %v", l)
			}
		}},
		{"bad pool", []string{"--cluster-pool-cidr=10.0.0.1/8"}, "not a network prefix", nil},
		{"two v4 pools", []string{"--cluster-pool-cidr=10.0.0.0/8,11.0.0.0/8"}, "more than one IPv4", nil},
		{"mask too small", []string{"--cluster-pool-cidr=10.0.0.0/16", "--cluster-pool-mask-size=8"}, "must lie between", nil},
		{"bad range", []string{"--identity-range=10-20"}, "want 256 <= MIN", nil},
		{"bad log level", []string{"--log-level=loud"}, "--log-level", nil},
		{"stray argument", []string{"extra"}, "unexpected arguments", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("POD_NAMESPACE", "")
			c, err := parseFlags(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

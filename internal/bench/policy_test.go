package bench

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sigil-net/sigil/datapath"
)

func TestPolicies(t *testing.T) {
	pod1, pod2 := netip.MustParseAddr("198.18.20.11"), netip.MustParseAddr("198.18.20.12")
	benchPorts := append([]uint16{PortIperf3, PortRR}, CRRPortList()...)
	for _, size := range []int{1, 10, 1000, 10000} {
		if err := CheckSize(size, datapath.DefaultPolicyEntries); err != nil {
			t.Fatal(err)
		}
		pol := SigilPolicy(size, pod1Identity)
		if len(pol) != size {
			t.Errorf("size %d: %d Sigil entries", size, len(pol))
		}
		for _, port := range benchPorts {
			if r, _ := pol.Lookup(datapath.Ingress, pod1Identity, datapath.ProtoTCP, port); r != datapath.ReasonForwarded {
				t.Errorf("size %d: pod1 to port %d: %v", size, port, r)
			}
		}
		if r, _ := pol.Lookup(datapath.Ingress, pod1Identity, datapath.ProtoTCP, PortClosed); r == datapath.ReasonForwarded {
			t.Errorf("size %d: closed port allowed", size)
		}
		seen := map[netip.Addr]datapath.Identity{}
		for _, d := range Decoys(size) {
			if !netip.MustParsePrefix("198.18.128.0/17").Contains(d.IP) {
				t.Fatalf("decoy address %s outside 198.18.128.0/17", d.IP)
			}
			if id, ok := seen[d.IP]; ok && id != d.Identity {
				t.Fatalf("address %s for identities %d and %d", d.IP, id, d.Identity)
			}
			seen[d.IP] = d.Identity
			for _, p := range benchPorts {
				if d.Port == p || d.Identity == pod1Identity {
					t.Fatalf("decoy %+v matches the benchmark flow", d)
				}
			}
		}

		for _, ct := range []bool{false, true} {
			rules := IPTablesRules(size, pod1, pod2, ct)
			lines := strings.Split(strings.TrimSpace(rules), "\n")
			var fwd []string
			for _, l := range lines {
				if strings.HasPrefix(l, "-A FORWARD") {
					fwd = append(fwd, l)
				}
			}
			want := size + 1
			if ct {
				want++
				if !strings.Contains(fwd[0], "--ctstate RELATED,ESTABLISHED -j ACCEPT") {
					t.Errorf("conntrack rule not first: %s", fwd[0])
				}
			}
			if len(fwd) != want {
				t.Errorf("size %d ct %v: %d FORWARD rules, want %d", size, ct, len(fwd), want)
			}
			if got := fwd[len(fwd)-2]; got != "-A FORWARD -s 198.18.20.11/32 -d 198.18.20.12/32 -p tcp -m tcp --dport 5200:5215 -j ACCEPT" {
				t.Errorf("allowing rule not last: %s", got)
			}
			if got := fwd[len(fwd)-1]; got != "-A FORWARD -d 198.18.20.12/32 -j DROP" {
				t.Errorf("last rule %s", got)
			}
			if lines[0] != "*filter" || lines[len(lines)-1] != "COMMIT" {
				t.Errorf("not an iptables-restore table")
			}
		}
	}
	if CheckSize(0, 0) == nil || CheckSize(20000, datapath.DefaultPolicyEntries) == nil {
		t.Error("bad sizes accepted")
	}
}

func TestGroupInt(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := groupInt(n); got != want {
			t.Errorf("groupInt(%d) = %q, want %q", n, got, want)
		}
	}
}

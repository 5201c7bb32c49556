package bench

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestPrefilterList(t *testing.T) {
	sender := netip.MustParseAddr("198.18.60.2")
	for _, n := range []int{1, 10, 1000, 100000, MaxPrefilterListSize()} {
		list, err := PrefilterList(n, sender)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != n {
			t.Fatalf("size %d: got %d prefixes", n, len(list))
		}
		if last := list[n-1]; last != netip.PrefixFrom(sender, 32) {
			t.Fatalf("size %d: last entry %v, want the sender's /32", n, last)
		}
		seen := map[netip.Prefix]bool{}
		for i, p := range list {
			if seen[p] {
				t.Fatalf("size %d: %v twice", n, p)
			}
			seen[p] = true
			if i < n-1 && p.Contains(sender) {
				t.Fatalf("size %d: decoy %v holds the sender", n, p)
			}
			// Everything stays in the benchmark range 198.18.0.0/15.
			if !netip.MustParsePrefix("198.18.0.0/15").Contains(p.Addr()) || p.Bits() != 32 {
				t.Fatalf("size %d: %v outside 198.18.0.0/15 or not a /32", n, p)
			}
		}
	}
	for _, n := range []int{0, MaxPrefilterListSize() + 1} {
		if _, err := PrefilterList(n, sender); err == nil {
			t.Errorf("size %d: no error", n)
		}
	}
}

func TestPrefilterIPTablesRules(t *testing.T) {
	list, _ := PrefilterList(3, netip.MustParseAddr("198.18.60.2"))
	got := PrefilterIPTablesRules(list)
	want := "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
		"-A PREROUTING -s 198.19.0.0/32 -j DROP\n" +
		"-A PREROUTING -s 198.19.0.1/32 -j DROP\n" +
		"-A PREROUTING -s 198.18.60.2/32 -j DROP\n" +
		"COMMIT\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestPrefilterReport(t *testing.T) {
	o := DefaultPrefilterOptions()
	o.Sizes = []int{10, 1000}
	r := &PrefilterReport{Options: o, FrameLen: 106, XDPMode: "native"}
	rate := map[string]uint64{MechXDP: 4000000, MechTC: 2000000, MechIPTables: 1000000}
	for _, src := range o.Sources {
		for _, size := range o.Sizes {
			for _, m := range []string{MechXDP, MechTC, MechIPTables} {
				d := rate[m]
				if m == MechIPTables && size > 10 {
					d /= 10
				}
				r.Rows = append(r.Rows, PrefilterRow{Source: src, Mech: m, Size: size, Dropped: d, TestRunNS: 50,
					Flood: FloodResult{Sent: d, Elapsed: time.Second}, CPU: cpuUse{Own: time.Second, Machine: 2 * time.Second}})
			}
		}
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	md := r.Markdown("sigil-bench prefilter")
	for _, want := range []string{"ahead of both at every size", "2.00× tc", "4.00× iptables", "40.00× iptables"} {
		text := strings.Join(strings.Fields(b.String()), " ") // undo the wrapping
		if !strings.Contains(text, want) || !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
	if !strings.Contains(md, "| XDP frames | 1,000 | iptables raw | 100,000 | 100,000 | 10.00 | 20.00 | n/a | 40.00× |") {
		t.Errorf("markdown row missing:\n%s", md)
	}
	doc, err := ReplaceSection("", "prefilter", md)
	if err != nil || !strings.HasPrefix(doc, "<!-- bench:prefilter:start -->\n## XDP prefilter") {
		t.Fatalf("section: %v\n%s", err, doc)
	}
}

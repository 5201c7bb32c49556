package datapath_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

const (
	xdpDrop = 1
	xdpPass = 2
)

func rule(p string) datapath.PrefilterRule {
	return datapath.PrefilterRule{Prefix: netip.MustParsePrefix(p)}
}

func except(p string) datapath.PrefilterRule {
	return datapath.PrefilterRule{Prefix: netip.MustParsePrefix(p), Except: true}
}

func loadPrefilter(t *testing.T, pinDir, netns string) *datapath.Prefilter {
	t.Helper()
	pf, err := datapath.LoadPrefilter(datapath.PrefilterConfig{PinDir: pinDir, NetNS: netns, MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pf.Close() })
	return pf
}

func udpFrom(src string) dt.Packet {
	return dt.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("198.18.40.1"), Proto: 17, SrcPort: 9, DstPort: 9}
}

// vlanTag inserts 802.1Q (or 802.1ad) tags after the MAC addresses.
func vlanTag(frame []byte, tpids ...uint16) []byte {
	out := append([]byte(nil), frame[:12]...)
	for i, tpid := range tpids {
		out = binary.BigEndian.AppendUint16(out, tpid)
		out = binary.BigEndian.AppendUint16(out, uint16(100+i))
	}
	return append(out, frame[12:]...)
}

func TestPrefilterVerdicts(t *testing.T) {
	dt.RequireBPF(t)
	pinDir := dt.PinDir(t)
	pf := loadPrefilter(t, pinDir, "")
	if err := pf.Replace([]datapath.PrefilterRule{
		rule("198.19.0.0/16"), except("198.19.5.0/24"), rule("198.19.5.7/32"), rule("198.18.66.0/24"),
	}); err != nil {
		t.Fatal(err)
	}
	denied := udpFrom("198.19.1.1").Bytes()
	ipv6 := append(append([]byte(nil), denied[:12]...), 0x86, 0xdd)
	ipv6 = append(ipv6, make([]byte, 60)...)
	arp := append(append([]byte(nil), denied[:12]...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)
	badIHL := append([]byte(nil), denied...)
	badIHL[14] = 0x43

	for _, tc := range []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"in the list", denied, xdpDrop},
		{"outside the list", udpFrom("198.18.1.1").Bytes(), xdpPass},
		{"except carved out", udpFrom("198.19.5.1").Bytes(), xdpPass},
		{"deny inside the except: most specific wins", udpFrom("198.19.5.7").Bytes(), xdpDrop},
		{"second prefix", udpFrom("198.18.66.200").Bytes(), xdpDrop},
		{"destination in the list does not matter", dt.Packet{Src: netip.MustParseAddr("198.18.1.1"), Dst: netip.MustParseAddr("198.19.1.1"), Proto: 17}.Bytes(), xdpPass},
		{"802.1Q tagged", vlanTag(denied, 0x8100), xdpDrop},
		{"802.1ad + 802.1Q tagged", vlanTag(denied, 0x88a8, 0x8100), xdpDrop},
		{"tagged, allowed", vlanTag(udpFrom("198.18.1.1").Bytes(), 0x8100), xdpPass},
		{"arp passes", arp, xdpPass},
		{"ipv6 passes while no IPv6 list exists", ipv6, xdpPass},
		{"malformed ihl passes", badIHL, xdpPass},
		{"truncated ip header passes", denied[:14+10], xdpPass},
		{"tagged but truncated passes", vlanTag(denied, 0x8100)[:16], xdpPass},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pf.Program().Run(&ebpf.RunOptions{Data: tc.frame})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("verdict %d, want %d", got, tc.want)
			}
		})
	}

	// Counters count exactly; rule IDs and counters stay with their prefix
	// across a replacement, and a removed prefix's counters go with it.
	if _, err := pf.Program().Run(&ebpf.RunOptions{Data: denied, Repeat: 99}); err != nil {
		t.Fatal(err)
	}
	before := entriesByPrefix(t, pf)
	if got := before["198.19.0.0/16"].Packets; got != 1+99+2 { // single run, 99 repeats, two tagged frames
		t.Errorf("198.19.0.0/16 counted %d packets, want %d", got, 102)
	}
	if err := pf.Replace([]datapath.PrefilterRule{rule("198.19.0.0/16"), rule("198.20.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	after := entriesByPrefix(t, pf)
	if after["198.19.0.0/16"].RuleID != before["198.19.0.0/16"].RuleID || after["198.19.0.0/16"].Packets != 102 {
		t.Errorf("rule lost its ID or counters across Replace: %+v -> %+v", before["198.19.0.0/16"], after["198.19.0.0/16"])
	}
	if len(after) != 2 || after["198.20.0.0/16"].Packets != 0 {
		t.Errorf("after Replace: %+v", after)
	}
	if got, _ := pf.Program().Run(&ebpf.RunOptions{Data: udpFrom("198.19.5.1").Bytes()}); got != xdpDrop {
		t.Errorf("removed except still passes")
	}

	// A reload adopts the installed list and its IDs.
	pf2 := loadPrefilter(t, pinDir, "")
	if err := pf2.Replace([]datapath.PrefilterRule{rule("198.20.0.0/16"), rule("198.19.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	// (one more drop was counted since: the 198.19.5.1 frame above)
	if again := entriesByPrefix(t, pf2)["198.19.0.0/16"]; again.RuleID != after["198.19.0.0/16"].RuleID || again.Packets != 103 {
		t.Errorf("reload changed rule %+v to %+v", after["198.19.0.0/16"], again)
	}
}

func entriesByPrefix(t *testing.T, pf *datapath.Prefilter) map[string]datapath.PrefilterEntry {
	t.Helper()
	list, err := pf.List()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]datapath.PrefilterEntry{}
	for _, e := range list {
		out[e.Prefix.String()] = e
	}
	return out
}

// TestPrefilterInNamespaces: a node with a pod and two senders on its
// underlay interfaces. The denied sender reaches neither the node nor its
// pod; the other does; list changes apply live; counters match what was sent;
// drops reach the flow stream, aggregated.
func TestPrefilterInNamespaces(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	node, err := testnet.CreateNode(netip.MustParseAddr("198.18.40.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Delete() })
	pod, err := node.AddPod(netip.MustParseAddr("198.18.40.10"), "lxc1")
	if err != nil {
		t.Fatal(err)
	}
	senders := map[string]*testnet.NS{}
	for i, name := range []string{"denied", "allowed"} {
		s := testnet.NewNS(t, "sgsend")
		ul := fmt.Sprintf("ul%d", i+1)
		testnet.Veth(t, node.NS, ul, s, "eth0")
		node.NS.MustRun(t, "ip", "addr", "add", fmt.Sprintf("198.19.%d.1/24", i+1), "dev", ul)
		s.MustRun(t, "ip", "addr", "add", fmt.Sprintf("198.19.%d.2/24", i+1), "dev", "eth0")
		s.MustRun(t, "ip", "route", "add", "default", "via", fmt.Sprintf("198.19.%d.1", i+1))
		senders[name] = s
	}
	pinDir := dt.PinDir(t)
	h := dt.New(t, datapath.Config{PinDir: pinDir, NetNS: node.NS.Path})
	pf := loadPrefilter(t, pinDir, node.NS.Path)
	for _, ul := range []string{"ul1", "ul2"} {
		mode, err := pf.Attach(ul)
		if err != nil {
			t.Fatal(err)
		}
		if mode != datapath.XDPNative {
			t.Errorf("%s: attached in %s mode, want native on veth", ul, mode)
		}
	}
	attached, err := datapath.PrefilterAttachments(pinDir)
	if err != nil || len(attached) != 2 {
		t.Errorf("attachments %v, %v", attached, err)
	}
	podAddr := pod.IP.String() + ":7000"
	pod.NS.Serve(t, podAddr)

	reach := func(who string) (nodeOK, podOK bool) {
		return senders[who].Ping("198.18.40.1") == nil, senders[who].TCP(podAddr, 500*time.Millisecond) == nil
	}
	for _, who := range []string{"denied", "allowed"} {
		if n, p := reach(who); !n || !p {
			t.Fatalf("%s before any list: node %v pod %v, want both reachable", who, n, p)
		}
	}
	if err := pf.Replace([]datapath.PrefilterRule{rule("198.19.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	if n, p := reach("denied"); n || p {
		t.Errorf("denied sender reaches node %v pod %v", n, p)
	}
	if n, p := reach("allowed"); !n || !p {
		t.Errorf("allowed sender: node %v pod %v, want both", n, p)
	}

	// Counters match exactly the datagrams sent while denied.
	before := entriesByPrefix(t, pf)["198.19.1.0/24"].Packets
	const sent = 50
	if err := senders["denied"].Do(func() error {
		c, err := net.Dial("udp4", podAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < sent; i++ {
			if _, err := c.Write([]byte("flood")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := entriesByPrefix(t, pf)["198.19.1.0/24"].Packets - before; got != sent {
		t.Errorf("counted %d drops for %d datagrams", got, sent)
	}

	// Drops reached the flow stream, aggregated: far fewer events than drops.
	rd, err := h.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	events := 0
	for {
		rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
		e, err := rd.Read()
		if err != nil {
			break
		}
		if e.Reason == datapath.DropPrefilter && e.Src == netip.MustParseAddr("198.19.1.2") {
			events++
		}
	}
	if events == 0 || events > 10 {
		t.Errorf("%d prefilter events for %d+ drops, want a few (at most one per second per CPU)", events, sent)
	}

	// Removing the CIDR restores reachability live.
	if err := pf.Replace(nil); err != nil {
		t.Fatal(err)
	}
	if n, p := reach("denied"); !n || !p {
		t.Errorf("after removal: node %v pod %v, want both", n, p)
	}
	for _, ul := range []string{"ul1", "ul2"} {
		if err := pf.Detach(ul); err != nil {
			t.Error(err)
		}
	}
}

package bench

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/internal/testnet"
)

// Ports of the benchmark flows, all to pod2. One allow entry (a /12 port
// prefix, or the range 5200:5215 for iptables) covers every one of them.
const (
	PortIperf3    uint16 = 5200
	PortRR        uint16 = 5201
	PortCRRFirst  uint16 = 5204
	CRRPorts             = 12 // 5204..5215
	PortClosed    uint16 = 5299
	allowPortBase uint16 = 5200
	allowPortBits uint8  = 12 // 5200..5215
)

// CRRPortList returns the ports the CRR server listens on.
func CRRPortList() []uint16 {
	out := make([]uint16, CRRPorts)
	for i := range out {
		out[i] = PortCRRFirst + uint16(i)
	}
	return out
}

// Decoys: the policy of N entries holds N-1 entries that never match the
// benchmark flow (other peers, other ports) and one that allows it. Decoy
// peer i is identity decoyIdentityBase+i at address 198.18.128.0/17 + 1 + i
// and gets decoyPortsPerPeer ports from decoyPortBase.
const (
	decoyIdentityBase datapath.Identity = 20000
	decoyPortBase     uint16            = 8000
	decoyPortsPerPeer                   = 10
	maxDecoyPeers                       = 32766 // addresses in 198.18.128.0/17 after .0
)

// Decoy is one non-matching entry: a peer and a port.
type Decoy struct {
	Identity datapath.Identity
	IP       netip.Addr
	Port     uint16
}

// decoyPeer returns the identity and address of decoy peer i.
func decoyPeer(i int) (datapath.Identity, netip.Addr) {
	n := uint32(i + 1)
	return decoyIdentityBase + datapath.Identity(i), netip.AddrFrom4([4]byte{198, 18, 128 + byte(n>>8), byte(n)})
}

// decoyPeers is the number of distinct peers the decoys of a policy of size
// entries use.
func decoyPeers(size int) int {
	return (size - 1 + decoyPortsPerPeer - 1) / decoyPortsPerPeer
}

// Decoys returns the size-1 non-matching entries of a policy of size.
func Decoys(size int) []Decoy {
	out := make([]Decoy, 0, max(size-1, 0))
	for k := 0; k < size-1; k++ {
		id, ip := decoyPeer(k / decoyPortsPerPeer)
		out = append(out, Decoy{Identity: id, IP: ip, Port: decoyPortBase + uint16(k%decoyPortsPerPeer)})
	}
	return out
}

// CheckSize reports a policy size the benchmark cannot build.
func CheckSize(size, capacity int) error {
	if size < 1 {
		return fmt.Errorf("policy size %d: want at least 1 (the allowing entry)", size)
	}
	if decoyPeers(size) > maxDecoyPeers {
		return fmt.Errorf("policy size %d: more decoy peers than 198.18.128.0/17 holds", size)
	}
	if capacity > 0 && size > capacity {
		return fmt.Errorf("policy size %d exceeds the policy map capacity %d", size, capacity)
	}
	return nil
}

// SigilPolicy is pod2's ingress policy map of size entries: the decoys, and
// one entry allowing peer on TCP 5200-5215 (the benchmark ports).
func SigilPolicy(size int, peer datapath.Identity) datapath.PolicyMapEntries {
	m := datapath.PolicyMapEntries{}
	for i, d := range Decoys(size) {
		m[datapath.PolicyKey{Identity: d.Identity, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP,
			Port: d.Port, PortPrefixLen: 16}] = datapath.PolicyEntry{Cookie: uint32(i + 1)}
	}
	m[datapath.PolicyKey{Identity: peer, Direction: datapath.Ingress, Protocol: datapath.ProtoTCP,
		Port: allowPortBase, PortPrefixLen: allowPortBits}] = datapath.PolicyEntry{Cookie: 1 << 24}
	return m
}

// IPTablesRules is the same policy as a filter table for iptables-restore:
// in the FORWARD chain, one ACCEPT per decoy entry (source address, pod2,
// TCP port), the rule allowing pod1 on 5200:5215 last, then a DROP of
// everything else to pod2. With conntrack, an ESTABLISHED,RELATED accept
// comes first, as iptables-based CNIs install it, so only the first packet
// of a connection walks the list; without it every packet does.
func IPTablesRules(size int, pod1, pod2 netip.Addr, conntrack bool) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	if conntrack {
		b.WriteString("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	}
	dst := pod2.String() + "/32"
	for _, d := range Decoys(size) {
		fmt.Fprintf(&b, "-A FORWARD -s %s/32 -d %s -p tcp -m tcp --dport %d -j ACCEPT\n", d.IP, dst, d.Port)
	}
	hi := allowPortBase | (1<<(16-allowPortBits) - 1)
	fmt.Fprintf(&b, "-A FORWARD -s %s/32 -d %s -p tcp -m tcp --dport %d:%d -j ACCEPT\n", pod1, dst, allowPortBase, hi)
	fmt.Fprintf(&b, "-A FORWARD -d %s -j DROP\n", dst)
	b.WriteString("COMMIT\n")
	return b.String()
}

// emptyFilterTable flushes the filter table.
const emptyFilterTable = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

// IPTables is the iptables variant that works in the benchmark's namespace.
type IPTables struct {
	Cmd, Restore string
	Backend      string // "nf_tables" or "legacy"
}

// DetectIPTables picks the iptables variant to use inside ns: the one
// `iptables` points to if it works there, else the other.
func DetectIPTables(ns *testnet.NS) (IPTables, error) {
	variants := []IPTables{
		{Cmd: "iptables-nft", Restore: "iptables-nft-restore", Backend: "nf_tables"},
		{Cmd: "iptables-legacy", Restore: "iptables-legacy-restore", Backend: "legacy"},
	}
	if out, err := exec.Command("iptables", "--version").CombinedOutput(); err == nil && strings.Contains(string(out), "legacy") {
		variants[0], variants[1] = variants[1], variants[0]
	}
	var errs []string
	for _, v := range variants {
		if _, err := exec.LookPath(v.Restore); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if _, err := ns.Run(v.Cmd, "-w", "-S", "FORWARD"); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		return v, nil
	}
	return IPTables{}, fmt.Errorf("no working iptables in the namespace: %s", strings.Join(errs, "; "))
}

// Load replaces ns's filter table with rules (iptables-restore format).
func (ipt IPTables) Load(ns *testnet.NS, rules string) error {
	cmd := exec.Command("nsenter", "--net="+ns.Path, "--", ipt.Restore)
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s in %s: %w: %s", ipt.Restore, ns.Name, err, out)
	}
	return nil
}

// Flush empties ns's filter table.
func (ipt IPTables) Flush(ns *testnet.NS) error { return ipt.Load(ns, emptyFilterTable) }

// CountForwardRules returns the number of rules in ns's FORWARD chain.
func (ipt IPTables) CountForwardRules(ns *testnet.NS) (int, error) {
	out, err := ns.Run(ipt.Cmd, "-w", "-S", "FORWARD")
	if err != nil {
		return 0, err
	}
	return strings.Count(out, "-A FORWARD"), nil
}

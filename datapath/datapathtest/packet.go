// Package datapathtest loads Sigil's datapath into a throwaway bpffs
// directory and runs its programs on crafted packets with BPF_PROG_TEST_RUN,
// for unit tests of verdicts without any network setup.
package datapathtest

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// TCP flag bits.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Packet describes an Ethernet/IPv4 packet to craft.
type Packet struct {
	Src, Dst netip.Addr
	Proto    uint8 // 1 ICMP, 6 TCP, 17 UDP, 132 SCTP, or any other
	SrcPort  uint16
	DstPort  uint16
	TCPFlags uint8

	ICMPType, ICMPCode uint8
	ICMPID             uint16
	// ICMPInner, for ICMP errors, is the packet the error is about; its
	// IPv4 header and first 8 L4 bytes are embedded.
	ICMPInner *Packet

	// IPOptions adds this many 4-byte words of NOP options (ihl = 5 + n).
	IPOptions int
	// FragOffset (in 8-byte units) and MoreFragments make a fragment.
	FragOffset    uint16
	MoreFragments bool
	IPID          uint16
	Payload       []byte
}

// Bytes returns the packet with an Ethernet header.
func (p Packet) Bytes() []byte {
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(eth[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	return append(eth, p.IPv4()...)
}

// IPv4 returns the packet from its IPv4 header on.
func (p Packet) IPv4() []byte {
	var l4 []byte
	if p.FragOffset == 0 {
		l4 = p.l4()
	}
	l4 = append(l4, p.Payload...)
	if p.FragOffset == 0 && !p.MoreFragments {
		// TCP and UDP carry a valid checksum, so translations can be
		// checked for updating it.
		switch p.Proto {
		case 6:
			binary.BigEndian.PutUint16(l4[16:], l4Checksum(p.Src, p.Dst, p.Proto, l4))
		case 17:
			binary.BigEndian.PutUint16(l4[6:], l4Checksum(p.Src, p.Dst, p.Proto, l4))
		}
	}
	ihl := 5 + p.IPOptions
	ip := make([]byte, ihl*4)
	ip[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], p.IPID)
	frag := p.FragOffset & 0x1fff
	if p.MoreFragments {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = p.Proto
	s, d := p.Src.As4(), p.Dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	for i := 20; i < len(ip); i++ {
		ip[i] = 1 // NOP option
	}
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return append(ip, l4...)
}

func (p Packet) l4() []byte {
	switch p.Proto {
	case 6:
		b := make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		b[12] = 5 << 4
		b[13] = p.TCPFlags
		binary.BigEndian.PutUint16(b[14:], 65535)
		return b
	case 17, 132:
		b := make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		binary.BigEndian.PutUint16(b[4:], 8)
		return b
	case 1:
		b := make([]byte, 8)
		b[0], b[1] = p.ICMPType, p.ICMPCode
		binary.BigEndian.PutUint16(b[4:], p.ICMPID)
		if p.ICMPInner != nil {
			inner := p.ICMPInner.IPv4()
			ihl := int(inner[0]&0xf) * 4
			if len(inner) > ihl+8 {
				inner = inner[:ihl+8]
			}
			b = append(b, inner...)
		}
		binary.BigEndian.PutUint16(b[2:], checksum(b))
		return b
	}
	return nil
}

// l4Checksum is the TCP/UDP checksum of seg (its checksum field zero) with
// the IPv4 pseudo-header.
func l4Checksum(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	s, d := src.As4(), dst.As4()
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, proto, byte(len(seg)>>8), byte(len(seg)))
	c := checksum(append(pseudo, seg...))
	if c == 0 && proto == 17 {
		c = 0xffff
	}
	return c
}

// Decode reads an Ethernet/IPv4 TCP or UDP frame back (addresses, protocol,
// ports, TCP flags) and checks its IPv4 header checksum and, unless it is
// zero for UDP, its L4 checksum.
func Decode(frame []byte) (Packet, error) {
	if len(frame) < 14+20 {
		return Packet{}, fmt.Errorf("frame of %d bytes", len(frame))
	}
	ip := frame[14:]
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || tot < ihl || tot > len(ip) {
		return Packet{}, fmt.Errorf("bad IPv4 header lengths %d/%d", ihl, tot)
	}
	if checksum(ip[:ihl]) != 0 {
		return Packet{}, fmt.Errorf("IPv4 header checksum wrong")
	}
	p := Packet{Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])), Proto: ip[9]}
	seg := ip[ihl:tot]
	switch p.Proto {
	case 6, 17:
		if len(seg) < 8 {
			return p, fmt.Errorf("short L4 header")
		}
		p.SrcPort = binary.BigEndian.Uint16(seg[0:])
		p.DstPort = binary.BigEndian.Uint16(seg[2:])
		if p.Proto == 6 {
			p.TCPFlags = seg[13]
		}
		if p.Proto == 17 && binary.BigEndian.Uint16(seg[6:]) == 0 {
			return p, nil
		}
		s, d := p.Src.As4(), p.Dst.As4()
		pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, p.Proto, byte(len(seg)>>8), byte(len(seg)))
		if checksum(append(pseudo, seg...)) != 0 {
			return p, fmt.Errorf("%s checksum wrong", map[uint8]string{6: "TCP", 17: "UDP"}[p.Proto])
		}
	}
	return p, nil
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// Reply returns the packet going the other way (ports and addresses
// swapped; an ICMP echo request becomes a reply).
func (p Packet) Reply() Packet {
	r := p
	r.Src, r.Dst = p.Dst, p.Src
	r.SrcPort, r.DstPort = p.DstPort, p.SrcPort
	if p.Proto == 1 && p.ICMPType == 8 {
		r.ICMPType = 0
	}
	if p.Proto == 6 && p.TCPFlags == SYN {
		r.TCPFlags = SYN | ACK
	}
	return r
}

package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// EventType is the kind of a flow event.
type EventType uint8

// Event types, as in bpf/lib/events.h.
const (
	EventPolicyVerdict EventType = 1 // a new flow was judged and allowed
	EventDrop          EventType = 2 // a packet was dropped
	EventTrace         EventType = 3
)

func (t EventType) String() string {
	switch t {
	case EventPolicyVerdict:
		return "policy-verdict"
	case EventDrop:
		return "drop"
	case EventTrace:
		return "trace"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Verdict is the outcome a flow event reports.
type Verdict uint8

// Verdicts, as in bpf/lib/events.h.
const (
	VerdictForwarded Verdict = 1
	VerdictDropped   Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case VerdictForwarded:
		return "FORWARDED"
	case VerdictDropped:
		return "DROPPED"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// FlowEvent is one decoded datapath event.
type FlowEvent struct {
	Time        time.Time
	EndpointID  uint32
	IfIndex     uint32
	SrcIdentity Identity
	DstIdentity Identity
	Src, Dst    netip.Addr
	SrcPort     uint16
	DstPort     uint16 // for ICMP: type << 8 | code
	Proto       uint8
	Direction   Direction
	Type        EventType
	Verdict     Verdict
	Reason      Reason
	TCPFlags    uint8
	Cookie      uint32 // the policy entry that decided; 0 for none
	Length      uint32
}

// EventPollInterval bounds how late an event submitted without a wakeup
// (allowed-flow events, see bpf_lxc.c) reaches a blocked Read.
const EventPollInterval = 100 * time.Millisecond

// EventReader reads flow events from the ring buffer.
type EventReader struct {
	rd       *ringbuf.Reader
	rec      ringbuf.Record // reused: reading allocates nothing per event
	bootWall time.Time      // wall clock at monotonic zero
	deadline time.Time      // the caller's; zero for none
}

// NewEventReader reads the events of a loaded datapath.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	return newEventReader(d.coll.Maps[MapEvents])
}

// OpenEventReader reads the events of the datapath pinned under pinDir.
func OpenEventReader(pinDir string) (*EventReader, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, MapEvents), nil)
	if err != nil {
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	defer m.Close()
	return newEventReader(m)
}

func newEventReader(m *ebpf.Map) (*EventReader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("event ring buffer reader: %w", err)
	}
	mono := time.Duration(monotonicNow())
	return &EventReader{rd: rd, bootWall: time.Now().Add(-mono)}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t; the zero
// time removes the deadline.
func (r *EventReader) SetDeadline(t time.Time) { r.deadline = t }

// Read blocks until the next event. It returns ErrClosed after Close, and
// os.ErrDeadlineExceeded after the deadline. While blocked it looks at the
// ring every EventPollInterval, since the datapath does not wake readers
// for every event.
func (r *EventReader) Read() (FlowEvent, error) {
	for {
		poll := time.Now().Add(EventPollInterval)
		if !r.deadline.IsZero() && r.deadline.Before(poll) {
			poll = r.deadline
		}
		r.rd.SetDeadline(poll)
		err := r.rd.ReadInto(&r.rec)
		if err == nil {
			return r.decode(r.rec.RawSample)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || (!r.deadline.IsZero() && !time.Now().Before(r.deadline)) {
			return FlowEvent{}, err
		}
	}
}

// ErrClosed is returned by Read after Close.
var ErrClosed = ringbuf.ErrClosed

// IsTimeout reports whether err is a Read deadline.
func IsTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// flowEventSize is sizeof(struct flow_event); layout_test.go checks it.
var flowEventSize = binary.Size(flowEventRaw{})

// decode reads a struct flow_event field by field (offsets as in
// bpf/lib/events.h), without reflection.
func (r *EventReader) decode(raw []byte) (FlowEvent, error) {
	if len(raw) < flowEventSize {
		return FlowEvent{}, fmt.Errorf("decode flow event: %d bytes, want %d", len(raw), flowEventSize)
	}
	ne := binary.NativeEndian
	var saddr, daddr [16]byte
	copy(saddr[:], raw[24:40])
	copy(daddr[:], raw[40:56])
	family := raw[60]
	return FlowEvent{
		Time:        r.bootWall.Add(time.Duration(ne.Uint64(raw[0:8]))),
		EndpointID:  ne.Uint32(raw[8:12]),
		IfIndex:     ne.Uint32(raw[12:16]),
		SrcIdentity: Identity(ne.Uint32(raw[16:20])),
		DstIdentity: Identity(ne.Uint32(raw[20:24])),
		Src:         addrFrom(saddr, family),
		Dst:         addrFrom(daddr, family),
		SrcPort:     binary.BigEndian.Uint16(raw[56:58]),
		DstPort:     binary.BigEndian.Uint16(raw[58:60]),
		Proto:       raw[61],
		Direction:   Direction(raw[62]),
		Type:        EventType(raw[63]),
		Verdict:     Verdict(raw[64]),
		Reason:      Reason(raw[65]),
		TCPFlags:    raw[66],
		Cookie:      ne.Uint32(raw[68:72]),
		Length:      ne.Uint32(raw[72:76]),
	}, nil
}

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *EventReader) Close() error { return r.rd.Close() }

package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/sigil-net/sigil/internal/testnet"
	"golang.org/x/net/ipv4"
)

// floodBatch is the number of datagrams one sendmmsg call carries.
const floodBatch = 64

// FloodResult is what one UDP flood sent.
type FloodResult struct {
	Sent    uint64 // datagrams the kernel accepted
	Errors  uint64 // failed send calls (e.g. ENOBUFS)
	Elapsed time.Duration
}

// Flood sends payload-byte UDP datagrams to dst from senders connected
// sockets opened in ns, each driven by its own goroutine on a locked OS
// thread with sendmmsg batches, as fast as it can, for d.
func Flood(ctx context.Context, ns *testnet.NS, dst netip.AddrPort, senders, payload int, d time.Duration) (FloodResult, error) {
	var res FloodResult
	conns := make([]*net.UDPConn, 0, senders)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Sockets opened inside the namespace stay there.
	err := ns.Do(func() error {
		for i := 0; i < senders; i++ {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("flood sockets: %w", err)
	}
	buf := make([]byte, payload)
	for i := range buf {
		buf[i] = byte(i)
	}
	var sent, errs atomic.Uint64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func(c *net.UDPConn) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			pc := ipv4.NewPacketConn(c)
			msgs := make([]ipv4.Message, floodBatch)
			for i := range msgs {
				msgs[i].Buffers = [][]byte{buf}
			}
			var n, e uint64
			for k := 0; ; k++ {
				if k&15 == 0 && (time.Now().After(deadline) || ctx.Err() != nil) {
					break
				}
				w, err := pc.WriteBatch(msgs, 0)
				if w > 0 {
					n += uint64(w)
				}
				if err != nil {
					e++
				}
			}
			sent.Add(n)
			errs.Add(e)
		}(c)
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Sent, res.Errors = sent.Load(), errs.Load()
	return res, ctx.Err()
}

// cpuSample is a reading of the CPU-time counters a flood is charged with,
// in clock ticks (USER_HZ).
type cpuSample struct {
	self      uint64 // this process, user + system (the sender, and the softirq work run inside its syscalls)
	ksoftirqd uint64 // the ksoftirqd threads (softirq work deferred to them)
	busy      uint64 // the machine: user + nice + system + irq + softirq + steal
	at        time.Time
}

// userHZ is the unit of /proc's CPU times (sysconf(_SC_CLK_TCK), 100 on Linux).
const userHZ = 100

func ticks(t uint64) time.Duration { return time.Duration(t) * time.Second / userHZ }

// cpuMeter reads cpuSamples.
type cpuMeter struct{ ksoftirqd []string }

func newCPUMeter() *cpuMeter {
	m := &cpuMeter{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(comm), "ksoftirqd/") {
			m.ksoftirqd = append(m.ksoftirqd, filepath.Join("/proc", e.Name(), "stat"))
		}
	}
	return m
}

// procTicks returns utime+stime of /proc/<pid>/stat.
func procTicks(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st
}

func machineBusy() uint64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy uint64
	// user nice system idle iowait irq softirq steal
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseUint(f[i], 10, 64)
		busy += v
	}
	return busy
}

func (m *cpuMeter) sample() cpuSample {
	s := cpuSample{self: procTicks("/proc/self/stat"), busy: machineBusy(), at: time.Now()}
	for _, p := range m.ksoftirqd {
		s.ksoftirqd += procTicks(p)
	}
	return s
}

// cpuUse is the CPU time charged between two samples.
type cpuUse struct {
	Own     time.Duration // this process + ksoftirqd
	Machine time.Duration // every CPU of the machine, whoever used it
}

func (a cpuSample) to(b cpuSample) cpuUse {
	return cpuUse{
		Own:     ticks(b.self-a.self) + ticks(b.ksoftirqd-a.ksoftirqd),
		Machine: ticks(b.busy - a.busy),
	}
}

// Traffic sources of the prefilter benchmark.
const (
	// SourceSocket sends from UDP sockets: every packet is an skb from
	// the start, and veth hands the node's XDP program a copy of it.
	SourceSocket = "socket"
	// SourceXDP injects frames with BPF_PROG_TEST_RUN in live-frames
	// mode and redirects them into the sender's veth: they reach the node
	// as XDP frames, with no skb, as frames from a NIC driver do.
	SourceXDP = "xdp"
)

// bpfFTestXDPLiveFrames is BPF_F_TEST_XDP_LIVE_FRAMES.
const bpfFTestXDPLiveFrames = 1 << 1

// xdpSource is an XDP program that redirects every frame to one interface,
// run in live-frames mode as a packet generator.
type xdpSource struct {
	ns    *testnet.NS
	prog  *ebpf.Program
	frame []byte
}

func newXDPSource(ns *testnet.NS, ifName string, frame []byte) (*xdpSource, error) {
	ifIndex, err := ns.InterfaceIndex(ifName)
	if err != nil {
		return nil, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "sigil_bench_gen", Type: ebpf.XDP, License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, int32(ifIndex)),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load the XDP packet generator: %w", err)
	}
	return &xdpSource{ns: ns, prog: prog, frame: frame}, nil
}

func (s *xdpSource) Close() error { return s.prog.Close() }

// flood injects frames for d from senders threads in the source's
// namespace (the redirect's ifindex is resolved there).
func (s *xdpSource) flood(ctx context.Context, senders int, d time.Duration) (FloodResult, error) {
	var res FloodResult
	const chunk = 1 << 14
	var sent, errs atomic.Uint64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i := 0; i < senders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.ns.Do(func() error {
				for time.Now().Before(deadline) && ctx.Err() == nil {
					if _, err := s.prog.Run(&ebpf.RunOptions{Data: s.frame, Repeat: chunk, Flags: bpfFTestXDPLiveFrames}); err != nil {
						return err
					}
					sent.Add(chunk)
				}
				return nil
			})
			if err != nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, &err)
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Sent, res.Errors = sent.Load(), errs.Load()
	if p := firstErr.Load(); p != nil {
		return res, fmt.Errorf("live-frames test run: %w", *p)
	}
	return res, ctx.Err()
}

// passProgram returns an XDP program that passes everything: attached to
// the node's veth so that frames redirected into its peer are received
// (veth takes XDP frames only with an XDP program or GRO on the receiver)
// and turned into skbs for tc and iptables.
func passProgram() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "sigil_bench_pass", Type: ebpf.XDP, License: "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
}

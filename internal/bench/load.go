package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-net/sigil/internal/testnet"
	"golang.org/x/sys/unix"
)

// The load tools are netperf-like: plain blocking sockets, one OS thread per
// connection, no Go netpoller in the loop, so that a transaction costs little
// more than the kernel's own path and a datapath's overhead shows in the
// figures instead of drowning in the tool's.

// sockTimeout bounds every blocking socket call (connect included, through
// SO_SNDTIMEO), so a flow that a datapath silently drops fails the figure
// instead of hanging the benchmark.
const sockTimeout = 5 * time.Second

// Rate is the outcome of a request/response load run.
type Rate struct {
	Count   int64         // completed transactions (RR) or connections (CRR)
	Elapsed time.Duration // measured by the clients
	Retries int64         // CRR connects retried for want of a free local port
}

// PerSec is Count per second of Elapsed.
func (r Rate) PerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Count) / r.Elapsed.Seconds()
}

func sockaddr(ap netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}

func setTimeouts(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

// connect is a blocking connect that survives signals: the Go runtime's
// preemption signals interrupt it (sockets with a send timeout are not
// restarted), and the handshake then completes in the background.
func connect(fd int, to netip.AddrPort, timeout time.Duration) error {
	err := unix.Connect(fd, sockaddr(to))
	if err != unix.EINTR {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

func readFull(fd int, b []byte) error {
	for off := 0; off < len(b); {
		n, err := unix.Read(fd, b[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("connection closed by the server")
		}
		off += n
	}
	return nil
}

func writeFull(fd int, b []byte) error {
	for off := 0; off < len(b); {
		n, err := unix.Write(fd, b[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		off += n
	}
	return nil
}

// EchoServer echoes every TCP connection on a set of ports until the peer
// closes it. One OS thread per port accepts and serves connections in turn,
// like netperf's netserver.
type EchoServer struct {
	lfds []int
	wg   sync.WaitGroup
	once sync.Once
}

// StartEchoServer listens on ip at each port inside ns.
func StartEchoServer(ns *testnet.NS, ip netip.Addr, ports []uint16) (*EchoServer, error) {
	s := &EchoServer{}
	for _, port := range ports {
		var lfd int
		err := ns.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			lfd = fd
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			// Accepted sockets inherit these.
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
				return err
			}
			if err := setTimeouts(fd, 2*sockTimeout); err != nil {
				return err
			}
			if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(ip, port))); err != nil {
				return err
			}
			return unix.Listen(fd, 1024)
		})
		if err != nil {
			if lfd > 0 {
				unix.Close(lfd)
			}
			s.Close()
			return nil, fmt.Errorf("echo server %s:%d in %s: %w", ip, port, ns.Name, err)
		}
		s.lfds = append(s.lfds, lfd)
		s.wg.Add(1)
		go s.serve(lfd)
	}
	return s, nil
}

func (s *EchoServer) serve(lfd int) {
	defer s.wg.Done()
	// Left locked on purpose: the thread is discarded when this goroutine
	// ends, and spends its life in blocking calls meanwhile.
	runtime.LockOSThread()
	buf := make([]byte, 64<<10)
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return // the listener was shut down
		}
		for {
			n, err := unix.Read(fd, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				break
			}
			if writeFull(fd, buf[:n]) != nil {
				break
			}
		}
		unix.Close(fd)
	}
}

// Close stops accepting (waking the blocked accepts), waits for the serving
// threads to finish their current connection, and closes the listeners.
func (s *EchoServer) Close() error {
	s.once.Do(func() {
		for _, fd := range s.lfds {
			unix.Shutdown(fd, unix.SHUT_RDWR)
		}
		s.wg.Wait()
		for _, fd := range s.lfds {
			unix.Close(fd)
		}
	})
	return nil
}

// RunRR is netperf's TCP_RR: one connection from ns to server, size-byte
// request and size-byte response in lock step, for d. Count is the number of
// round trips.
func RunRR(ctx context.Context, ns *testnet.NS, server netip.AddrPort, size int, d time.Duration) (Rate, error) {
	var r Rate
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return err
		}
		if err := setTimeouts(fd, sockTimeout); err != nil {
			return err
		}
		if err := connect(fd, server, sockTimeout); err != nil {
			return fmt.Errorf("connect %s: %w", server, err)
		}
		req, resp := make([]byte, size), make([]byte, size)
		start := time.Now()
		for {
			for i := 0; i < 64; i++ {
				if err := writeFull(fd, req); err != nil {
					return fmt.Errorf("send request: %w", err)
				}
				if err := readFull(fd, resp); err != nil {
					return fmt.Errorf("read response: %w", err)
				}
			}
			r.Count += 64
			if r.Elapsed = time.Since(start); r.Elapsed >= d {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return Rate{}, fmt.Errorf("TCP RR to %s: %w", server, err)
	}
	return r, nil
}

// RunCRR is netperf's TCP_CRR: connect, send a size-byte request, read the
// size-byte response, close; in a loop for d, from clients parallel threads
// in ns. Client i uses the ports with index ≡ i (mod clients) in turn, so
// clients never queue behind each other on the server and the connection
// tuples stay fresh (no conntrack entry of an earlier connection is reused).
func RunCRR(ctx context.Context, ns *testnet.NS, server netip.Addr, ports []uint16, clients, size int, d time.Duration) (Rate, error) {
	if clients < 1 || len(ports) < clients {
		return Rate{}, fmt.Errorf("TCP CRR: %d clients need at least as many ports, have %d", clients, len(ports))
	}
	var (
		total, retries atomic.Int64
		wg             sync.WaitGroup
		errOnce        sync.Once
		firstErr       error
		ready          sync.WaitGroup
		startc         = make(chan struct{})
		start          time.Time
		elapsed        = make([]time.Duration, clients)
	)
	stop := make(chan struct{})
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; close(stop) })
	}
	ready.Add(clients)
	for c := 0; c < clients; c++ {
		var mine []netip.AddrPort
		for i := c; i < len(ports); i += clients {
			mine = append(mine, netip.AddrPortFrom(server, ports[i]))
		}
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			ran := false
			err := ns.Do(func() error {
				ran = true
				ready.Done()
				<-startc
				req, resp := make([]byte, size), make([]byte, size)
				var n int64
				defer func() { total.Add(n) }()
				for i := 0; ; i++ {
					if i&15 == 0 {
						if elapsed[c] = time.Since(start); elapsed[c] >= d {
							return nil
						}
						select {
						case <-stop:
							return nil
						default:
						}
						if err := ctx.Err(); err != nil {
							return err
						}
					}
					err := crrOnce(mine[i%len(mine)], req, resp)
					if errors.Is(err, unix.EADDRNOTAVAIL) {
						// Every local port is in TIME_WAIT for this
						// server port: try the next one.
						retries.Add(1)
						continue
					}
					if err != nil {
						return err
					}
					n++
				}
			})
			if !ran {
				ready.Done()
			}
			if err != nil {
				fail(err)
			}
		}(c)
	}
	ready.Wait()
	start = time.Now()
	close(startc)
	wg.Wait()
	if firstErr != nil {
		return Rate{}, fmt.Errorf("TCP CRR to %s: %w", server, firstErr)
	}
	r := Rate{Count: total.Load(), Retries: retries.Load()}
	for _, e := range elapsed {
		r.Elapsed = max(r.Elapsed, e)
	}
	return r, nil
}

func crrOnce(to netip.AddrPort, req, resp []byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := setTimeouts(fd, sockTimeout); err != nil {
		return err
	}
	if err := connect(fd, to, sockTimeout); err != nil {
		return fmt.Errorf("connect %s: %w", to, err)
	}
	if err := writeFull(fd, req); err != nil {
		return fmt.Errorf("send request to %s: %w", to, err)
	}
	if err := readFull(fd, resp); err != nil {
		return fmt.Errorf("read response from %s: %w", to, err)
	}
	return nil
}

// Probe reports how a TCP connect from ns to addr ends: "connected",
// "refused" (the host answered) or "no answer" (the SYN was dropped) within
// wait.
func Probe(ns *testnet.NS, addr netip.AddrPort, wait time.Duration) (string, error) {
	var out string
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := setTimeouts(fd, wait); err != nil {
			return err
		}
		switch err := connect(fd, addr, wait); {
		case err == nil:
			out = "connected"
		case errors.Is(err, unix.ECONNREFUSED):
			out = "refused"
		case errors.Is(err, unix.EINPROGRESS), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ETIMEDOUT):
			out = "no answer"
		default:
			return err
		}
		return nil
	})
	return out, err
}

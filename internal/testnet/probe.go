package testnet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a TCP and UDP echo server in a namespace.
type Server struct {
	tcp net.Listener
	udp net.PacketConn
	wg  sync.WaitGroup
}

// StartServer starts TCP and UDP echo servers on addr (ip:port) in the
// namespace. Close stops them.
func (n *NS) StartServer(addr string) (*Server, error) {
	s := &Server{}
	err := n.Do(func() error {
		var err error
		if s.tcp, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		if s.udp, err = net.ListenPacket("udp4", addr); err != nil {
			s.tcp.Close()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("serve %s in %s: %w", addr, n.Name, err)
	}
	s.wg.Add(2)
	go s.acceptLoop()
	go s.udpLoop()
	return s, nil
}

// Serve is StartServer for a test: it fails the test on error and stops the
// servers at test end.
func (n *NS) Serve(t testing.TB, addr string) *Server {
	t.Helper()
	s, err := n.StartServer(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func (s *Server) udpLoop() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		s.udp.WriteTo(buf[:n], from)
	}
}

// Close stops the server.
func (s *Server) Close() {
	s.tcp.Close()
	s.udp.Close()
	s.wg.Wait()
}

// DialTCP connects from the namespace to addr and returns the connection.
func (n *NS) DialTCP(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// TCP reports whether a TCP echo round trip from the namespace to addr
// succeeds within timeout.
func (n *NS) TCP(addr string, timeout time.Duration) error {
	c, err := n.DialTCP(addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return Echo(c, timeout)
}

// Echo writes a line on c and expects it back within timeout.
func Echo(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	msg := fmt.Sprintf("sigil %d\n", time.Now().UnixNano())
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo mismatch: %q", got)
	}
	return nil
}

// UDP reports whether a UDP echo round trip from the namespace to addr
// succeeds within timeout.
func (n *NS) UDP(addr string, timeout time.Duration) error {
	var c net.Conn
	if err := n.Do(func() error {
		var err error
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	return Echo(c, timeout)
}

// Ping reports whether one ICMP echo from the namespace to ip is answered
// within a second.
func (n *NS) Ping(ip string) error {
	out, err := exec.Command("nsenter", "--net="+n.Path, "--", "ping", "-c", "1", "-W", "1", ip).CombinedOutput()
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)))
	}
	return nil
}

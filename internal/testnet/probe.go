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

// Forwarder accepts TCP connections in a namespace and relays each to an
// address reached from the caller's namespace.
type Forwarder struct {
	ln net.Listener
	wg sync.WaitGroup
}

// Forward listens on addr (ip:port) inside the namespace and relays every
// connection to target, dialled from the namespace the caller runs in. A
// node namespace reaches the test's API server this way at the server's own
// loopback address, so a kubeconfig (and the certificate's 127.0.0.1)
// works unchanged inside it.
func (n *NS) Forward(addr, target string) (*Forwarder, error) {
	f := &Forwarder{}
	if err := n.Do(func() error {
		var err error
		f.ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("forwarder on %s in %s: %w", addr, n.Name, err)
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			go relay(c, target)
		}
	}()
	return f, nil
}

func relay(c net.Conn, target string) {
	defer c.Close()
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
	io.Copy(c, up)
	<-done
}

// Close stops accepting; relayed connections end with their peers.
func (f *Forwarder) Close() error {
	err := f.ln.Close()
	f.wg.Wait()
	return err
}

// NameServer answers on TCP and UDP with a name, so a client learns which
// backend a load-balanced connection reached: every line read on a TCP
// connection is answered with name and a newline (the connection stays
// open), every UDP datagram with name.
type NameServer struct {
	tcp net.Listener
	udp net.PacketConn
	wg  sync.WaitGroup
}

// StartNameServer starts a NameServer on tcpAddr and udpAddr (either may be
// empty) in the namespace.
func (n *NS) StartNameServer(name, tcpAddr, udpAddr string) (*NameServer, error) {
	s := &NameServer{}
	err := n.Do(func() error {
		var err error
		if tcpAddr != "" {
			if s.tcp, err = net.Listen("tcp4", tcpAddr); err != nil {
				return err
			}
		}
		if udpAddr != "" {
			s.udp, err = net.ListenPacket("udp4", udpAddr)
		}
		return err
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("name server %s in %s: %w", name, n.Name, err)
	}
	line := []byte(name + "\n")
	if s.tcp != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				c, err := s.tcp.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					r := bufio.NewReader(c)
					for {
						if _, err := r.ReadString('\n'); err != nil {
							return
						}
						if _, err := c.Write(line); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	if s.udp != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 2048)
			for {
				_, from, err := s.udp.ReadFrom(buf)
				if err != nil {
					return
				}
				s.udp.WriteTo(line, from)
			}
		}()
	}
	return s, nil
}

// Close stops the server. Accepted TCP connections are not closed: an
// established connection outlives its listener, as a pod's would.
func (s *NameServer) Close() {
	if s.tcp != nil {
		s.tcp.Close()
	}
	if s.udp != nil {
		s.udp.Close()
	}
	s.wg.Wait()
}

// Ask sends one line on c (a TCP connection or a connected UDP socket to a
// NameServer) and returns the name it answers with.
func Ask(c net.Conn, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "who\n"); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	if _, ok := c.(*net.UDPConn); ok {
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(buf[:n])), nil
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(got), nil
}

// Who connects from the namespace to addr over network ("tcp" or "udp"),
// asks once and closes: the name of the server that answered.
func (n *NS) Who(network, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := n.Do(func() error {
		var err error
		c, err = net.DialTimeout(network+"4", addr, timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	return Ask(c, timeout)
}

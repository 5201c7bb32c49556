package datapath_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// whoami serves TCP and UDP on addr in ns, answering with its own IP, so a
// client can tell which backend it reached.
func whoami(t *testing.T, ns *testnet.NS, ip netip.Addr, port int) {
	t.Helper()
	addr := fmt.Sprintf("%s:%d", ip, port)
	var l net.Listener
	var pc net.PacketConn
	if err := ns.Do(func() error {
		var err error
		if l, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(ip.String() + "\n"))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(ip.String()), from)
		}
	}()
}

// reach connects to addr from ns and returns the backend that answered and
// the peer address the socket reports.
func reach(ns *testnet.NS, addr string) (backend string, peer string, conn net.Conn, err error) {
	conn, err = ns.DialTCP(addr, time.Second)
	if err != nil {
		return "", "", nil, err
	}
	conn.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 32)
	n, err := conn.Read(buf)
	if err != nil {
		conn.Close()
		return "", "", nil, err
	}
	return strings.TrimSpace(string(buf[:n])), conn.RemoteAddr().String(), conn, nil
}

func TestSocketLB(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	node, err := testnet.CreateNode(netip.MustParseAddr("198.18.30.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Delete() })
	h := dt.New(t, datapath.Config{NetNS: node.NS.Path})
	var pods []*testnet.Pod
	for i := 0; i < 4; i++ {
		p, err := node.AddPod(netip.MustParseAddr(fmt.Sprintf("198.18.30.%d", 10+i)), fmt.Sprintf("lxc%d", i))
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		if err := h.Endpoints.Upsert(p.IP, datapath.EndpointInfo{ID: uint32(i + 1), IfIndex: uint32(p.IfIndex), Identity: datapath.Identity(2000 + i)}); err != nil {
			t.Fatal(err)
		}
		if err := h.IPCache.Upsert(netip.PrefixFrom(p.IP, 32), datapath.IPCacheEntry{Identity: datapath.Identity(2000 + i)}); err != nil {
			t.Fatal(err)
		}
		if err := h.AttachEndpoint(p.HostIf, p.IfIndex); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			whoami(t, p.NS, p.IP, 8080)
		}
	}
	client, b1, b2, b3 := pods[0], pods[1], pods[2], pods[3]

	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: h.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Detach(); lb.Close() })
	if err := lb.Attach(); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("198.18.250.1")
	be := func(ps ...*testnet.Pod) []datapath.Backend {
		var out []datapath.Backend
		for _, p := range ps {
			out = append(out, datapath.Backend{Address: p.IP, Port: 8080})
		}
		return out
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	web := datapath.Frontend{Address: vip, Port: 80, Proto: datapath.ProtoTCP}
	must(lb.UpsertService(datapath.Service{Frontend: web, Backends: be(b1, b2, b3)}))
	dns := datapath.Frontend{Address: vip, Port: 53, Proto: datapath.ProtoUDP}
	must(lb.UpsertService(datapath.Service{Frontend: dns, Backends: be(b1, b2, b3)}))

	// Spread over the three backends; the application sees the VIP as peer.
	seen := map[string]int{}
	for i := 0; i < 60; i++ {
		who, peer, c, err := reach(client.NS, "198.18.250.1:80")
		if err != nil {
			t.Fatalf("connect %d to the service: %v", i, err)
		}
		c.Close()
		seen[who]++
		if peer != "198.18.250.1:80" {
			t.Errorf("getpeername says %s, want the VIP", peer)
		}
	}
	if len(seen) != 3 || seen[b1.IP.String()] < 5 || seen[b2.IP.String()] < 5 || seen[b3.IP.String()] < 5 {
		t.Errorf("60 connections spread %v, want all three backends used", seen)
	}
	// Host processes are translated too.
	if who, _, c, err := reach(node.NS, "198.18.250.1:80"); err != nil || who == "" {
		t.Errorf("from the node: %q, %v", who, err)
	} else {
		c.Close()
	}

	// UDP: an unconnected socket sends to the VIP; the reply appears to
	// come from the VIP (recvmsg translates back).
	must(client.NS.Do(func() error {
		pc, err := net.ListenPacket("udp4", client.IP.String()+":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		pc.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := pc.WriteTo([]byte("?"), &net.UDPAddr{IP: vip.AsSlice(), Port: 53}); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("udp reply: %w", err)
		}
		if from.String() != "198.18.250.1:53" || !strings.HasPrefix(string(buf[:n]), "198.18.30.") {
			return fmt.Errorf("udp reply %q from %s, want a backend's answer from the VIP", buf[:n], from)
		}
		return nil
	}))

	// A backend leaves: its established connection finishes, new ones avoid it.
	var est net.Conn
	for est == nil {
		who, _, c, err := reach(client.NS, "198.18.250.1:80")
		must(err)
		if who == b3.IP.String() {
			est = c
		} else {
			c.Close()
		}
	}
	defer est.Close()
	must(lb.UpsertService(datapath.Service{Frontend: web, Backends: be(b1, b2)}))
	for i := 0; i < 30; i++ {
		who, _, c, err := reach(client.NS, "198.18.250.1:80")
		must(err)
		c.Close()
		if who == b3.IP.String() {
			t.Fatalf("a removed backend got a new connection")
		}
	}
	if _, err := est.Write([]byte("still here\n")); err != nil {
		t.Errorf("established connection to the removed backend broke: %v", err)
	}

	// No ready backends: connect fails at once instead of hanging.
	empty := datapath.Frontend{Address: netip.MustParseAddr("198.18.250.2"), Port: 80, Proto: datapath.ProtoTCP}
	must(lb.UpsertService(datapath.Service{Frontend: empty}))
	start := time.Now()
	_, err = client.NS.DialTCP("198.18.250.2:80", 5*time.Second)
	if !errors.Is(err, syscall.EPERM) {
		t.Errorf("connect to a service without backends: %v, want EPERM", err)
	}
	if time.Since(start) > 4*time.Second {
		t.Errorf("rejection waited for the dial timeout")
	}

	// Session affinity keeps a client on one backend.
	sticky := datapath.Frontend{Address: netip.MustParseAddr("198.18.250.3"), Port: 80, Proto: datapath.ProtoTCP}
	must(lb.UpsertService(datapath.Service{Frontend: sticky, Backends: be(b1, b2, b3), Affinity: time.Minute}))
	first := ""
	for i := 0; i < 20; i++ {
		who, _, c, err := reach(client.NS, "198.18.250.3:80")
		must(err)
		c.Close()
		if first == "" {
			first = who
		} else if who != first {
			t.Fatalf("affinity broke: %s then %s", first, who)
		}
	}

	// Policy judges the backend the connection reaches, not the VIP: the
	// client may reach b1 only.
	only := func(p *testnet.Pod, port uint16) datapath.Frontend {
		return datapath.Frontend{Address: netip.MustParseAddr(fmt.Sprintf("198.18.251.%d", p.IP.As4()[3])), Port: port, Proto: datapath.ProtoTCP}
	}
	must(lb.UpsertService(datapath.Service{Frontend: only(b1, 80), Backends: be(b1)}))
	must(lb.UpsertService(datapath.Service{Frontend: only(b2, 80), Backends: be(b2)}))
	if _, err := h.Policy.Sync(1, datapath.PolicyMapEntries{
		{Identity: 2001, Direction: datapath.Egress, Protocol: datapath.ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
	}); err != nil {
		t.Fatal(err)
	}
	must(h.Endpoints.Upsert(client.IP, datapath.EndpointInfo{ID: 1, IfIndex: uint32(client.IfIndex), Identity: 2000, Flags: datapath.EndpointEnforceEgress}))
	if who, _, c, err := reach(client.NS, only(b1, 80).Address.String()+":80"); err != nil || who != b1.IP.String() {
		t.Errorf("b1 through its service: %q, %v", who, err)
	} else {
		c.Close()
	}
	if _, _, _, err := reach(client.NS, only(b2, 80).Address.String()+":80"); err == nil {
		t.Errorf("b2 reached through its service although policy allows only b1")
	}

	list, err := datapath.ListPinnedLB(h.PinDir())
	must(err)
	if len(list) != 6 {
		t.Errorf("%d services listed, want 6: %+v", len(list), list)
	}
	for _, e := range list {
		if e.Frontend == web && len(e.Backends) != 2 {
			t.Errorf("web backends %v, want 2", e.Backends)
		}
	}
	must(lb.DeleteService(web))
	if _, _, _, err := reach(client.NS, "198.18.250.1:80"); err == nil {
		t.Errorf("deleted service still answers")
	}
}

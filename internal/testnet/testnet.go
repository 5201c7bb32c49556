// Package testnet builds throwaway hosts for tests: network namespaces,
// veth pairs and the probes (TCP, UDP, ICMP) that show whether traffic is
// delivered. Everything it makes is removed when the test ends. Tests must
// address these hosts from 198.18.0.0/15 and send traffic nowhere else.
package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace made for a test.
type NS struct {
	Name string
	Path string
}

// RequireRoot skips the test unless it runs as root with ip(8) available.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
}

// Unique returns prefix plus a short random suffix, fit for interface names
// (at most 15 bytes when prefix is at most 7).
func Unique(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// CreateNS makes a namespace named prefix+random with loopback up. The
// caller deletes it with Delete.
func CreateNS(prefix string) (*NS, error) {
	name := Unique(prefix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	n := &NS{Name: name, Path: filepath.Join("/var/run/netns", name)}
	if _, err := n.Run("ip", "link", "set", "lo", "up"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

// Delete removes the namespace; its interfaces go with it.
func (n *NS) Delete() error {
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// NewNS is CreateNS for a test: it fails the test on error and deletes the
// namespace at test end.
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	n, err := CreateNS(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Delete() })
	return n
}

// Run runs a command inside the namespace (through nsenter, which unlike
// `ip netns exec` keeps /sys and so bpffs visible).
func (n *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path, "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Do runs fn on an OS thread switched into the namespace. Sockets opened in
// fn stay in the namespace after it returns.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is left locked (and so discarded) if switching
		// back fails, so no goroutine ever runs in the wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(n.Path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// CreateVeth creates a veth pair with one end, aName, in a and the other,
// bName, in b, both up.
func CreateVeth(a *NS, aName string, b *NS, bName string) error {
	if _, err := a.Run("ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	if _, err := a.Run("ip", "link", "set", aName, "up"); err != nil {
		return err
	}
	_, err := b.Run("ip", "link", "set", bName, "up")
	return err
}

// Veth is CreateVeth that fails the test on error.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	if err := CreateVeth(a, aName, b, bName); err != nil {
		t.Fatal(err)
	}
}

// InterfaceIndex returns the index of an interface in the namespace.
func (n *NS) InterfaceIndex(name string) (int, error) {
	var idx int
	err := n.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifc.Index
		}
		return err
	})
	return idx, err
}

// HardwareAddr returns the MAC of an interface in the namespace.
func (n *NS) HardwareAddr(name string) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := n.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	})
	return mac, err
}

// IfIndex is InterfaceIndex that fails the test on error.
func (n *NS) IfIndex(t testing.TB, name string) int {
	t.Helper()
	idx, err := n.InterfaceIndex(name)
	if err != nil {
		t.Fatalf("ifindex of %s in %s: %v", name, n.Name, err)
	}
	return idx
}

// MAC is HardwareAddr as a string that fails the test on error.
func (n *NS) MAC(t testing.TB, name string) string {
	t.Helper()
	mac, err := n.HardwareAddr(name)
	if err != nil {
		t.Fatalf("MAC of %s in %s: %v", name, n.Name, err)
	}
	return mac.String()
}

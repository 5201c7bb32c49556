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

// NewNS makes a namespace named prefix+random, with loopback up, and deletes
// it at test end.
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	name := Unique(prefix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, Path: filepath.Join("/var/run/netns", name)}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n.MustRun(t, "ip", "link", "set", "lo", "up")
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

// Veth creates a veth pair with one end, aName, in a and the other, bName,
// in b, both up.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	a.MustRun(t, "ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	a.MustRun(t, "ip", "link", "set", aName, "up")
	b.MustRun(t, "ip", "link", "set", bName, "up")
}

// IfIndex returns the index of an interface in the namespace.
func (n *NS) IfIndex(t testing.TB, name string) int {
	t.Helper()
	var idx int
	err := n.Do(func() error {
		l, err := netInterfaceByName(name)
		idx = l
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// MAC returns the hardware address of an interface in the namespace.
func (n *NS) MAC(t testing.TB, name string) string {
	t.Helper()
	var mac string
	err := n.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		mac = ifc.HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatalf("MAC of %s in %s: %v", name, n.Name, err)
	}
	return mac
}

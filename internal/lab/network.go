package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// netnsPath is where `ip netns` keeps a namespace.
func netnsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// run runs a command and folds its output into the error.
func run(argv ...string) (string, error) {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// inNS runs a command inside a network namespace (nsenter keeps /sys).
func inNS(ns string, argv ...string) (string, error) {
	return run(append([]string{"nsenter", "--net=" + netnsPath(ns), "--"}, argv...)...)
}

// addNetNS creates a namespace with loopback up and records it.
func (s *State) addNetNS(name string) error {
	if _, err := os.Stat(netnsPath(name)); err == nil {
		return fmt.Errorf("network namespace %s already exists: another lab named %q is up (run `sigil lab down --name %s`), or remove it with `ip netns del %s`", name, s.Name, s.Name, name)
	}
	if _, err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	if err := s.update(func(s *State) { s.NetNS = append(s.NetNS, name) }); err != nil {
		return err
	}
	_, err := inNS(name, "ip", "link", "set", "lo", "up")
	return err
}

// sysctlNS writes a sysctl inside a namespace (per-namespace net.* ones).
func sysctlNS(ns, key, value string) error {
	_, err := inNS(ns, "sh", "-c", fmt.Sprintf("echo %s > /proc/sys/%s", value, strings.ReplaceAll(key, ".", "/")))
	return err
}

// buildNetwork makes the control-plane, external and node namespaces and
// wires them: nodes hang off the bridge lab0 in the control-plane namespace,
// which routes between them and the external one.
func (s *State) buildNetwork(c Config) error {
	cp, ext := c.cpNS(), c.extNS()
	for _, ns := range []string{cp, ext} {
		if err := s.addNetNS(ns); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"ip", "link", "add", "lab0", "type", "bridge"},
		{"ip", "addr", "add", prefixOf(APIServerAddr, UnderlayPrefix), "dev", "lab0"},
		{"ip", "link", "set", "lab0", "up"},
		{"ip", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", ext},
		{"ip", "addr", "add", prefixOf(routerExtAddr(), ExternalPrefix), "dev", "ext0"},
		{"ip", "link", "set", "ext0", "up"},
	}
	for _, st := range steps {
		if _, err := inNS(cp, st...); err != nil {
			return err
		}
	}
	for _, st := range [][]string{
		{"ip", "addr", "add", prefixOf(ExternalHost, ExternalPrefix), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", routerExtAddr().String()},
	} {
		if _, err := inNS(ext, st...); err != nil {
			return err
		}
	}
	if err := sysctlNS(cp, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	for i, n := range s.Nodes {
		if err := s.addNetNS(n.NetNS); err != nil {
			return err
		}
		// The node's end is eth0, like a machine's NIC; the bridge end is
		// named after the node.
		host := fmt.Sprintf("%s-n%d", c.Name, i+1)
		if _, err := inNS(cp, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", n.NetNS); err != nil {
			return err
		}
		for _, st := range [][]string{{"ip", "link", "set", host, "master", "lab0"}, {"ip", "link", "set", host, "up"}} {
			if _, err := inNS(cp, st...); err != nil {
				return err
			}
		}
		for _, st := range [][]string{
			{"ip", "addr", "add", n.IP + "/" + fmt.Sprint(UnderlayPrefix.Bits()), "dev", "eth0"},
			{"ip", "link", "set", "eth0", "up"},
			{"ip", "route", "add", "default", "via", APIServerAddr.String()},
		} {
			if _, err := inNS(n.NetNS, st...); err != nil {
				return err
			}
		}
		if err := sysctlNS(n.NetNS, "net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	return nil
}

// routerExtAddr is the control-plane namespace's address towards the
// external host.
func routerExtAddr() netip.Addr { return nthAddr(ExternalPrefix, 254) }

// dialInNS dials addr from inside network namespace ns: the socket is made
// on a thread switched into ns and stays there.
func dialInNS(ns, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine and is
		// not reused in the wrong namespace.
		runtime.LockOSThread()
		h, err := netns.GetFromPath(netnsPath(ns))
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := net.Dial(network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// deleteNetNS removes a namespace; a missing one is fine.
func deleteNetNS(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := run("ip", "netns", "del", name)
	return err
}

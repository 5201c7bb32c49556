package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// AttachMode is how per-endpoint programs are attached.
type AttachMode string

const (
	// AttachAuto uses TCX where the kernel has it (6.6+), else tc.
	AttachAuto AttachMode = "auto"
	// AttachTCX uses TCX links, pinned so programs stay attached after the
	// agent exits.
	AttachTCX AttachMode = "tcx"
	// AttachTC uses a clsact qdisc with direct-action bpf filters.
	AttachTC AttachMode = "tc"
)

func resolveAttachMode(m AttachMode) (AttachMode, error) {
	switch m {
	case AttachTCX, AttachTC:
		return m, nil
	case "", AttachAuto:
		if tcxSupported() {
			return AttachTCX, nil
		}
		return AttachTC, nil
	}
	return "", fmt.Errorf("datapath: unknown attach mode %q (want auto, tcx or tc)", m)
}

// tcxSupported probes for TCX by attaching a program that only returns
// TCX_NEXT to loopback, and detaching it at once.
func tcxSupported() bool {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TC_ACT_UNSPEC
	})
	if err != nil {
		return false
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: 1, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// hook is one attachment point of an endpoint.
type hook struct {
	suffix string
	attach ebpf.AttachType
	parent uint32 // clsact parent for tc mode
	prog   func(*Datapath) *ebpf.Program
}

var endpointHooks = []hook{
	// Traffic leaving the pod enters the host through the host-side veth.
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(d *Datapath) *ebpf.Program { return d.fromContainer }},
	// Traffic entering the pod leaves the host through the host-side veth.
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(d *Datapath) *ebpf.Program { return d.toContainer }},
}

// nativeDeviceHooks: the egress of a native-routing device, where packets a
// local pod sent to a service and the host stack translated (kube-proxy,
// ConfigServiceDefer) to a backend on another node have their egress judged.
var nativeDeviceHooks = []hook{
	{"netdev", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS, func(d *Datapath) *ebpf.Program { return d.toNetdev }},
}

// nativeIngressHooks: the ingress of a native-routing device, where packets
// from other nodes for local pods are judged and handed straight to the pod
// (from_netdev). Its pin suffix ends in neither -ingress nor -egress (the
// endpoint hooks', see AttachedInterfaces) nor -netdev (NativeDevices).
var nativeIngressHooks = []hook{
	{"netdev-in", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS, func(d *Datapath) *ebpf.Program { return d.fromNetdev }},
}

// AttachNativeIngress attaches from_netdev to the ingress of a node device
// that pod traffic from other nodes arrives on in native routing mode: a
// packet for a local pod is judged by the pod's ingress policy there and
// redirected into the pod, skipping the host stack; anything else goes up
// the stack as before. Idempotent, like AttachEndpoint.
func (d *Datapath) AttachNativeIngress(ifName string, ifIndex int) error {
	return d.attachHooks(ifName, ifIndex, nativeIngressHooks)
}

// DetachNativeIngress removes from_netdev from ifName; idempotent.
func (d *Datapath) DetachNativeIngress(ifName string) error {
	return d.detachHooks(ifName, nativeIngressHooks)
}

// NativeIngressDevices lists the interfaces with from_netdev attached (their
// pins).
func (d *Datapath) NativeIngressDevices() ([]string, error) {
	return d.pinnedWithSuffix("-" + nativeIngressHooks[0].suffix)
}

// AttachNativeDevice attaches to_netdev to the egress of a node device that
// natively routes pod traffic to other nodes. It is needed only with
// ConfigServiceDefer in native routing mode; packets Sigil did not defer
// pass it at once. Idempotent, like AttachEndpoint.
func (d *Datapath) AttachNativeDevice(ifName string, ifIndex int) error {
	return d.attachHooks(ifName, ifIndex, nativeDeviceHooks)
}

// DetachNativeDevice removes to_netdev from ifName; idempotent.
func (d *Datapath) DetachNativeDevice(ifName string) error {
	return d.detachHooks(ifName, nativeDeviceHooks)
}

func (d *Datapath) localIngressPin() string {
	return filepath.Join(d.cfg.PinDir, "links", "cgroup-local_ingress")
}

// AttachLocalIngress attaches local_ingress to the cgroup v2 directory
// cgroup (its root: every socket of the node), where packets a pod sent to
// a service and the host stack translated to an address of the node itself
// (ConfigServiceDefer) have the pod's egress judged: they are delivered
// locally and pass no tc hook. Other packets pass it at once. Idempotent.
func (d *Datapath) AttachLocalIngress(cgroup string) error {
	pin := d.localIngressPin()
	updated, err := updatePinnedLink(pin, d.localIngress, nil)
	if err != nil || updated {
		return err
	}
	return pinNewLink(pin, func() (link.Link, error) {
		return link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCGroupInetIngress, Program: d.localIngress})
	})
}

// DetachLocalIngress removes local_ingress from its cgroup; idempotent.
func (d *Datapath) DetachLocalIngress() error { return detachPinnedLink(d.localIngressPin()) }

// NativeDevices lists the interfaces with to_netdev attached (their pins).
func (d *Datapath) NativeDevices() ([]string, error) {
	return d.pinnedWithSuffix("-" + nativeDeviceHooks[0].suffix)
}

// pinnedWithSuffix lists the interfaces with a link pinned under suffix.
func (d *Datapath) pinnedWithSuffix(suffix string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(d.cfg.PinDir, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if base, ok := cutSuffix(e.Name(), suffix); ok {
			out = append(out, base)
		}
	}
	return out, nil
}

func (d *Datapath) linkPin(ifName, suffix string) string {
	return filepath.Join(d.cfg.PinDir, "links", ifName+"-"+suffix)
}

// inNetNS runs fn on a locked OS thread in the configured namespace.
func (d *Datapath) inNetNS(fn func() error) error { return inNetNS(d.cfg.NetNS, fn) }

// inNetNS runs fn on a locked OS thread switched into the namespace at path,
// or directly when path is empty.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	err = fn()
	// A thread that cannot be switched back stays locked, so the runtime
	// discards it instead of running other goroutines in the wrong namespace.
	if netns.Set(orig) == nil {
		runtime.UnlockOSThread()
	}
	return err
}

func interfaceIndex(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return ifc.Index, nil
}

// AttachEndpoint attaches from-container and to-container to the host-side
// veth ifName (ifIndex in the node's namespace). It is idempotent: existing
// attachments are updated to this process's programs, so an agent restart or
// upgrade swaps programs without a gap.
//
// In TCX mode both hooks are attached concurrently: each TCX attach waits for
// an RCU grace period in the kernel (~10 ms here), and the two waits overlap.
func (d *Datapath) AttachEndpoint(ifName string, ifIndex int) error {
	return d.attachHooks(ifName, ifIndex, endpointHooks)
}

// attachHooks attaches each hook's program to the interface.
func (d *Datapath) attachHooks(ifName string, ifIndex int, hooks []hook) error {
	attach := d.attachTC
	if d.mode == AttachTCX {
		attach = d.attachTCX
	}
	errs := make([]error, len(hooks))
	var wg sync.WaitGroup
	for i, h := range hooks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.inNetNS(func() error {
				if err := attach(ifName, ifIndex, h); err != nil {
					return fmt.Errorf("attach %s to %s (%s): %w", h.prog(d).String(), ifName, d.mode, err)
				}
				return nil
			})
		}()
		if d.mode != AttachTCX {
			// tc changes go through one qdisc: keep them in order.
			wg.Wait()
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *Datapath) attachTCX(ifName string, ifIndex int, h hook) error {
	prog := h.prog(d)
	valid := func(info *link.Info) bool { return info.TCX() != nil && int(info.TCX().Ifindex) == ifIndex }
	updated, err := updatePinnedLink(d.linkPin(ifName, h.suffix), prog, valid)
	if err != nil || updated {
		return err
	}
	return pinNewLink(d.linkPin(ifName, h.suffix), func() (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{Interface: ifIndex, Program: prog, Attach: h.attach})
	})
}

// updatePinnedLink swaps prog into the link pinned at pin, atomically, if
// that link still fits (valid; nil accepts any). A pin that does not fit (its
// interface was re-created, the link is defunct) is removed. It reports
// whether prog is now attached through the pin.
func updatePinnedLink(pin string, prog *ebpf.Program, valid func(*link.Info) bool) (bool, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		fits := valid == nil
		if !fits {
			info, ierr := l.Info()
			fits = ierr == nil && valid(info)
		}
		updated := fits && l.Update(prog) == nil
		l.Close()
		if updated {
			return true, nil
		}
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("remove stale link pin %s: %w", pin, err)
	}
	return false, nil
}

// pinNewLink attaches with attach and pins the link at pin, so the program
// stays attached after this process exits.
func pinNewLink(pin string, attach func() (link.Link, error)) error {
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return err
	}
	l, err := attach()
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	return nil
}

func (d *Datapath) attachTC(ifName string, ifIndex int, h hook) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifIndex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("clsact qdisc: %w", err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifIndex, Parent: h.parent, Handle: 1,
			Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd:           h.prog(d).FD(),
		Name:         "sigil-" + h.suffix,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("bpf filter: %w", err)
	}
	return nil
}

// DetachEndpoint removes the programs from ifName. A missing interface or
// attachment is not an error: DetachEndpoint is idempotent.
func (d *Datapath) DetachEndpoint(ifName string) error {
	return d.detachHooks(ifName, endpointHooks)
}

func (d *Datapath) detachHooks(ifName string, hooks []hook) error {
	return d.inNetNS(func() error {
		var errs []error
		for _, h := range hooks {
			if err := detachPinnedLink(d.linkPin(ifName, h.suffix)); err != nil {
				errs = append(errs, err)
			}
		}
		if d.mode == AttachTC {
			if l, err := netlink.LinkByName(ifName); err == nil {
				for _, h := range hooks {
					f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index,
						Parent: h.parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1}}
					if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
						errs = append(errs, err)
					}
				}
			}
		}
		return errors.Join(errs...)
	})
}

// detachPinnedLink detaches a pinned link at once and removes its pin.
// Unpinning alone would leave the kernel to release the link later from a
// work queue, and packets would still be judged for a while after Detach
// returned.
func detachPinnedLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		if derr := l.Detach(); derr != nil && !errors.Is(derr, os.ErrNotExist) && !errors.Is(derr, unix.ENOLINK) {
			l.Close()
			return fmt.Errorf("detach %s: %w", pin, derr)
		}
		l.Close()
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// AttachedInterfaces lists the interface names with pinned TCX links.
func (d *Datapath) AttachedInterfaces() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(d.cfg.PinDir, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		name := e.Name()
		for _, h := range endpointHooks {
			if base, ok := cutSuffix(name, "-"+h.suffix); ok && !seen[base] {
				seen[base] = true
				out = append(out, base)
			}
		}
	}
	return out, nil
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Down stops everything the lab started and removes what it made; it goes on
// past errors (reporting them all) so that one failure does not leave the
// rest behind, and can be run again.
func (l *Lab) Down() error {
	s, c := l.state, l.cfg
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	byName := map[string]Process{}
	for _, p := range s.Processes {
		byName[p.Name] = p
	}
	// Kubelets first, so nothing restarts what goes next.
	for _, n := range s.Nodes {
		if p, ok := byName[n.Name+"-kubelet"]; ok {
			if p.alive() {
				l.step("stopping %s", p.Name)
			}
			note(p.stop(10 * time.Second))
		}
	}
	// Containers and their shims: everything in the nodes' cgroups, and
	// every shim serving a lab containerd. Remember their network
	// namespaces (the pods'), to remove those that containerd bind-mounted.
	podNetNS := map[uint64]bool{}
	for _, n := range s.Nodes {
		pids := cgroupPIDs(c.cgroupRoot(n))
		pids = append(pids, shimPIDs(n.ContainerdSocket)...)
		for _, pid := range pids {
			if ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
				podNetNS[ino] = true
			}
		}
		if len(pids) > 0 {
			l.step("%s: killing %d container and shim processes", n.Name, len(pids))
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// The remaining processes, newest first.
	for i := len(s.Processes) - 1; i >= 0; i-- {
		p := s.Processes[i]
		if strings.HasSuffix(p.Name, "-kubelet") {
			continue
		}
		if p.alive() {
			l.step("stopping %s", p.Name)
		}
		note(p.stop(10 * time.Second))
	}
	// The node namespaces are not pod namespaces, though pods with
	// hostNetwork share them.
	for _, name := range s.NetNS {
		if ino, err := nsInode(netnsPath(name)); err == nil {
			delete(podNetNS, ino)
		}
	}
	note(removePodNetNS(podNetNS))
	note(unmountUnder(s.Dir))
	for _, name := range s.NetNS {
		note(deleteNetNS(name))
	}
	note(removeCgroups(s.Cgroups))
	if err := os.RemoveAll(c.pinDir()); err != nil {
		note(fmt.Errorf("remove pins %s: %w", c.pinDir(), err))
	}
	for _, mp := range s.SharedMounts {
		if err := syscall.Mount("", mp, "", syscall.MS_PRIVATE, ""); err != nil {
			note(fmt.Errorf("make %s private again: %w", mp, err))
		}
	}
	for k, v := range s.Sysctls {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			note(fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	for _, p := range s.Created {
		note(unmountUnder(p))
		if err := os.RemoveAll(p); err != nil {
			note(err)
		}
	}
	// What the lab wrote in its folder; the logs stay for a post-mortem
	// until the next up.
	for _, name := range labFiles {
		if err := os.RemoveAll(filepath.Join(s.Dir, name)); err != nil {
			note(err)
		}
	}
	if len(errs) > 0 {
		note(fmt.Errorf("kept %s: run `sigil lab down` again after fixing the above", s.path))
		return errors.Join(errs...)
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l.step("down: processes stopped, namespaces, cgroups, mounts and pins removed, sysctls restored")
	return nil
}

// labFiles are the entries up writes in the lab folder (down removes only
// these, whatever folder it is pointed at).
var labFiles = []string{"images", "bin", "cni", "pki", "nodes", "control-plane", "run", "agent-state", "helm",
	"kubeconfig", "proxy.addr", "proxy.addr.tmp"}

// cgroupPIDs lists the processes in a cgroup tree, in every hierarchy.
func cgroupPIDs(root string) []int {
	mounts, _ := cgroupMounts()
	seen := map[int]bool{}
	var out []int
	for _, m := range mounts {
		filepath.WalkDir(filepath.Join(m, root), func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] && pid != os.Getpid() {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// shimPIDs finds the containerd shims serving the containerd at socket
// (their command line names its address).
func shimPIDs(socket string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for _, a := range args {
			if a == socket {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// nsInode is the inode of a namespace file.
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// removePodNetNS unmounts and removes the /var/run/netns entries that name
// the given namespaces (the pods' namespaces, bind-mounted by containerd).
func removePodNetNS(inodes map[uint64]bool) error {
	ents, _ := os.ReadDir("/var/run/netns")
	var errs []error
	for _, e := range ents {
		p := filepath.Join("/var/run/netns", e.Name())
		if ino, err := nsInode(p); err == nil && inodes[ino] {
			syscall.Unmount(p, syscall.MNT_DETACH)
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder lazily unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	var errs []error
	for _, mp := range mps {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroups removes cgroup trees, deepest first (a cgroup can only be
// removed once empty and without children). Processes may take a moment to
// leave after SIGKILL, so it retries briefly.
func removeCgroups(roots []string) error {
	var errs []error
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for i := 0; i < 50; i++ {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

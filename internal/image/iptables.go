package image

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// hostIPTables returns the build host's iptables-nft (the xtables-nft-multi
// binary under the names the agent runs, its shared libraries as ldd lists
// them, and the xtables extensions).
func hostIPTables() ([]file, error) {
	bin, err := exec.LookPath("xtables-nft-multi")
	if err != nil {
		return nil, err
	}
	if bin, err = filepath.EvalSymlinks(bin); err != nil {
		return nil, err
	}
	files := []file{{name: "/usr/sbin/xtables-nft-multi", src: bin, mode: 0o755}}
	for _, n := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		files = append(files, file{name: "/usr/sbin/" + n, link: "xtables-nft-multi"})
	}
	objs := []string{bin}
	extDir := ""
	for _, d := range []string{"/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/aarch64-linux-gnu/xtables", "/usr/lib/xtables", "/usr/lib64/xtables"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			extDir = d
			break
		}
	}
	if extDir != "" {
		ents, err := os.ReadDir(extDir)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			p := filepath.Join(extDir, e.Name())
			real, err := filepath.EvalSymlinks(p)
			if err != nil || !strings.HasSuffix(e.Name(), ".so") {
				continue
			}
			files = append(files, file{name: p, src: real, mode: 0o644})
			objs = append(objs, real)
		}
	}
	libs := map[string]bool{}
	for _, o := range objs {
		out, err := exec.Command("ldd", o).Output()
		if err != nil {
			if o == bin {
				return nil, fmt.Errorf("ldd %s: %v", o, err)
			}
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			var p string
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				p = f[2]
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				p = f[0] // the dynamic loader
			}
			if p != "" && !libs[p] {
				libs[p] = true
				real, err := filepath.EvalSymlinks(p)
				if err != nil {
					return nil, err
				}
				files = append(files, file{name: p, src: real, mode: 0o755})
			}
		}
	}
	return files, nil
}

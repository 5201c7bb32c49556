// Package image builds Sigil's container images without a container engine:
// static Go binaries (CGO_ENABLED=0) built with `go build`, put into one
// layer, and written as OCI image layout tarballs that `ctr images import`
// (containerd) and other OCI tools load. The image format (layers, config,
// manifest, index) is go-containerregistry's; this package only decides
// what goes into each image.
//
// Each tarball's index.json names its one manifest with the
// io.containerd.image.name and org.opencontainers.image.ref.name
// annotations, so containerd imports it under its full reference.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations on the manifest descriptor in index.json.
const (
	AnnotationContainerdName = "io.containerd.image.name"
	AnnotationRefName        = "org.opencontainers.image.ref.name"
)

// BinDir is where binaries go inside the images.
const BinDir = "/usr/local/bin"

// Spec describes one image.
type Spec struct {
	// Name is the image's short name (sigil-agent); the tarball is Name.tar.
	Name string
	// Packages are the Go main packages (./cmd/sigil-agent) built into BinDir.
	Packages []string
	// Entrypoint is the image's entrypoint.
	Entrypoint []string
	// HostIPTables copies the build host's iptables (nft multi-call binary,
	// its shared libraries and extensions) into the image; the agent runs
	// iptables for masquerading. Skipped with a warning when absent.
	HostIPTables bool
}

// Specs are Sigil's images.
func Specs() []Spec {
	return []Spec{
		{Name: "sigil-agent", Packages: []string{"./cmd/sigil-agent", "./cmd/sigil-cni", "./cmd/sigil", "./cmd/sigil-probe"},
			Entrypoint: []string{BinDir + "/sigil-agent"}, HostIPTables: true},
		{Name: "sigil-operator", Packages: []string{"./cmd/sigil-operator"}, Entrypoint: []string{BinDir + "/sigil-operator"}},
		{Name: "sigil-probe", Packages: []string{"./cmd/sigil-probe"}, Entrypoint: []string{BinDir + "/sigil-probe"}},
		{Name: "sigil-pause", Packages: []string{"./cmd/sigil-pause"}, Entrypoint: []string{BinDir + "/sigil-pause"}},
	}
}

// Options controls Build.
type Options struct {
	// Root is the module root (where go build runs).
	Root string
	// OutDir receives <name>.tar.
	OutDir string
	// Registry prefixes each image name (default ghcr.io/sigil-net).
	Registry string
	// Tag is each image's tag (default dev).
	Tag string
	// Aliases adds more references per image name, e.g. sigil-pause ->
	// registry.k8s.io/pause:3.10 (containerd's sandbox image).
	Aliases map[string][]string
	// Log receives progress lines (nil: discarded).
	Log io.Writer
}

// Ref is the image reference of spec under o.
func (o Options) Ref(name string) string {
	reg, tag := o.Registry, o.Tag
	if reg == "" {
		reg = "ghcr.io/sigil-net"
	}
	if tag == "" {
		tag = "dev"
	}
	return strings.TrimSuffix(reg, "/") + "/" + name + ":" + tag
}

// Build builds every spec and returns the tarballs written.
func Build(ctx context.Context, o Options, specs []Spec) ([]string, error) {
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "sigil-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	var pkgs []string
	seen := map[string]bool{}
	for _, s := range specs {
		for _, p := range s.Packages {
			if !seen[p] {
				seen[p] = true
				pkgs = append(pkgs, p)
			}
		}
	}
	fmt.Fprintf(logw, "go build (static) %s\n", strings.Join(pkgs, " "))
	if err := BuildBinaries(ctx, o.Root, tmp, pkgs); err != nil {
		return nil, err
	}
	var out []string
	for _, s := range specs {
		img, err := Image(s, tmp, logw)
		if err != nil {
			return out, fmt.Errorf("%s: %w", s.Name, err)
		}
		refs := append([]string{o.Ref(s.Name)}, o.Aliases[s.Name]...)
		dst := filepath.Join(o.OutDir, s.Name+".tar")
		if err := WriteOCITar(dst, img, refs...); err != nil {
			return out, fmt.Errorf("%s: %w", s.Name, err)
		}
		fmt.Fprintf(logw, "wrote %s (%s)\n", dst, strings.Join(refs, ", "))
		out = append(out, dst)
	}
	return out, nil
}

// BuildBinaries builds the main packages statically into dir.
func BuildBinaries(ctx context.Context, root, dir string, pkgs []string) error {
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + string(os.PathSeparator)}, pkgs...)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Image assembles spec's image from the binaries in binDir: one layer.
func Image(s Spec, binDir string, logw io.Writer) (v1.Image, error) {
	var files []file
	for _, p := range s.Packages {
		name := path.Base(p)
		files = append(files, file{name: BinDir + "/" + name, src: filepath.Join(binDir, name), mode: 0o755})
	}
	if s.HostIPTables {
		ipt, err := hostIPTables()
		if err != nil {
			fmt.Fprintf(logw, "warning: %s without iptables (masquerade will not work): %v\n", s.Name, err)
		}
		files = append(files, ipt...)
	}
	layerTar, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Env = []string{"PATH=" + BinDir + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/sigil-net/sigil", "org.opencontainers.image.title": s.Name}
	return mutate.ConfigFile(img, cf)
}

// WriteOCITar writes img as an OCI image layout tarball at dst, its index
// naming it by each of refs.
func WriteOCITar(dst string, img v1.Image, refs ...string) error {
	dir, err := os.MkdirTemp("", "sigil-oci-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	for _, ref := range refs {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
			AnnotationContainerdName: ref,
			AnnotationRefName:        ref,
		})); err != nil {
			return err
		}
	}
	return tarDir(dir, dst)
}

// file is one regular file or symlink of a layer.
type file struct {
	name string // absolute path in the image
	src  string // host file (regular)
	link string // symlink target (instead of src)
	mode int64
}

// layerTar is a deterministic tar of files with their parent directories.
func layerTar(files []file) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	epoch := time.Unix(0, 0)
	var addDir func(d string) error
	addDir = func(d string) error {
		if d == "/" || d == "." || dirs[d] {
			return nil
		}
		if err := addDir(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	// Containers expect a writable /tmp.
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	dirs["/tmp"] = true
	for _, f := range files {
		if err := addDir(path.Dir(f.name)); err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(f.name, "/")
		if f.link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.link, Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data)), Mode: f.mode, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarDir writes the folder src (an OCI layout) as a tarball at dst.
func tarDir(src, dst string) error {
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == src {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = time.Unix(0, 0), 0, 0, "", ""
		hdr.Mode = 0o644
		if fi.IsDir() {
			hdr.Mode = 0o755
		}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		_, err = io.Copy(tw, in)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

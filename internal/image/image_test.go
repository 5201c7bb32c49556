package image

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestBuildPause builds the pause image and checks the tarball: an OCI
// layout whose index names the manifest for containerd, a config with the
// entrypoint, one layer holding the static binary.
func TestBuildPause(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	root, err := filepath.Abs("../..") // the module root, from internal/image
	if err != nil {
		t.Fatal(err)
	}
	var spec Spec
	for _, s := range Specs() {
		if s.Name == "sigil-pause" {
			spec = s
		}
	}
	out := t.TempDir()
	o := Options{Root: root, OutDir: out, Registry: "example.test/sigil", Tag: "t1",
		Aliases: map[string][]string{"sigil-pause": {"registry.k8s.io/pause:3.10"}}}
	files, err := Build(context.Background(), o, []Spec{spec})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0] != filepath.Join(out, "sigil-pause.tar") {
		t.Fatalf("wrote %v", files)
	}

	// Unpack the tarball and read it back as an OCI layout.
	dir := t.TempDir()
	untar(t, files[0], dir)
	for _, f := range []string{"oci-layout", "index.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("no %s in the tarball", f)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range im.Manifests {
		if d.MediaType != types.OCIManifestSchema1 {
			t.Errorf("manifest media type %s", d.MediaType)
		}
		names = append(names, d.Annotations[AnnotationContainerdName])
	}
	if len(names) != 2 || names[0] != "example.test/sigil/sigil-pause:t1" || names[1] != "registry.k8s.io/pause:3.10" {
		t.Fatalf("index names %v", names)
	}
	img, err := p.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/local/bin/sigil-pause" {
		t.Errorf("config %+v", cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d %v", len(layers), err)
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s", mt)
	}
	checkLayer(t, layers[0])

	// Deterministic: building again gives the same manifest.
	if _, err := Build(context.Background(), o, []Spec{spec}); err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	untar(t, files[0], dir2)
	p2, _ := layout.FromPath(dir2)
	idx2, err := p2.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im2, _ := idx2.IndexManifest()
	if im2.Manifests[0].Digest != im.Manifests[0].Digest {
		t.Errorf("rebuild changed the manifest: %s -> %s", im.Manifests[0].Digest, im2.Manifests[0].Digest)
	}
}

func checkLayer(t *testing.T, l v1.Layer) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "usr/local/bin/sigil-pause" {
			found = true
			if h.Mode&0o111 == 0 || h.Size < 100_000 {
				t.Errorf("sigil-pause mode %o size %d", h.Mode, h.Size)
			}
			head := make([]byte, 4)
			io.ReadFull(tr, head)
			if string(head) != "\x7fELF" {
				t.Errorf("sigil-pause is not an ELF binary")
			}
		}
	}
	if !found {
		t.Error("no usr/local/bin/sigil-pause in the layer")
	}
}

func untar(t *testing.T, src, dst string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Command sigil-images builds Sigil's OCI image tarballs without a container
// engine (see internal/image):
//
//	go run ./cmd/sigil-images [--out _output/images] [--registry ghcr.io/sigil-net] [--tag dev] [NAME...]
//
// NAMEs are sigil-agent, sigil-operator, sigil-probe and sigil-pause
// (default: all). Import one on a node with
// `ctr -n k8s.io images import _output/images/sigil-agent.tar`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/sigil-net/sigil/internal/image"
)

func main() {
	out := flag.String("out", "_output/images", "folder for the <name>.tar files")
	reg := flag.String("registry", "ghcr.io/sigil-net", "registry and path prefix of the image references")
	tag := flag.String("tag", "dev", "image tag")
	pauseAs := flag.String("pause-alias", "registry.k8s.io/pause:3.10", "extra reference for sigil-pause (containerd's sandbox image); empty: none")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: sigil-images [flags] [NAME...]\nNAMEs: %s\n", strings.Join(names(), ", "))
		flag.PrintDefaults()
	}
	flag.Parse()
	specs := image.Specs()
	if flag.NArg() > 0 {
		byName := map[string]image.Spec{}
		for _, s := range specs {
			byName[s.Name] = s
		}
		specs = nil
		for _, n := range flag.Args() {
			s, ok := byName[n]
			if !ok {
				fmt.Fprintf(os.Stderr, "sigil-images: unknown image %q (want %s)\n", n, strings.Join(names(), ", "))
				os.Exit(2)
			}
			specs = append(specs, s)
		}
	}
	root, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigil-images:", err)
		os.Exit(1)
	}
	o := image.Options{Root: root, OutDir: *out, Registry: *reg, Tag: *tag, Log: os.Stdout}
	if *pauseAs != "" {
		o.Aliases = map[string][]string{"sigil-pause": {*pauseAs}}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := image.Build(ctx, o, specs); err != nil {
		fmt.Fprintln(os.Stderr, "sigil-images:", err)
		os.Exit(1)
	}
}

func names() []string {
	var n []string
	for _, s := range image.Specs() {
		n = append(n, s.Name)
	}
	return n
}

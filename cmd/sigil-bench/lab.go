package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/sigil-net/sigil/internal/lab"
)

// runLab is `sigil-bench lab`: a real cluster per routing mode (see
// internal/lab.RunBench).
func runLab(args []string) error {
	o := lab.DefaultBenchOptions()
	fs := flag.NewFlagSet("lab", flag.ExitOnError)
	fs.IntVar(&o.Pods, "pods", o.Pods, "pods started at once for the start-to-Ready figure")
	fs.IntVar(&o.PolicyRuns, "policy-runs", o.PolicyRuns, "policy applications for the apply-to-enforcement figure")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "duration of each traffic figure")
	modes := fs.String("modes", strings.Join(o.Modes, ","), "routing modes, each on a fresh lab")
	fs.StringVar(&o.SigilBinary, "sigil", "bin/sigil", "the sigil CLI (runs the lab's API proxy)")
	fs.StringVar(&o.KubeBin, "kube-bin", "", "Kubernetes binaries (default: hack/k8s-binaries.sh's cache)")
	markdown := fs.String("markdown", "", `also write the results as the "Lab" section of this markdown file`)
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.Modes = strings.Split(*modes, ",")
	if !*quiet {
		o.Progress = os.Stderr
	}
	return runBenchmark("lab", "lab", "Lab", args, *markdown, func(ctx context.Context) (report, error) {
		return lab.RunBench(ctx, o)
	})
}

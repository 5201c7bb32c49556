package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/sigil-net/sigil/internal/bench"
)

func runMultinode(args []string) error {
	o := bench.DefaultMultinodeOptions()
	fs := flag.NewFlagSet("multinode", flag.ExitOnError)
	fs.DurationVar(&o.Duration, "duration", o.Duration, "duration of each traffic figure")
	fs.IntVar(&o.CRRClients, "crr-clients", o.CRRClients, "parallel client threads of the CRR figure")
	markdown := fs.String("markdown", "", `also write the results as the "Multi-node datapath" section of this markdown file`)
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if !*quiet {
		o.Progress = os.Stderr
	}
	return runBenchmark("multinode", "multinode", "Multi-node datapath", args, *markdown, func(ctx context.Context) (report, error) {
		return bench.RunMultinode(ctx, o)
	})
}

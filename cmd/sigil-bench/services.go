package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"

	"github.com/sigil-net/sigil/internal/bench"
)

func runServices(args []string) error {
	o := bench.DefaultServicesOptions()
	fs := flag.NewFlagSet("services", flag.ExitOnError)
	fs.DurationVar(&o.Duration, "duration", o.Duration, "duration of each traffic figure")
	fs.IntVar(&o.CRRClients, "crr-clients", o.CRRClients, "parallel client threads of the CRR figure")
	sizes := fs.String("sizes", joinInts(o.Sizes), "numbers of Services defined, increasing, comma-separated")
	fs.IntVar(&o.Rounds, "rounds", o.Rounds, "alternating rounds per size; each load-balancer's best figures are kept")
	fs.IntVar(&o.Workers, "workers", o.Workers, "concurrent API requests while creating Services")
	markdown := fs.String("markdown", "", `also write the results as the "Services" section of this markdown file`)
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.Sizes, err = parseInts(*sizes); err != nil {
		return fmt.Errorf("--sizes: %w", err)
	}
	if !*quiet {
		o.Progress = os.Stderr
	}
	// As for datapath: the load tools park one OS thread per connection.
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 8))
	return runBenchmark("services", "services", "Services", args, *markdown, func(ctx context.Context) (report, error) {
		return bench.RunServices(ctx, o)
	})
}

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.RunMultinode(ctx, o)
	if err != nil {
		return err
	}
	md := rep.Markdown()
	fmt.Print(md)
	if *markdown != "" {
		if err := bench.WriteSection(*markdown, "multinode", md); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote the Multi-node datapath section of %s\n", *markdown)
	}
	return nil
}

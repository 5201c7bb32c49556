package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/sigil-net/sigil/internal/bench"
)

// runPrefilter is `sigil-bench prefilter`: the XDP prefilter against the
// same deny list in a tc program and as iptables raw-table rules, under a
// UDP flood over a veth pair, at several list sizes.
func runPrefilter(args []string) error {
	o := bench.DefaultPrefilterOptions()
	fs := flag.NewFlagSet("prefilter", flag.ExitOnError)
	fs.DurationVar(&o.Duration, "duration", o.Duration, "duration of each flood")
	sizes := fs.String("sizes", joinInts(o.Sizes), "deny-list sizes (CIDRs), comma-separated")
	fs.IntVar(&o.Senders, "senders", o.Senders, "flooding UDP sockets, one thread each")
	fs.IntVar(&o.Payload, "payload", o.Payload, "UDP payload bytes per datagram")
	srcs := fs.String("sources", strings.Join(o.Sources, ","), `traffic sources, comma-separated: "xdp" (frames injected by an XDP generator: no skb until the node builds one, as from a NIC) and/or "socket" (UDP sockets: skbs from the start)`)
	noIPT := fs.Bool("no-iptables", false, "skip the iptables raw-table rows")
	fs.IntVar(&o.Repeat, "test-run-repeat", o.Repeat, "BPF_PROG_TEST_RUN repeat count per round")
	fs.IntVar(&o.Rounds, "test-run-rounds", o.Rounds, "BPF_PROG_TEST_RUN rounds per size and program (median reported)")
	markdown := fs.String("markdown", "", `also write the results as the "XDP prefilter" section of this markdown file (e.g. docs/performance.md)`)
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.Sizes, err = parseInts(*sizes); err != nil {
		return fmt.Errorf("--sizes: %w", err)
	}
	o.IPTables = !*noIPT
	o.Sources = nil
	for _, s := range strings.Split(*srcs, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.Sources = append(o.Sources, s)
		}
	}
	if !*quiet {
		o.Progress = os.Stderr
	}

	return runBenchmark("prefilter", "prefilter", "XDP prefilter", args, *markdown, func(ctx context.Context) (report, error) {
		return bench.RunPrefilter(ctx, o)
	})
}

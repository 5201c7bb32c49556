// Command sigil-bench runs Sigil's benchmarks and prints their figures.
//
//	sigil-bench datapath [--duration 5s] [--sizes 10,1000,10000] [--markdown docs/performance.md]
//	sigil-bench prefilter [--duration 5s] [--sizes 10,1000,100000] [--markdown docs/performance.md]
//	sigil-bench multinode [--duration 5s] [--markdown docs/performance.md]
//	sigil-bench lab [--pods 50] [--modes tunnel,native] [--markdown docs/performance.md]
//	sigil-bench services [--duration 5s] [--sizes 1,1000,10000] [--markdown docs/performance.md]
//
// datapath builds one node with two pods in network namespaces (addresses
// from 198.18.0.0/15, traffic only between them) and compares, in one run,
// the bare veths with Sigil's programs at several policy sizes and with the
// same policies as iptables rules; it also times the programs per packet.
//
// prefilter floods a node namespace with small UDP packets over a veth from
// a sender namespace whose address the deny list holds, and compares the
// XDP prefilter with the same list in a tc program and as iptables raw-table
// rules: drops/s, CPU per packet, and per-packet program cost.
//
// multinode builds two node namespaces on an underlay with a pod each and
// compares cross-node traffic node to node (physical), over a plain kernel
// VXLAN, and pod to pod through Sigil in tunnel and native routing mode.
//
// lab brings up a real cluster per routing mode (sigil lab) and measures pod
// start to Ready, policy apply to enforcement, and cross-node pod traffic
// against the same traffic between the node namespaces.
// services compares, with 1, 1,000 and 10,000 Services defined in a real
// API server, new connections per second and request/response to a
// ClusterIP through Sigil's socket load-balancer and through the real
// kube-proxy in iptables mode.
//
// Everything they create is removed on exit, error or Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/internal/bench"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "datapath":
		err = runDatapath(os.Args[2:])
	case "prefilter":
		err = runPrefilter(os.Args[2:])
	case "multinode":
		err = runMultinode(os.Args[2:])
	case "lab":
		err = runLab(os.Args[2:])
	case "services":
		err = runServices(os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "sigil-bench: unknown benchmark %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sigil-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sigil-bench datapath [flags]    (sigil-bench datapath -h for the flags)")
	fmt.Fprintln(os.Stderr, "       sigil-bench prefilter [flags]   (sigil-bench prefilter -h for the flags)")
	fmt.Fprintln(os.Stderr, "       sigil-bench multinode [flags]   (sigil-bench multinode -h for the flags)")
	fmt.Fprintln(os.Stderr, "       sigil-bench lab [flags]         (sigil-bench lab -h for the flags)")
	fmt.Fprintln(os.Stderr, "       sigil-bench services [flags]    (sigil-bench services -h for the flags)")
}

func runDatapath(args []string) error {
	o := bench.DefaultDatapathOptions()
	fs := flag.NewFlagSet("datapath", flag.ExitOnError)
	fs.DurationVar(&o.Duration, "duration", o.Duration, "duration of each traffic figure (iperf3 rounds it up to whole seconds)")
	sizes := fs.String("sizes", joinInts(o.Sizes), "policy sizes (allow entries / iptables rules), comma-separated")
	ipt := fs.String("iptables", strings.Join(o.IPTables, ","), `iptables peers: "conntrack", "stateless", both, or "none"`)
	attach := fs.String("attach-mode", string(o.AttachMode), "program attachment: auto, tcx or tc")
	fs.IntVar(&o.CRRClients, "crr-clients", o.CRRClients, "parallel client threads of the CRR figure")
	fs.BoolVar(&o.NoFlowEvents, "no-flow-events", false, "run Sigil without an event per allowed new flow (the agent enables them)")
	markdown := fs.String("markdown", "", `also write the results as the "Datapath" section of this markdown file (e.g. docs/performance.md)`)
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.Sizes, err = parseInts(*sizes); err != nil {
		return fmt.Errorf("--sizes: %w", err)
	}
	o.IPTables = nil
	if *ipt != "none" && *ipt != "" {
		o.IPTables = strings.Split(*ipt, ",")
	}
	o.AttachMode = datapath.AttachMode(*attach)
	if !*quiet {
		o.Progress = os.Stderr
	}

	// The load tools park one OS thread per connection in blocking socket
	// calls; spare Ps let a thread that returns from a syscall run at once
	// instead of queueing for one of the two.
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 8))

	return runBenchmark("datapath", "datapath", "Datapath", args, *markdown, func(ctx context.Context) (report, error) {
		return bench.RunDatapath(ctx, o)
	})
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ReplaceAll(f, "_", ""))
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("no sizes")
	}
	return out, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

package lab

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PrintStatus prints the lab's processes and, when the API server answers,
// its nodes.
func (l *Lab) PrintStatus(ctx context.Context, w io.Writer) error {
	s := l.state
	fmt.Fprintf(w, "lab %s in %s: %d nodes, %s routing, ready=%v\nkubeconfig: %s\n\n", s.Name, s.Dir, len(s.Nodes), s.Routing, s.Ready, l.cfg.Kubeconfig())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tPID\tNETNS\tSTATE")
	for _, p := range s.Processes {
		st := "running"
		if !p.alive() {
			st = "exited"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", p.Name, p.PID, p.NetNS, st)
	}
	tw.Flush()
	k, err := l.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nodes, err := k.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("API server: %w", err)
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREADY\tADDRESS")
	for _, n := range nodes.Items {
		addr := ""
		if len(n.Status.Addresses) > 0 {
			addr = n.Status.Addresses[0].Address
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\n", n.Name, nodeReady(&n), addr)
	}
	return tw.Flush()
}

// LoadImages imports OCI image tarballs into every node.
func (l *Lab) LoadImages(tars ...string) error {
	for _, n := range l.state.Nodes {
		for _, t := range tars {
			if err := importImage(n, t); err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			l.step("imported %s into %s", t, n.Name)
		}
	}
	return nil
}

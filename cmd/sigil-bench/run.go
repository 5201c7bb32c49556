package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sigil-net/sigil/internal/bench"
)

// report is what every benchmark returns.
type report interface {
	WriteText(io.Writer) error
	Markdown(command string) string
}

// runBenchmark runs one benchmark: Ctrl-C, SIGTERM or SIGHUP cancel it
// (its cleanup still runs to the end; later signals are swallowed so it is
// not cut short), the report is printed, and with markdown set it replaces
// the section named section of that file.
func runBenchmark(name, section, title string, args []string, markdown string, run func(context.Context) (report, error)) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	go func() {
		for s := range sig {
			fmt.Fprintf(os.Stderr, "sigil-bench: %v: stopping and cleaning up\n", s)
			cancel()
		}
	}()

	rep, err := run(ctx)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return errors.New("interrupted; everything it created was removed")
		}
		return err
	}
	if err := rep.WriteText(os.Stdout); err != nil {
		return err
	}
	if markdown != "" {
		cmd := strings.TrimSpace("sigil-bench " + name + " " + strings.Join(args, " "))
		if err := bench.WriteSection(markdown, section, rep.Markdown(cmd)); err != nil {
			return fmt.Errorf("--markdown: %w", err)
		}
		fmt.Fprintf(os.Stderr, "wrote the %s section of %s\n", title, markdown)
	}
	return nil
}

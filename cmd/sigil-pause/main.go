// Command sigil-pause is a static pause container: it holds a pod sandbox's
// namespaces, reaps the zombies re-parented to it (it is PID 1 when the pod
// shares its PID namespace) and exits on SIGINT or SIGTERM. It stands in for
// registry.k8s.io/pause.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("sigil-pause")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "sigil-pause: warning: not PID 1")
	}
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "sigil-pause: shutting down, got signal %v\n", s)
		os.Exit(0)
	}
}

// reap collects every exited child.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

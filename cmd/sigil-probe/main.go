// Command sigil-probe is Sigil's test workload and agent-pod helper, a
// static binary in the spirit of Kubernetes' agnhost:
//
//	sigil-probe serve --tcp 80,81 --udp 80,81     # echo servers
//	sigil-probe connect 10.0.0.5:80 --protocol tcp --timeout 2s
//	sigil-probe matrix --timeout 1s tcp/10.0.0.5:80 udp/10.0.0.6:81 ...
//	sigil-probe agent-health --socket /var/run/sigil/sigil.sock [--live]
//	sigil-probe install-cni --binary ... --bin-dir ... --conf-dir ... [--exclusive]
//	sigil-probe uninstall-cni --conf-dir ... --conf-name ...
//
// serve answers every TCP connection with "<hostname> <remote address>\n"
// (then echoes what it reads) and every UDP datagram with the same line.
// connect prints one line, CONNECTED <reply>, or TIMEOUT, REFUSED or
// ERROR <message>, and exits 0 only when connected; a UDP probe counts as
// connected when a reply comes back.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		err = serve(args)
	case "matrix":
		err = matrix(args)
	case "connect":
		err = connect(args)
	case "agent-health":
		err = agentHealth(args)
	case "install-cni":
		err = installCNI(args)
	case "uninstall-cni":
		err = uninstallCNI(args)
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	var ec exitCode
	if errors.As(err, &ec) {
		os.Exit(int(ec))
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "sigil-probe:", err)
		}
		os.Exit(1)
	}
}

// exitCode ends the program with a status and no message.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  sigil-probe serve [--tcp PORTS] [--udp PORTS]
  sigil-probe connect HOST:PORT [--protocol tcp|udp] [--timeout DURATION]
  sigil-probe matrix [--timeout DURATION] tcp/HOST:PORT|udp/HOST:PORT...
  sigil-probe agent-health [--socket PATH] [--live]
  sigil-probe install-cni --binary PATH --bin-dir DIR --conf-dir DIR [--conf-name NAME] [--exclusive]
  sigil-probe uninstall-cni --conf-dir DIR [--conf-name NAME]
`)
}

package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func ports(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("port %q: want 1-65535", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	tcp := fs.String("tcp", "80", "comma-separated TCP ports to serve")
	udp := fs.String("udp", "", "comma-separated UDP ports to serve")
	addr := fs.String("address", "", "address to listen on (default: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tps, err := ports(*tcp)
	if err != nil {
		return fmt.Errorf("--tcp: %w", err)
	}
	ups, err := ports(*udp)
	if err != nil {
		return fmt.Errorf("--udp: %w", err)
	}
	if len(tps)+len(ups) == 0 {
		return errors.New("nothing to serve: give --tcp or --udp")
	}
	host, _ := os.Hostname()
	errc := make(chan error, len(tps)+len(ups))
	for _, p := range tps {
		ln, err := net.Listen("tcp", net.JoinHostPort(*addr, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		fmt.Printf("serving tcp %s\n", ln.Addr())
		go func() { errc <- serveTCP(ln, host) }()
	}
	for _, p := range ups {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(*addr, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		fmt.Printf("serving udp %s\n", pc.LocalAddr())
		go func() { errc <- serveUDP(pc, host) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}

func serveTCP(ln net.Listener, host string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "%s %s\n", host, c.RemoteAddr())
			c.SetDeadline(time.Now().Add(30 * time.Second))
			io.Copy(c, c)
		}()
	}
}

func serveUDP(pc net.PacketConn, host string) error {
	buf := make([]byte, 64<<10)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", host, from)), from)
	}
}

func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	proto := fs.String("protocol", "tcp", "tcp or udp")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	// Accept flags after the address, too.
	var target string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		target, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if target == "" && fs.NArg() > 0 {
		target = fs.Arg(0)
	}
	if target == "" {
		return errors.New("connect: want HOST:PORT")
	}
	if *proto != "tcp" && *proto != "udp" {
		return fmt.Errorf("--protocol %q: want tcp or udp", *proto)
	}
	line, ok := probe(*proto, target, *timeout)
	fmt.Println(line)
	if !ok {
		return exitCode(1)
	}
	return nil
}

// matrix probes many targets at once, each written PROTO/HOST:PORT, and
// prints "<target> <outcome line>" per target in the order given. It exits 0
// whatever the outcomes (they are the answer), so that one exec into a pod
// measures a whole row of a connectivity matrix.
func matrix(args []string) error {
	fs := flag.NewFlagSet("matrix", flag.ContinueOnError)
	timeout := fs.Duration("timeout", time.Second, "give up on each target after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets := fs.Args()
	if len(targets) == 0 {
		return errors.New("matrix: want PROTO/HOST:PORT targets, e.g. tcp/198.18.128.5:80 udp/198.18.129.7:81")
	}
	type job struct{ proto, addr string }
	jobs := make([]job, len(targets))
	for i, t := range targets {
		proto, addr, ok := strings.Cut(t, "/")
		if !ok || (proto != "tcp" && proto != "udp") {
			return fmt.Errorf("matrix: target %q: want tcp/HOST:PORT or udp/HOST:PORT", t)
		}
		jobs[i] = job{proto, addr}
	}
	lines := make([]string, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, _ := probe(j.proto, j.addr, *timeout)
			lines[i] = targets[i] + " " + line
		}()
	}
	wg.Wait()
	fmt.Println(strings.Join(lines, "\n"))
	return nil
}

// probe connects to target and returns the outcome line.
func probe(proto, target string, timeout time.Duration) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, proto, target)
	if err != nil {
		return outcome(err), false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("probe\n")); err != nil {
			return outcome(err), false
		}
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && reply == "" {
		if proto == "tcp" {
			// Connected; the server said nothing (or hung up).
			return "CONNECTED", true
		}
		return outcome(err), false
	}
	return "CONNECTED " + strings.TrimSpace(reply), true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func outcome(err error) string {
	switch {
	case isTimeout(err):
		return "TIMEOUT"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "REFUSED"
	default:
		return "ERROR " + err.Error()
	}
}

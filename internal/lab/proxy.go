package lab

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
)

// RunProxy listens on listen in the calling process's network namespace and
// forwards every connection to target, dialled from inside network namespace
// ns. It writes the address it listens on to addrFile (when set) and serves
// until ctx ends. `sigil lab up` runs it as a detached process so that
// kubectl in the root namespace reaches the lab's API server without any
// change to the root namespace's interfaces or routes.
func RunProxy(ctx context.Context, ns, listen, target, addrFile string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	if addrFile != "" {
		if err := os.WriteFile(addrFile+".tmp", []byte(ln.Addr().String()), 0o600); err != nil {
			return err
		}
		if err := os.Rename(addrFile+".tmp", addrFile); err != nil {
			return err
		}
	}
	log.Info("proxying", "listen", ln.Addr().String(), "netns", ns, "target", target)
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			up, err := dialInNS(ns, "tcp", target)
			if err != nil {
				log.Warn("dial", "target", target, "err", err)
				return
			}
			defer up.Close()
			pipe(c, up)
		}()
	}
}

// pipe copies both ways until both directions end.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		io.Copy(b, a)
		if tc, ok := b.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	io.Copy(a, b)
	if tc, ok := a.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	<-done
}

package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestProbeTCPAndUDP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveTCP(ln, "h1")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go serveUDP(pc, "h1")

	if line, ok := probe("tcp", ln.Addr().String(), 2*time.Second); !ok || !strings.HasPrefix(line, "CONNECTED h1 127.0.0.1:") {
		t.Errorf("tcp: %q %v", line, ok)
	}
	if line, ok := probe("udp", pc.LocalAddr().String(), 2*time.Second); !ok || !strings.HasPrefix(line, "CONNECTED h1 127.0.0.1:") {
		t.Errorf("udp: %q %v", line, ok)
	}
	// A closed port: refused.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l2.Addr().String()
	l2.Close()
	if line, ok := probe("tcp", addr, 2*time.Second); ok || line != "REFUSED" {
		t.Errorf("closed tcp: %q %v", line, ok)
	}
	// UDP to a port nobody serves: no reply.
	if line, ok := probe("udp", addr, 300*time.Millisecond); ok {
		t.Errorf("closed udp: %q %v", line, ok)
	}
}

func TestInstallCNI(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "sigil-cni")
	os.WriteFile(bin, []byte("binary"), 0o644)
	binDir, confDir := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	os.MkdirAll(confDir, 0o755)
	os.WriteFile(filepath.Join(confDir, "10-other.conflist"), []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(confDir, "05-sigil.conflist"), []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(confDir, "README"), []byte("x"), 0o644)
	if err := installCNI([]string{"--binary", bin, "--bin-dir", binDir, "--conf-dir", confDir, "--exclusive"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(binDir, "sigil-cni")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed binary: %v %v", fi, err)
	}
	for _, f := range []string{"10-other.conflist.sigil_bak", "05-sigil.conflist", "README"} {
		if _, err := os.Stat(filepath.Join(confDir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if err := uninstallCNI([]string{"--conf-dir", confDir}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(confDir, "05-sigil.conflist")); !os.IsNotExist(err) {
		t.Errorf("conflist still there: %v", err)
	}
	if err := uninstallCNI([]string{"--conf-dir", confDir}); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}

func TestAgentHealth(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ready := make(chan bool, 1)
	ready <- false
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := <-ready
			ready <- r
			status := "503 Service Unavailable"
			if r {
				status = "200 OK"
			}
			buf := make([]byte, 4096)
			c.Read(buf)
			c.Write([]byte("HTTP/1.1 " + status + "\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"))
			c.Close()
		}
	}()
	if err := agentHealth([]string{"--socket", sock}); err == nil {
		t.Error("not ready: succeeded")
	}
	if err := agentHealth([]string{"--socket", sock, "--live"}); err != nil {
		t.Errorf("live: %v", err)
	}
	<-ready
	ready <- true
	if err := agentHealth([]string{"--socket", sock}); err != nil {
		t.Errorf("ready: %v", err)
	}
	if err := agentHealth([]string{"--socket", sock + ".none", "--live"}); err == nil {
		t.Error("no agent: succeeded")
	}
}

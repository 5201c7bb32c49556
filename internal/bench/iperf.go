package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sigil-net/sigil/internal/testnet"
)

// Iperf3Result is what one iperf3 TCP test measured.
type Iperf3Result struct {
	BitsPerSecond float64 // received, as the server counted it
	Retransmits   int
}

// RunIperf3 runs one iperf3 TCP test of d (whole seconds, at least one) from
// client to an iperf3 server it starts on ip:port in server. The server is a
// one-off (-1) and is killed by PID if still there when RunIperf3 returns.
func RunIperf3(ctx context.Context, server, client *testnet.NS, ip netip.Addr, port uint16, d time.Duration) (Iperf3Result, error) {
	secs := max(1, int(math.Ceil(d.Seconds())))
	p := strconv.Itoa(int(port))
	srv := exec.Command("nsenter", "--net="+server.Path, "--",
		"iperf3", "-s", "-1", "-B", ip.String(), "-p", p, "--forceflush")
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := srv.StdoutPipe()
	if err != nil {
		return Iperf3Result{}, err
	}
	var srvErr bytes.Buffer
	srv.Stderr = &srvErr
	if err := srv.Start(); err != nil {
		return Iperf3Result{}, fmt.Errorf("start iperf3 server: %w", err)
	}
	done := make(chan struct{})
	defer func() {
		// nsenter execs iperf3 in place, so this PID is the server's.
		srv.Process.Kill()
		<-done
	}()

	// Wait until it listens; its output is drained to the end meanwhile.
	listening := make(chan struct{})
	var srvOut strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			srvOut.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "listening") {
				signalled = true
				close(listening)
			}
		}
		io.Copy(io.Discard, stdout)
		srv.Wait()
	}()
	select {
	case <-listening:
	case <-done:
		return Iperf3Result{}, fmt.Errorf("iperf3 server exited: %s", strings.TrimSpace(srvOut.String()+srvErr.String()))
	case <-time.After(10 * time.Second):
		return Iperf3Result{}, errors.New("iperf3 server did not start listening within 10s")
	case <-ctx.Done():
		return Iperf3Result{}, ctx.Err()
	}

	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	cl := exec.CommandContext(cctx, "nsenter", "--net="+client.Path, "--",
		"iperf3", "-c", ip.String(), "-p", p, "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "3000")
	cl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cl.Output()
	if ctx.Err() != nil {
		return Iperf3Result{}, ctx.Err()
	}
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		if err != nil {
			return Iperf3Result{}, fmt.Errorf("iperf3 client: %w: %s", err, bytes.TrimSpace(out))
		}
		return Iperf3Result{}, fmt.Errorf("iperf3 client output: %w", jerr)
	}
	if res.Error != "" {
		return Iperf3Result{}, fmt.Errorf("iperf3 client: %s", res.Error)
	}
	if err != nil {
		return Iperf3Result{}, fmt.Errorf("iperf3 client: %w", err)
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		return Iperf3Result{}, errors.New("iperf3 reported no received data")
	}
	return Iperf3Result{BitsPerSecond: res.End.SumReceived.BitsPerSecond, Retransmits: res.End.SumSent.Retransmits}, nil
}

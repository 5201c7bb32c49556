package cni_test

// ADD latency benchmark: sigil-cni (veth + agent: IPAM, maps, TCX attach,
// endpoint state) against the standard ptp + host-local plugins doing the
// same veth work, in one run, both driven through libcni from the node
// netns. Run with:
//
//	SIGIL_BENCH=1 go test ./cni -run TestBenchCNI -count=1 -v
//
// (SIGIL_BENCH_OUT=FILE writes the markdown table there.) The peer plugins
// are built with `go build` from the containernetworking/plugins module in
// the module cache (fetched through the Go module proxy if missing).

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/sigil-net/sigil/internal/testnet"
)

const pluginsModule = "github.com/containernetworking/plugins@v1.9.1"

func buildPeerPlugins(t *testing.T, out string) {
	t.Helper()
	dl, err := exec.Command("go", "mod", "download", "-json", pluginsModule).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", pluginsModule, err)
	}
	var dir string
	for _, l := range strings.Split(string(dl), "\n") {
		if strings.Contains(l, `"Dir":`) {
			dir = strings.Trim(strings.TrimSpace(strings.SplitN(l, ":", 2)[1]), `",`)
		}
	}
	if dir == "" {
		t.Fatalf("no module dir for %s", pluginsModule)
	}
	cmd := exec.Command("go", "build", "-o", out+"/", "./plugins/main/ptp", "./plugins/ipam/host-local")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ptp/host-local: %v\n%s", err, b)
	}
}

type lat []time.Duration

func (l lat) pct(p float64) time.Duration {
	s := append(lat(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p+0.999999) - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }

func TestBenchCNI(t *testing.T) {
	if os.Getenv("SIGIL_BENCH") == "" {
		t.Skip("set SIGIL_BENCH=1 to run the CNI ADD latency benchmark")
	}
	requireE2E(t)
	const seqN, parN = 100, 20

	// sigil node
	sn := newNode(t, "198.18.42.0/24")
	sigilList := sn.conflist("1.0.0")
	snTC := newNode(t, "198.18.48.0/24", "--attach-mode", "tc")
	sigilTCList := snTC.conflist("1.0.0")

	// ptp node: same machinery, its own netns and bin dir.
	pn := &node{t: t, ns: testnet.NewNS(t, "sgn")}
	peerBin := t.TempDir()
	buildPeerPlugins(t, peerBin)
	pn.ns.MustRun(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	pn.cfg = libcni.NewCNIConfigWithCacheDir([]string{peerBin}, t.TempDir(), nil)
	ptpList, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"ptpbench","plugins":[
	  {"type":"ptp","mtu":1500,"ipam":{"type":"host-local","ranges":[[{"subnet":"198.18.46.0/24"}]],
	   "routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}}]}`, filepath.Join(t.TempDir(), "host-local"))))
	if err != nil {
		t.Fatal(err)
	}

	pods := make([]*pod, seqN)
	for i := range pods {
		pods[i] = sn.newPod(t, "")
	}
	type result struct{ seq, par lat }
	run := func(n *node, list *libcni.NetworkConfigList, tag string) result {
		var r result
		for i := 0; i < seqN; i++ {
			pods[i].rt.ContainerID = fmt.Sprintf("%s-seq-%03d-%s", tag, i, randHex(4))
			start := time.Now()
			if err := n.add(list, pods[i]); err != nil {
				t.Fatalf("%s ADD: %v", tag, err)
			}
			r.seq = append(r.seq, time.Since(start))
		}
		for i := 0; i < seqN; i++ {
			if err := n.del(list, pods[i]); err != nil {
				t.Fatalf("%s DEL: %v", tag, err)
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		errs := make([]error, parN)
		for i := 0; i < parN; i++ {
			pods[i].rt.ContainerID = fmt.Sprintf("%s-par-%03d-%s", tag, i, randHex(4))
		}
		for i := 0; i < parN; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				start := time.Now()
				errs[i] = n.add(list, pods[i])
				mu.Lock()
				r.par = append(r.par, time.Since(start))
				mu.Unlock()
			}(i)
		}
		wg.Wait()
		for i := 0; i < parN; i++ {
			if errs[i] != nil {
				t.Fatalf("%s parallel ADD: %v", tag, errs[i])
			}
			if err := n.del(list, pods[i]); err != nil {
				t.Fatalf("%s DEL: %v", tag, err)
			}
		}
		return r
	}
	// Warm both paths (page cache, binaries) before measuring.
	pods[0].rt.ContainerID = "warm-" + randHex(4)
	for _, x := range []struct {
		n *node
		l *libcni.NetworkConfigList
	}{{sn, sigilList}, {snTC, sigilTCList}, {pn, ptpList}} {
		if err := x.n.add(x.l, pods[0]); err != nil {
			t.Fatal(err)
		}
		x.n.del(x.l, pods[0])
	}
	ptp := run(pn, ptpList, "ptp")
	sig := run(sn, sigilList, "sigil")
	sigTC := run(snTC, sigilTCList, "sigiltc")
	sn.assertClean(t)
	snTC.assertClean(t)
	if os.Getenv("SIGIL_BENCH_AGENT_LOG") != "" {
		os.WriteFile(os.Getenv("SIGIL_BENCH_AGENT_LOG"), []byte(sn.log()), 0o644)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "| plugin | sequential p50 (ms) | sequential p99 (ms) | parallel(%d) p50 (ms) | parallel(%d) p99 (ms) |\n", parN, parN)
	b.WriteString("|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| ptp + host-local | %s | %s | %s | %s |\n", ms(ptp.seq.pct(.5)), ms(ptp.seq.pct(.99)), ms(ptp.par.pct(.5)), ms(ptp.par.pct(.99)))
	fmt.Fprintf(&b, "| sigil-cni, TCX attach (default) | %s | %s | %s | %s |\n", ms(sig.seq.pct(.5)), ms(sig.seq.pct(.99)), ms(sig.par.pct(.5)), ms(sig.par.pct(.99)))
	fmt.Fprintf(&b, "| sigil-cni, tc attach (--attach-mode=tc) | %s | %s | %s | %s |\n", ms(sigTC.seq.pct(.5)), ms(sigTC.seq.pct(.99)), ms(sigTC.par.pct(.5)), ms(sigTC.par.pct(.99)))
	fmt.Fprintf(&b, "\nsigil/ptp p99 ratio (target <= 1.5x): TCX sequential %.2fx, parallel %.2fx; tc sequential %.2fx, parallel %.2fx\n",
		float64(sig.seq.pct(.99))/float64(ptp.seq.pct(.99)), float64(sig.par.pct(.99))/float64(ptp.par.pct(.99)),
		float64(sigTC.seq.pct(.99))/float64(ptp.seq.pct(.99)), float64(sigTC.par.pct(.99))/float64(ptp.par.pct(.99)))
	fmt.Println(b.String())
	if out := os.Getenv("SIGIL_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

package cni_test

// End-to-end tests: the built sigil-agent runs (via nsenter) in a node
// network namespace with its own bpffs pin dir, state dir and socket; the
// built sigil-cni is driven through libcni, from a thread inside the node
// namespace, against pod namespaces the test creates. Addresses come from
// 198.18.0.0/15 only. Needs root; skipped otherwise.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/sigil-net/sigil/agent/client"
	"github.com/sigil-net/sigil/cni"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/internal/testnet"
)

var binDir string // built sigil-cni and sigil-agent

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 || os.Getenv("SIGIL_E2E") == "0" {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "sigil-cni-e2e-bin-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", dir+"/", "../cmd/sigil-cni", "../cmd/sigil-agent")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building binaries:", err)
			return 1
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

func requireE2E(t *testing.T) {
	t.Helper()
	testnet.RequireRoot(t)
	if binDir == "" {
		t.Skip("binaries not built (SIGIL_E2E=0)")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("needs nsenter")
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// node is a simulated Kubernetes node: a netns, an agent process and the
// CNI directories.
type node struct {
	t        *testing.T
	ns       *testnet.NS
	podCIDR  string
	pinDir   string
	stateDir string
	socket   string
	confDir  string
	cniBin   string
	cacheDir string
	agent    *exec.Cmd
	extra    []string // extra agent flags
	agentLog *os.File
	cfg      *libcni.CNIConfig
}

func newNode(t *testing.T, podCIDR string, extra ...string) *node {
	t.Helper()
	return newK8sNode(t, podCIDR, nil, extra...)
}

func (n *node) startAgent(env []string) {
	n.t.Helper()
	if n.agentLog == nil {
		f, err := os.CreateTemp(n.t.TempDir(), "agent-*.log")
		if err != nil {
			n.t.Fatal(err)
		}
		n.agentLog = f
	}
	cmd := exec.Command("nsenter", "--net="+n.ns.Path, "--", filepath.Join(binDir, "sigil-agent"),
		"--pin-dir", n.pinDir, "--state-dir", n.stateDir, "--socket", n.socket,
		"--pod-cidr", n.podCIDR, "--cni-conf-dir", n.confDir, "--cni-bin-dir", n.cniBin,
		"--cni-binary", filepath.Join(binDir, "sigil-cni"), "--log-level", "info")
	cmd.Args = append(cmd.Args, n.extra...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = n.agentLog, n.agentLog
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.agent = cmd
	if env != nil { // a faulty agent may die before it is ready
		n.waitReady(false)
		return
	}
	n.waitReady(true)
}

func (n *node) waitReady(must bool) {
	n.t.Helper()
	c := client.New(n.socket, time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Health(context.Background()); err == nil {
			if _, err := os.Stat(filepath.Join(n.confDir, "05-sigil.conflist")); err == nil {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if must {
		n.t.Fatalf("agent not ready; log:\n%s", n.log())
	}
}

func (n *node) log() string {
	data, _ := os.ReadFile(n.agentLog.Name())
	return string(data)
}

// stopAgent kills the agent by PID (SIGKILL: like a crash; endpoints and
// the datapath stay).
func (n *node) stopAgent() {
	if n.agent != nil && n.agent.Process != nil {
		n.agent.Process.Signal(syscall.SIGKILL)
		n.agent.Wait()
		n.agent = nil
	}
}

func (n *node) client() *client.Client { return client.New(n.socket, 10*time.Second) }

// conflist returns the agent-written conflist with cniVersion replaced.
func (n *node) conflist(version string) *libcni.NetworkConfigList {
	n.t.Helper()
	data, err := os.ReadFile(filepath.Join(n.confDir, "05-sigil.conflist"))
	if err != nil {
		n.t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(data, &m)
	m["cniVersion"] = version
	data, _ = json.Marshal(m)
	l, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		n.t.Fatal(err)
	}
	return l
}

// in runs fn on a thread inside the node netns: sigil-cni is forked from
// it and so runs in the node namespace.
func (n *node) in(fn func() error) error { return n.ns.Do(fn) }

type pod struct {
	ns  *testnet.NS
	rt  *libcni.RuntimeConf
	ip  netip.Addr
	res types.Result
}

func (n *node) newPod(t *testing.T, cid string) *pod {
	p := &pod{ns: testnet.NewNS(t, "sgp")}
	p.rt = &libcni.RuntimeConf{ContainerID: cid, NetNS: p.ns.Path, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", cid}, {"K8S_POD_UID", "uid-" + cid}}}
	return p
}

func (n *node) add(list *libcni.NetworkConfigList, p *pod) error {
	var res types.Result
	err := n.in(func() error {
		var err error
		res, err = n.cfg.AddNetworkList(context.Background(), list, p.rt)
		return err
	})
	if err != nil {
		return err
	}
	p.res = res
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return err
	}
	if len(cur.IPs) != 1 {
		return fmt.Errorf("result has %d IPs", len(cur.IPs))
	}
	p.ip, _ = netip.AddrFromSlice(cur.IPs[0].Address.IP.To4())
	return nil
}

func (n *node) del(list *libcni.NetworkConfigList, p *pod) error {
	return n.in(func() error { return n.cfg.DelNetworkList(context.Background(), list, p.rt) })
}

func (n *node) check(list *libcni.NetworkConfigList, p *pod) error {
	return n.in(func() error { return n.cfg.CheckNetworkList(context.Background(), list, p.rt) })
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// assertClean checks that nothing of any attachment is left: no IPAM
// allocation, endpoint, state file, host veth, map entry or pinned link.
func (n *node) assertClean(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c := n.client()
	if a, err := c.ListIPAM(ctx); err != nil || len(a) != 0 {
		t.Errorf("leaked IPAM allocations: %d %v", len(a), err)
	}
	if e, err := c.ListEndpoints(ctx); err != nil || len(e) != 0 {
		t.Errorf("leaked endpoints: %d %v", len(e), err)
	}
	if f, _ := os.ReadDir(filepath.Join(n.stateDir, "endpoints")); len(f) != 0 {
		t.Errorf("leaked endpoint state files: %d", len(f))
	}
	var veths []string
	n.in(func() error {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, cni.HostIfPrefix) {
				veths = append(veths, l.Attrs().Name)
			}
		}
		return nil
	})
	if len(veths) != 0 {
		t.Errorf("leaked host veths: %v", veths)
	}
	maps, err := datapath.OpenPinned(n.pinDir)
	if err != nil {
		t.Errorf("open pinned maps: %v", err)
		return
	}
	defer maps.Close()
	if eps, _ := maps.Endpoints.List(); len(eps) != 0 {
		t.Errorf("leaked endpoints map entries: %d", len(eps))
	}
	if ipc, _ := maps.IPCache.List(); len(ipc) != 0 {
		t.Errorf("leaked ipcache entries: %d", len(ipc))
	}
	if ids, _ := maps.Policy.Endpoints(); len(ids) != 0 {
		t.Errorf("leaked policy maps: %v", ids)
	}
	if l, _ := os.ReadDir(filepath.Join(n.pinDir, "links")); len(l) != 0 {
		t.Errorf("leaked pinned links: %d", len(l))
	}
}

func reach(t *testing.T, from, to *pod) {
	t.Helper()
	addr := netip.AddrPortFrom(to.ip, 7777).String()
	if err := from.ns.TCP(addr, 3*time.Second); err != nil {
		t.Fatalf("%s -> %s: %v", from.ip, addr, err)
	}
}

func TestAddCheckDelEveryVersion(t *testing.T) {
	requireE2E(t)
	n := newNode(t, "198.18.10.0/24")
	// The agent installed the binary and a valid conflist.
	if _, err := os.Stat(filepath.Join(n.cniBin, "sigil-cni")); err != nil {
		t.Fatal(err)
	}
	for _, v := range cni.SupportedVersions {
		t.Run(v, func(t *testing.T) {
			list := n.conflist(v)
			a, b := n.newPod(t, "a-"+randHex(8)), n.newPod(t, "b-"+randHex(8))
			for _, p := range []*pod{a, b} {
				if err := n.add(list, p); err != nil {
					t.Fatalf("ADD: %v\nagent log:\n%s", err, n.log())
				}
				if p.res.Version() != v {
					t.Fatalf("result version %s, want %s", p.res.Version(), v)
				}
				// The result JSON decodes as that version's type.
				var buf strings.Builder
				if err := p.res.PrintTo(&buf); err != nil {
					t.Fatal(err)
				}
				if _, err := libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"` + v + `","name":"x","type":"x"}`)); err != nil {
					t.Fatal(err)
				}
				validateResult(t, v, buf.String())
			}
			if a.ip == b.ip {
				t.Fatalf("same IP %s", a.ip)
			}
			if v != "0.3.1" {
				for _, p := range []*pod{a, b} {
					if err := n.check(list, p); err != nil {
						t.Fatalf("CHECK: %v", err)
					}
				}
			}
			b.ns.Serve(t, netip.AddrPortFrom(b.ip, 7777).String())
			a.ns.Serve(t, netip.AddrPortFrom(a.ip, 7777).String())
			reach(t, a, b)
			reach(t, b, a)
			if err := a.ns.Ping(b.ip.String()); err != nil {
				t.Fatalf("ping: %v", err)
			}
			// The endpoint is registered with the pod's metadata.
			ep, err := n.client().GetEndpoint(context.Background(), a.rt.ContainerID, "eth0")
			if err != nil || ep.PodName != a.rt.ContainerID || ep.PodNamespace != "default" || ep.Identity < 256 {
				t.Fatalf("endpoint %+v %v", ep, err)
			}
			if v == "1.1.0" {
				if err := n.in(func() error { return n.cfg.GetStatusNetworkList(context.Background(), list) }); err != nil {
					t.Fatalf("STATUS: %v", err)
				}
			}
			for _, p := range []*pod{a, b} {
				if err := n.del(list, p); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if err := n.del(list, p); err != nil {
					t.Fatalf("second DEL: %v", err)
				}
			}
			n.assertClean(t)
		})
	}
}

func validateResult(t *testing.T, version, js string) {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal([]byte(js), &raw); err != nil {
		t.Fatalf("result is not JSON: %v", err)
	}
	if raw["cniVersion"] != version {
		t.Fatalf("cniVersion %v", raw["cniVersion"])
	}
	ifs, _ := raw["interfaces"].([]any)
	ips, _ := raw["ips"].([]any)
	if len(ifs) != 2 || len(ips) != 1 {
		t.Fatalf("result %s", js)
	}
	ip0 := ips[0].(map[string]any)
	if version == "0.3.1" || version == "0.4.0" {
		if ip0["version"] != "4" {
			t.Fatalf("%s result lacks ips[].version: %s", version, js)
		}
	} else if _, ok := ip0["version"]; ok {
		t.Fatalf("%s result must not carry ips[].version: %s", version, js)
	}
	if idx, ok := ip0["interface"].(float64); !ok || idx != 1 {
		t.Fatalf("ips[0].interface %v", ip0["interface"])
	}
	if sb, _ := ifs[1].(map[string]any)["sandbox"].(string); sb == "" {
		t.Fatalf("container interface lacks sandbox: %s", js)
	}
}

func TestParallelAddsAndChurn(t *testing.T) {
	requireE2E(t)
	n := newNode(t, "198.18.20.0/23")
	list := n.conflist("1.1.0")
	const N = 50
	pods := make([]*pod, N)
	for i := range pods {
		pods[i] = n.newPod(t, fmt.Sprintf("par-%02d-%s", i, randHex(4)))
	}
	var wg sync.WaitGroup
	errs := make([]error, N)
	for i := range pods {
		wg.Add(1)
		go func(i int) { defer wg.Done(); errs[i] = n.add(list, pods[i]) }(i)
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD %d: %v\n%s", i, err, n.log())
		}
		if seen[pods[i].ip] {
			t.Fatalf("duplicate IP %s", pods[i].ip)
		}
		seen[pods[i].ip] = true
	}
	for _, p := range pods {
		p.ns.Serve(t, netip.AddrPortFrom(p.ip, 7777).String())
	}
	for i, p := range pods {
		reach(t, pods[(i+1)%N], p)
	}
	// Retried ADD with the same container ID: same IP, still reachable.
	old := pods[3].ip
	if err := n.add(list, pods[3]); err != nil || pods[3].ip != old {
		t.Fatalf("retried ADD: %v, ip %s want %s", err, pods[3].ip, old)
	}
	if err := n.check(list, pods[3]); err != nil {
		t.Fatalf("CHECK after retried ADD: %v", err)
	}
	reach(t, pods[0], pods[3])
	for i := range pods {
		wg.Add(1)
		go func(i int) { defer wg.Done(); errs[i] = n.del(list, pods[i]) }(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	n.assertClean(t)

	// Churn: 500 ADD/DEL through 4 workers, each reusing one pod netns.
	churn := 500
	if testing.Short() {
		churn = 100
	}
	const workers = 4
	start := time.Now()
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < workers; w++ {
		p := n.newPod(t, "")
		wg.Add(1)
		go func(w int, p *pod) {
			defer wg.Done()
			for i := w; i < churn; i += workers {
				p.rt.ContainerID = fmt.Sprintf("churn-%03d-%s", i, randHex(4))
				err := n.add(list, p)
				if err == nil {
					err = n.del(list, p)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("churn %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
			}
		}(w, p)
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	t.Logf("%d ADD/DEL pairs in %s", churn, time.Since(start))
	n.assertClean(t)
}

func TestFaults(t *testing.T) {
	requireE2E(t)
	n := newNode(t, "198.18.30.0/29") // 5 allocatable addresses
	list := n.conflist("1.0.0")

	t.Run("bad config", func(t *testing.T) {
		bad, _ := libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"1.0.0","name":"sigil","plugins":[{"type":"sigil-cni","mtu":99999}]}`))
		p := n.newPod(t, "bad-"+randHex(4))
		err := n.add(bad, p)
		if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `"mtu"`) {
			t.Fatalf("want code 7 naming mtu, got %v", err)
		}
		bad, _ = libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"1.0.0","name":"sigil","plugins":[{"type":"sigil-cni","socket":"rel.sock"}]}`))
		if err := n.add(bad, p); cniCode(err) != types.ErrInvalidNetworkConfig {
			t.Fatalf("want code 7, got %v", err)
		}
	})

	t.Run("pool exhausted", func(t *testing.T) {
		var pods []*pod
		for i := 0; i < 5; i++ {
			p := n.newPod(t, fmt.Sprintf("ex-%d-%s", i, randHex(4)))
			if err := n.add(list, p); err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
		p := n.newPod(t, "ex-last-"+randHex(4))
		err := n.add(list, p)
		if cniCode(err) != cni.ErrPoolExhausted || !strings.Contains(err.Error(), "exhausted") {
			t.Fatalf("want pool exhausted (100), got %v", err)
		}
		// Rolled back: no veth for the failed pod on either side.
		if _, err := p.ns.Run("ip", "link", "show", "eth0"); err == nil {
			t.Fatal("failed ADD left eth0 in the pod")
		}
		for _, q := range pods {
			if err := n.del(list, q); err != nil {
				t.Fatal(err)
			}
		}
		n.del(list, p)
		n.assertClean(t)
	})

	t.Run("DEL with netns gone", func(t *testing.T) {
		p := n.newPod(t, "gone-"+randHex(4))
		if err := n.add(list, p); err != nil {
			t.Fatal(err)
		}
		if err := p.ns.Delete(); err != nil {
			t.Fatal(err)
		}
		if err := n.del(list, p); err != nil {
			t.Fatalf("DEL with netns gone: %v", err)
		}
		p.rt.NetNS = ""
		if err := n.del(list, p); err != nil {
			t.Fatalf("DEL without netns: %v", err)
		}
		n.assertClean(t)
	})

	t.Run("agent down", func(t *testing.T) {
		a := n.newPod(t, "up-"+randHex(4))
		if err := n.add(list, a); err != nil {
			t.Fatal(err)
		}
		a.ns.Serve(t, netip.AddrPortFrom(a.ip, 7777).String())
		n.stopAgent()
		p := n.newPod(t, "down-"+randHex(4))
		err := n.add(list, p)
		if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("want code 11 'unreachable', got %v", err)
		}
		t.Logf("agent down: %v", err)
		l11 := n.conflist("1.1.0")
		if err := n.in(func() error { return n.cfg.GetStatusNetworkList(context.Background(), l11) }); cniCode(err) != types.ErrPluginNotAvailable {
			t.Fatalf("STATUS with agent down: want code 50, got %v", err)
		}
		// Traffic keeps flowing while the agent is down (pinned maps and links).
		b := n.newPod(t, "b-"+randHex(4))
		n.startAgent(nil)
		if err := n.add(list, b); err != nil {
			t.Fatal(err)
		}
		n.stopAgent()
		reach(t, b, a)
		n.startAgent(nil)
		reach(t, b, a)
		if err := n.add(list, p); err != nil {
			t.Fatalf("ADD after the agent is back: %v", err)
		}
		if err := n.check(list, a); err != nil {
			t.Fatalf("CHECK of a pod created before the restart: %v", err)
		}
		for _, q := range []*pod{a, b, p} {
			if err := n.del(list, q); err != nil {
				t.Fatal(err)
			}
		}
		n.assertClean(t)
	})

	t.Run("agent killed between IPAM and maps", func(t *testing.T) {
		n.stopAgent()
		n.startAgent([]string{"SIGIL_AGENT_FAULT=crash-after-ipam"})
		p := n.newPod(t, "crash-"+randHex(4))
		err := n.add(list, p)
		if err == nil {
			t.Fatal("ADD succeeded although the agent died")
		}
		t.Logf("ADD with the agent dying: %v", err)
		n.agent.Wait()
		n.agent = nil
		n.startAgent(nil)
		// The restarted agent released the orphan address; the runtime's
		// DEL and a GC leave nothing either.
		if a, _ := n.client().ListIPAM(context.Background()); len(a) != 0 {
			t.Fatalf("orphan allocation after restart: %+v", a)
		}
		n.del(list, p)
		l11 := n.conflist("1.1.0")
		if err := n.in(func() error { return n.cfg.GCNetworkList(context.Background(), l11, &libcni.GCArgs{}) }); err != nil {
			t.Fatalf("GC: %v", err)
		}
		n.assertClean(t)
		if err := n.add(list, p); err != nil {
			t.Fatalf("ADD after recovery: %v", err)
		}
		n.del(list, p)
	})

	t.Run("GC", func(t *testing.T) {
		l11 := n.conflist("1.1.0")
		var pods []*pod
		for i := 0; i < 3; i++ {
			p := n.newPod(t, fmt.Sprintf("gc-%d-%s", i, randHex(4)))
			if err := n.add(l11, p); err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
		// Forget the libcni cache of pod 2 so only the plugin's GC can find it.
		os.RemoveAll(n.cacheDir)
		valid := []types.GCAttachment{{ContainerID: pods[0].rt.ContainerID, IfName: "eth0"}}
		if err := n.in(func() error {
			return n.cfg.GCNetworkList(context.Background(), l11, &libcni.GCArgs{ValidAttachments: valid})
		}); err != nil {
			t.Fatalf("GC: %v", err)
		}
		eps, _ := n.client().ListEndpoints(context.Background())
		if len(eps) != 1 || eps[0].ContainerID != pods[0].rt.ContainerID {
			t.Fatalf("after GC: %+v", eps)
		}
		n.del(l11, pods[0])
		n.assertClean(t)
	})
}

package k8s_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sigil-net/sigil/agent/k8s"
	"github.com/sigil-net/sigil/datapath"
	dt "github.com/sigil-net/sigil/datapath/datapathtest"
	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/internal/testnet"
)

// whoami serves TCP on ip:port in ns, answering with its own IP.
func whoami(t *testing.T, ns *testnet.NS, ip netip.Addr, port int) {
	t.Helper()
	var l net.Listener
	if err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", ip, port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(ip.String() + "\n"))
				io.Copy(io.Discard, c)
			}()
		}
	}()
}

func who(ns *testnet.NS, addr string) (string, error) {
	c, err := ns.DialTCP(addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 32)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

func lbState(t *testing.T, lb *datapath.LB) map[string]string {
	t.Helper()
	list, err := lb.List()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range list {
		var bs []string
		for _, b := range e.Backends {
			bs = append(bs, fmt.Sprintf("%s:%d", b.Address, b.Port))
		}
		slices.Sort(bs)
		v := strings.Join(bs, ",")
		if e.Affinity > 0 {
			v += fmt.Sprintf(" aff=%s", e.Affinity)
		}
		out[e.Frontend.String()] = v
	}
	return out
}

// waitLB waits until the LB maps hold exactly want (frontend -> sorted
// backends[ aff=...]), restricted to the frontends on vip.
func waitLB(t *testing.T, lb *datapath.LB, vip string, want map[string]string) {
	t.Helper()
	var got map[string]string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		got = map[string]string{}
		for f, v := range lbState(t, lb) {
			if strings.HasPrefix(f, vip+":") {
				got[f] = v
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("LB maps for %s:\n got  %v\n want %v", vip, got, want)
}

func endpoint(ip string, ready, terminating *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ready, Terminating: terminating}}
}

// TestServiceController runs the service controller against a real API
// server (with the agent's generated RBAC) and a real socket load-balancer
// attached to the cgroup root: Services and EndpointSlices become
// frontends and ready backends, and a pod reaches a backend through the
// ClusterIP. ClusterIPs come from envtest's service range (10.0.0.0/24);
// no packet is ever sent to them: connect() is translated to the backend.
func TestServiceController(t *testing.T) {
	dt.RequireBPF(t)
	testnet.RequireRoot(t)
	_, admin := k8stest.Start(t)
	cfg := agentRBACConfig(t, admin)
	ns := k8stest.Namespace(t, admin)
	ctx := context.Background()

	node, err := testnet.CreateNode(netip.MustParseAddr("198.18.233.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Delete() })
	var pods []*testnet.Pod
	for i := 0; i < 4; i++ {
		p, err := node.AddPod(netip.MustParseAddr(fmt.Sprintf("198.18.233.%d", 10+i)), testnet.Unique("svc"))
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		if i > 0 {
			whoami(t, p.NS, p.IP, 8080)
		}
	}
	client, b1, b2, b3 := pods[0], pods[1], pods[2], pods[3]

	pinDir := dt.PinDir(t)
	lb, err := datapath.LoadLB(datapath.LBConfig{PinDir: pinDir, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Detach(); lb.Close() })
	if err := lb.Attach(); err != nil {
		t.Fatal(err)
	}
	startCtrl := func() (context.CancelFunc, *k8s.ServiceController) {
		sc, err := k8s.NewServiceController(k8s.ServiceConfig{RestConfig: cfg, LB: lb, Logger: logger()})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		sc.Start(cctx)
		stop := func() { cancel(); sc.Wait() }
		t.Cleanup(stop)
		return stop, sc
	}
	stop, _ := startCtrl()

	const vip = "10.0.0.233"
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: vip, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("web")},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353)},
			{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP},
		}}}
	if err := admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	// A headless service installs nothing.
	if err := admin.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "headless"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	// The slice's "http" port is 8080 (the pod's port named "web"): the
	// frontend port 80 resolves through the service port's name.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-abc",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Port: ptr.To[int32](5353), Protocol: ptr.To(corev1.ProtocolUDP)},
			{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
		Endpoints: []discoveryv1.Endpoint{
			endpoint(b1.IP.String(), ptr.To(true), nil),
			endpoint(b2.IP.String(), nil, nil), // nil ready means ready
			endpoint(b3.IP.String(), ptr.To(false), nil),
		},
	}
	if err := admin.Create(ctx, slice); err != nil {
		t.Fatal(err)
	}
	b := func(p *testnet.Pod, port int) string { return fmt.Sprintf("%s:%d", p.IP, port) }
	waitLB(t, lb, vip, map[string]string{
		vip + ":53/UDP": b(b1, 5353) + "," + b(b2, 5353),
		vip + ":80/TCP": b(b1, 8080) + "," + b(b2, 8080),
	})

	// Traffic: the client pod connects to the ClusterIP and reaches a ready
	// backend, never the not-ready one.
	seen := map[string]int{}
	for i := 0; i < 20; i++ {
		w, err := who(client.NS, vip+":80")
		if err != nil {
			t.Fatalf("connect %d to %s:80: %v", i, vip, err)
		}
		seen[w]++
	}
	if seen[b3.IP.String()] > 0 || seen[b1.IP.String()]+seen[b2.IP.String()] != 20 {
		t.Errorf("connections went to %v, want b1 and b2 only", seen)
	}

	// An EndpointSlice update: b3 becomes ready, b1 terminates.
	slice.Endpoints = []discoveryv1.Endpoint{
		endpoint(b1.IP.String(), ptr.To(false), ptr.To(true)),
		endpoint(b2.IP.String(), ptr.To(true), nil),
		endpoint(b3.IP.String(), ptr.To(true), nil),
	}
	if err := admin.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	waitLB(t, lb, vip, map[string]string{
		vip + ":53/UDP": b(b2, 5353) + "," + b(b3, 5353),
		vip + ":80/TCP": b(b2, 8080) + "," + b(b3, 8080),
	})
	if w, err := who(client.NS, vip+":80"); err != nil || (w != b2.IP.String() && w != b3.IP.String()) {
		t.Errorf("after the update: reached %q, %v", w, err)
	}

	// Session affinity.
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
	if err := admin.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitLB(t, lb, vip, map[string]string{
		vip + ":53/UDP": b(b2, 5353) + "," + b(b3, 5353) + " aff=1m0s",
		vip + ":80/TCP": b(b2, 8080) + "," + b(b3, 8080) + " aff=1m0s",
	})

	// Restart: a stale frontend left in the maps is deleted, the service's
	// frontends are kept.
	stop()
	stale := datapath.Frontend{Address: netip.MustParseAddr(vip), Port: 81, Proto: datapath.ProtoTCP}
	if err := lb.UpsertService(datapath.Service{Frontend: stale, Backends: []datapath.Backend{{Address: b1.IP, Port: 8080}}}); err != nil {
		t.Fatal(err)
	}
	_, sc := startCtrl()
	select {
	case <-sc.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("service controller did not sync after the restart")
	}
	waitLB(t, lb, vip, map[string]string{
		vip + ":53/UDP": b(b2, 5353) + "," + b(b3, 5353) + " aff=1m0s",
		vip + ":80/TCP": b(b2, 8080) + "," + b(b3, 8080) + " aff=1m0s",
	})

	// Deleting the Service removes its frontends.
	if err := admin.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitLB(t, lb, vip, map[string]string{})
	if _, err := who(client.NS, vip+":80"); err == nil {
		t.Errorf("deleted service still answers")
	}
}

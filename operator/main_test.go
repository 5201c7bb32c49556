package operator_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sigil-net/sigil/internal/k8stest"
	"github.com/sigil-net/sigil/operator"
)

func TestMain(m *testing.M) { os.Exit(k8stest.Run(m)) }

// startOperator runs the operator's reconcilers against cfg until the test
// ends, without leader election unless leaseNS is set.
func startOperator(t *testing.T, cfg *rest.Config, o operator.Options, leaseNS string) ctrl.Manager {
	t.Helper()
	mgr, _ := runOperator(t, cfg, o, leaseNS)
	return mgr
}

// startOperatorStoppable is startOperator without leader election, with
// a function that stops it before the test ends.
func startOperatorStoppable(t *testing.T, cfg *rest.Config, o operator.Options) func() {
	t.Helper()
	_, stop := runOperator(t, cfg, o, "")
	return stop
}

// runOperator starts an operator and returns its manager and an
// idempotent stop function (also run at the test's end).
func runOperator(t *testing.T, cfg *rest.Config, o operator.Options, leaseNS string) (ctrl.Manager, func()) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        operator.NewScheme(),
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:        "0",
		LeaderElection:                leaseNS != "",
		LeaderElectionID:              "sigil-operator",
		LeaderElectionNamespace:       leaseNS,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 new(4 * time.Second),
		RenewDeadline:                 new(3 * time.Second),
		RetryPeriod:                   new(500 * time.Millisecond),
		Controller:                    config.Controller{SkipNameValidation: new(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := operator.Setup(mgr, o); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("operator: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("operator did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return mgr, stop
}

// newPod returns a pod on node (none if "") with one named port.
func newPod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{Name: "c", Image: "pause",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9090}}}},
		},
	}
}

// setPodIP gives a pod an address and the Running phase, as a kubelet would.
func setPodIP(ctx context.Context, c client.Client, p *corev1.Pod, ip netip.Addr) error {
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip.String()
	p.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	return c.Status().Update(ctx, p)
}

// podAddr returns the i-th test pod address in 198.18.0.0/16.
func podAddr(base, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(base + i/250), byte(1 + i%250)})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	k8stest.Eventually(t, 60*time.Second, func() (bool, error) {
		ok, err := cond()
		if err == nil && !ok {
			err = fmt.Errorf("%s: not yet", what)
		}
		return ok, err
	})
}

// hasEvent reports whether an events.k8s.io Event with reason is about the
// object kind/name in namespace ns ("" for every namespace).
func hasEvent(ctx context.Context, c client.Client, ns, kind, name, reason string) (bool, error) {
	var evs eventsv1.EventList
	if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		return false, err
	}
	for _, ev := range evs.Items {
		if ev.Regarding.Kind == kind && ev.Regarding.Name == name && ev.Reason == reason {
			return true, nil
		}
	}
	return false, nil
}

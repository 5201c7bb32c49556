package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// startControlPlane starts etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler in the control-plane namespace and waits for the API
// server to be ready.
func (s *State) startControlPlane(ctx context.Context, c Config, p pki) error {
	cp := c.cpNS()
	bin := func(n string) string { return filepath.Join(c.KubeBin, n) }
	cpDir := filepath.Join(s.Dir, "control-plane")
	if err := os.MkdirAll(cpDir, 0o700); err != nil {
		return err
	}
	etcd, err := s.startProcess("etcd", cp, []string{bin("etcd"),
		"--name=" + c.Name, "--data-dir=" + filepath.Join(cpDir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=" + c.Name + "=http://127.0.0.1:2380",
		// A lab: losing the last writes on a power cut is fine, and fsync
		// on a shared disk is the slowest part of every API write.
		"--unsafe-no-fsync", "--log-level=warn",
	}, nil)
	if err != nil {
		return err
	}
	apiserver, err := s.startProcess("kube-apiserver", cp, []string{bin("kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--advertise-address=" + APIServerAddr.String(), "--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--tls-cert-file=" + p.path("apiserver.crt"), "--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("ca.crt"),
		"--token-auth-file=" + p.path("tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=" + ServiceCIDR.String(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--allow-privileged=true",
		// The API server reaches kubelets (logs, exec, port-forward) at
		// their node addresses on the lab underlay.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--enable-admission-plugins=NodeRestriction",
		"--profiling=false", "--v=1",
	}, nil)
	if err != nil {
		return err
	}
	if err := s.waitAPIServer(ctx, p, apiserver, etcd); err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", APIServerPort)
	for _, comp := range []struct{ name, user string }{
		{"kube-controller-manager", "system:kube-controller-manager"},
		{"kube-scheduler", "system:kube-scheduler"},
	} {
		if err := p.writeKubeconfig(filepath.Join(cpDir, comp.name+".kubeconfig"), server, comp.user); err != nil {
			return err
		}
	}
	if _, err := s.startProcess("kube-controller-manager", cp, []string{bin("kube-controller-manager"),
		"--kubeconfig=" + filepath.Join(cpDir, "kube-controller-manager.kubeconfig"),
		"--authentication-kubeconfig=" + filepath.Join(cpDir, "kube-controller-manager.kubeconfig"),
		"--authorization-kubeconfig=" + filepath.Join(cpDir, "kube-controller-manager.kubeconfig"),
		// Sigil's operator owns pod CIDRs: no node IPAM here.
		"--allocate-node-cidrs=false", "--controllers=*,-nodeipam,-csrsigning",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.path("sa.key"),
		"--root-ca-file=" + p.path("ca.crt"),
		"--service-cluster-ip-range=" + ServiceCIDR.String(),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--v=1",
	}, nil); err != nil {
		return err
	}
	if _, err := s.startProcess("kube-scheduler", cp, []string{bin("kube-scheduler"),
		"--kubeconfig=" + filepath.Join(cpDir, "kube-scheduler.kubeconfig"),
		"--authentication-kubeconfig=" + filepath.Join(cpDir, "kube-scheduler.kubeconfig"),
		"--authorization-kubeconfig=" + filepath.Join(cpDir, "kube-scheduler.kubeconfig"),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--v=1",
	}, nil); err != nil {
		return err
	}
	return nil
}

// waitAPIServer polls /readyz from inside the control-plane namespace until
// it answers ok, failing early (with the log's tail) if a process died.
func (s *State) waitAPIServer(ctx context.Context, p pki, procs ...*Process) error {
	ca, err := os.ReadFile(p.path("ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cp := s.Name + "-cp"
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNS(cp, network, addr)
		},
	}}
	url := fmt.Sprintf("https://%s:%d/readyz", APIServerAddr, APIServerPort)
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		for _, pr := range procs {
			if !pr.alive() {
				return fmt.Errorf("%s exited; the end of %s:\n%s", pr.Name, pr.Log, logTail(pr.Log, 15))
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+p.tokens["admin"])
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz: %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after 2m: %v", last)
}

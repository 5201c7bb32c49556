package kubeproxy

import (
	"slices"
	"strings"
	"testing"
)

func TestFrontendOf(t *testing.T) {
	for _, c := range []struct{ line, want string }{
		{`-A KUBE-SERVICES -d 198.19.232.7/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABCDEF`, "198.19.232.7:80/tcp"},
		{`-A KUBE-SERVICES -d 198.19.232.7/32 -p udp -m comment --comment "ns/web:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-GHIJKL`, "198.19.232.7:53/udp"},
		{`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`, ""},
		{`-A KUBE-SERVICES -d 198.19.232.9/32 -p tcp -m comment --comment "ns/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`, ""},
	} {
		if got := frontendOf(c.line); got != c.want {
			t.Errorf("frontendOf(%q) = %q, want %q", c.line, got, c.want)
		}
	}
}

func TestArgsLeaveTheHostAlone(t *testing.T) {
	args := Config{Binary: "kube-proxy", NetNS: "/var/run/netns/x", Kubeconfig: "/k", NodeName: "n", ClusterCIDR: "198.18.0.0/16"}.Args()
	for _, want := range []string{"--proxy-mode=iptables", "--hostname-override=n", "--cluster-cidr=198.18.0.0/16",
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--iptables-localhost-nodeports=false", "--oom-score-adj=0", "--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256", "--iptables-min-sync-period=0s"} {
		if !slices.Contains(args, want) {
			t.Errorf("args lack %s: %s", want, strings.Join(args, " "))
		}
	}
}

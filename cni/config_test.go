package cni

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name, conf string
		code       uint
		msg        string
	}{
		{"not json", `{`, types.ErrDecodingFailure, "cannot parse"},
		{"no version", `{"name":"n","type":"sigil-cni"}`, types.ErrInvalidNetworkConfig, `"cniVersion" is missing`},
		{"no name", `{"cniVersion":"1.0.0","type":"sigil-cni"}`, types.ErrInvalidNetworkConfig, `"name" is missing`},
		{"bad mtu", `{"cniVersion":"1.0.0","name":"n","mtu":70000}`, types.ErrInvalidNetworkConfig, `"mtu" 70000`},
		{"relative socket", `{"cniVersion":"1.0.0","name":"n","socket":"x.sock"}`, types.ErrInvalidNetworkConfig, `"socket"`},
		{"bad timeout", `{"cniVersion":"1.0.0","name":"n","agentTimeout":"soon"}`, types.ErrInvalidNetworkConfig, `"agentTimeout"`},
		{"ipam", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, `"ipam" is not supported`},
		{"mtu type", `{"cniVersion":"1.0.0","name":"n","mtu":"big"}`, types.ErrDecodingFailure, "mtu"},
	}
	for _, c := range cases {
		_, err := ParseConfig([]byte(c.conf))
		e, ok := err.(*types.Error)
		if !ok || e.Code != c.code || !strings.Contains(e.Msg, c.msg) {
			t.Errorf("%s: got %#v, want code %d containing %q", c.name, err, c.code, c.msg)
		}
	}
	conf, err := ParseConfig([]byte(`{"cniVersion":"0.3.1","name":"n","type":"sigil-cni"}`))
	if err != nil || conf.MTU != 1500 || conf.Socket == "" || conf.Timeout() != DefaultAgentTimeout {
		t.Fatalf("defaults: %+v %v", conf, err)
	}
}

func TestArgsAndNames(t *testing.T) {
	a, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u;FOO=bar")
	if err != nil || a.K8S_POD_NAMESPACE != "ns" || a.K8S_POD_NAME != "p" || a.K8S_POD_UID != "u" {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := ParseArgs("garbage"); err == nil {
		t.Fatal("want error for malformed CNI_ARGS")
	}
	n := HostIfName("abc", "eth0")
	if len(n) != 14 || !strings.HasPrefix(n, "sgl") || n == HostIfName("abc", "eth1") {
		t.Fatalf("host if name %q", n)
	}
}

package charttest

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func typed[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	if u == nil {
		t.Fatalf("missing %T", *new(T))
	}
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return out
}

// definedFlags returns the flag names registered in a command's sources
// (flag.X("name", ...), flag.XVar(&v, "name", ...), fs.XVar(...)).
func definedFlags(t testing.TB, dir string) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`\b(?:flag|fs)\.(?:String|Int|Int64|Uint|Bool|Duration|Float64|Func|Var)(?:Var)?\(\s*(?:&[\w.]+,\s*)?"([a-z0-9-]+)"`)
	files, _ := filepath.Glob(filepath.Join(repoRoot(t), dir, "*.go"))
	flags := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			flags[string(m[1])] = true
		}
	}
	if len(flags) < 5 {
		t.Fatalf("found only %d flags in %s: the pattern no longer matches", len(flags), dir)
	}
	return flags
}

// checkArgs fails on an argument naming a flag the command does not define,
// and on a $(VAR) the container's environment does not define.
func checkArgs(t *testing.T, set string, c corev1.Container, flags map[string]bool) {
	t.Helper()
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	varRef := regexp.MustCompile(`\$\(([A-Z_]+)\)`)
	for _, a := range c.Args {
		if !strings.HasPrefix(a, "--") {
			t.Errorf("%s: %s: argument %q is not a --flag", set, c.Name, a)
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !flags[name] {
			t.Errorf("%s: %s: --%s is not a flag of the command", set, c.Name, name)
		}
		for _, m := range varRef.FindAllStringSubmatch(a, -1) {
			if !env[m[1]] {
				t.Errorf("%s: %s: %q refers to $(%s), which is not in its env", set, c.Name, a, m[1])
			}
		}
	}
}

func TestTemplate(t *testing.T) {
	agentFlags := definedFlags(t, "cmd/sigil-agent")
	operatorFlags := definedFlags(t, "cmd/sigil-operator")
	for set, args := range valueSets {
		t.Run(set, func(t *testing.T) {
			objs := render(t, args...)
			for _, o := range objs {
				if o.GetKind() == "CustomResourceDefinition" {
					continue
				}
				if o.GetLabels()["app.kubernetes.io/instance"] != "rel" {
					t.Errorf("%s %s lacks the release label", o.GetKind(), o.GetName())
				}
			}
			cm := typed[corev1.ConfigMap](t, find(objs, "ConfigMap", "sigil-config"))
			ds := typed[appsv1.DaemonSet](t, find(objs, "DaemonSet", "sigil-agent"))
			ps := ds.Spec.Template.Spec
			if !ps.HostNetwork {
				t.Error("agent: not on the host network")
			}
			if !slices.ContainsFunc(ps.Tolerations, func(tl corev1.Toleration) bool {
				return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
			}) {
				t.Errorf("agent: tolerations %v do not tolerate every taint", ps.Tolerations)
			}
			if len(ps.InitContainers) != 1 || ps.InitContainers[0].Name != "install-cni" {
				t.Errorf("agent: init containers %v, want install-cni", ps.InitContainers)
			}
			agent := ps.Containers[0]
			checkArgs(t, set, agent, agentFlags)
			if agent.ReadinessProbe == nil || agent.ReadinessProbe.Exec == nil ||
				!slices.Contains(agent.ReadinessProbe.Exec.Command, "agent-health") {
				t.Errorf("agent: readiness probe %+v", agent.ReadinessProbe)
			}
			sc := agent.SecurityContext
			if sc.Privileged == nil || !*sc.Privileged {
				for _, c := range []corev1.Capability{"NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"} {
					if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, c) {
						t.Errorf("agent: capability %s missing", c)
					}
				}
			}
			mounts := map[string]bool{}
			for _, m := range agent.VolumeMounts {
				mounts[m.MountPath] = true
			}
			for _, p := range []string{"/sys/fs/bpf", "/opt/cni/bin", "/etc/cni/net.d", "/var/run/sigil", "/var/lib/sigil"} {
				if !mounts[p] {
					t.Errorf("agent: no mount at %s", p)
				}
			}
			// Every ConfigMap key the agent reads exists.
			for _, e := range agent.Env {
				if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
					if _, ok := cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]; !ok {
						t.Errorf("agent: env %s reads missing key %q", e.Name, e.ValueFrom.ConfigMapKeyRef.Key)
					}
				}
			}
			if d := find(objs, "Deployment", "sigil-operator"); d != nil {
				dep := typed[appsv1.Deployment](t, d)
				checkArgs(t, set, dep.Spec.Template.Spec.Containers[0], operatorFlags)
				if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--leader-elect=true") {
					t.Error("operator: no leader election")
				}
			} else if set != "no-operator" {
				t.Error("no operator Deployment")
			}
			if set == "defaults" {
				dep := typed[appsv1.Deployment](t, find(objs, "Deployment", "sigil-operator"))
				if *dep.Spec.Replicas != 2 {
					t.Errorf("operator replicas %d, want 2", *dep.Spec.Replicas)
				}
				if find(objs, "PodDisruptionBudget", "sigil-operator") == nil {
					t.Error("no operator PodDisruptionBudget")
				}
				for _, svc := range []string{"sigil-agent-metrics", "sigil-operator-metrics"} {
					if find(objs, "Service", svc) == nil {
						t.Errorf("no Service %s", svc)
					}
				}
				want := map[string]string{"routing-mode": "tunnel", "mtu": "1500", "policy-enforcement": "default",
					"cluster-pool-cidr": "10.0.0.0/8", "cluster-pool-mask-size": "24", "flow-buffer": "4096",
					"metrics-address": ":9962", "masquerade": "true"}
				for k, v := range want {
					if cm.Data[k] != v {
						t.Errorf("ConfigMap %s=%q, want %q", k, cm.Data[k], v)
					}
				}
			}
			if set == "native" {
				env := map[string]string{}
				for _, e := range agent.Env {
					env[e.Name] = e.Value
				}
				if env["KUBERNETES_SERVICE_HOST"] != "192.0.2.10" || env["KUBERNETES_SERVICE_PORT"] != "443" {
					t.Errorf("k8sServiceHost: agent env %v", env)
				}
				for k, v := range map[string]string{"routing-mode": "native", "mtu": "9000", "masquerade": "false",
					"cluster-pool-cidr": "198.18.128.0/17", "cluster-pool-mask-size": "26"} {
					if cm.Data[k] != v {
						t.Errorf("ConfigMap %s=%q, want %q", k, cm.Data[k], v)
					}
				}
			}
			if set == "strict" {
				if agent.Lifecycle == nil || agent.Lifecycle.PreStop == nil {
					t.Error("cni.uninstall: no preStop hook")
				}
				if !slices.Contains(ps.InitContainers[0].Args, "--exclusive=false") {
					t.Errorf("cni.exclusive=false: init args %v", ps.InitContainers[0].Args)
				}
				if cm.Data["prefilter-devices"] != "eth0" || cm.Data["prefilter-cidrs"] != "203.0.113.0/24" {
					t.Errorf("prefilter: %v", cm.Data)
				}
			}
			if set == "minimal" {
				if agent.Image != "registry.example/sigil-agent:v9" || agent.ImagePullPolicy != corev1.PullNever {
					t.Errorf("agent image %s %s", agent.Image, agent.ImagePullPolicy)
				}
				if cm.Data["metrics-address"] != "" || find(objs, "Service", "sigil-agent-metrics") != nil {
					t.Error("metrics.agent.enabled=false: metrics still on")
				}
			}
		})
	}
}

// TestRBACRules: the chart's roles carry exactly controller-gen's rules.
func TestRBACRules(t *testing.T) {
	objs := render(t)
	for _, c := range []struct{ file, kind, source, chart string }{
		{"agent/rbac/role.yaml", "ClusterRole", "sigil-agent", "sigil-agent"},
		{"operator/rbac/role.yaml", "ClusterRole", "sigil-operator", "sigil-operator"},
		{"operator/rbac/role.yaml", "Role", "sigil-operator", "sigil-operator"},
	} {
		want := generatedRules(t, c.file, c.kind)
		u := find(objs, c.kind, c.chart)
		var got []rbacv1.PolicyRule
		if c.kind == "Role" {
			got = typed[rbacv1.Role](t, u).Rules
		} else {
			got = typed[rbacv1.ClusterRole](t, u).Rules
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s %s rules differ from %s:\n got %v\nwant %v", c.kind, c.chart, c.file, got, want)
		}
	}
}

func generatedRules(t *testing.T, file, kind string) []rbacv1.PolicyRule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), file))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var r rbacv1.ClusterRole // a Role has the same shape
		if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if r.Kind == kind {
			return r.Rules
		}
	}
	t.Fatalf("no %s in %s", kind, file)
	return nil
}

// TestRBACCopiesFresh: files/rbac holds controller-gen's current output.
func TestRBACCopiesFresh(t *testing.T) {
	root := repoRoot(t)
	for src, dst := range map[string]string{
		"agent/rbac/role.yaml":    "charts/sigil/files/rbac/agent-role.yaml",
		"operator/rbac/role.yaml": "charts/sigil/files/rbac/operator-role.yaml",
	} {
		a, err := os.ReadFile(filepath.Join(root, src))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(root, dst))
		if err != nil {
			t.Fatal(err)
		}
		if string(a) != string(b) {
			t.Errorf("%s is stale: run go generate ./internal/charttest (copies %s)", dst, src)
		}
	}
}

// TestSchemaRejects: bad values fail with a message naming the value.
func TestSchemaRejects(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "routingMode=vxlan"}, "/routingMode"},
		{[]string{"--set", "mtu=500"}, "/mtu"},
		{[]string{"--set", "policyEnforcementMode=sometimes"}, "/policyEnforcementMode"},
		{[]string{"--set", "ipam.operator.clusterPoolIPv4PodCIDRList[0]=10.0.0.0"}, "/ipam/operator/clusterPoolIPv4PodCIDRList/0"},
		{[]string{"--set", "ipam.operator.clusterPoolIPv4MaskSize=33"}, "/ipam/operator/clusterPoolIPv4MaskSize"},
		{[]string{"--set", "image.pullPolicy=Sometimes"}, "/image/pullPolicy"},
		{[]string{"--set", "flows.bufferSize=0"}, "/flows/bufferSize"},
		{[]string{"--set", "prefilter.enabled=true"}, "/prefilter/devices"},
		{[]string{"--set", "cni.exclusive=yes"}, "/cni/exclusive"},
		{[]string{"--set", "tunnel.port=70000"}, "/tunnel/port"},
		{[]string{"--set", "operator.leaderElection.leaseDuration=soon"}, "/operator/leaderElection/leaseDuration"},
		{[]string{"--set", "k8sServiceHost=https://192.0.2.10:6443"}, "/k8sServiceHost"},
		{[]string{"--set", "routingMod=native"}, "routingMod"},
	} {
		out, err := helm(t, nil, append([]string{"template", "rel", chartDir(t)}, c.args...)...)
		if err == nil {
			t.Errorf("%v: accepted", c.args)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%v: message does not name %s:\n%s", c.args, c.want, out)
		}
	}
}

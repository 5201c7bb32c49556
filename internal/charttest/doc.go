// Package charttest tests the Helm chart in charts/sigil: helm lint and
// helm template over several value sets, the values schema's refusals, the
// agent's and operator's command lines against the flags they define, the
// RBAC rules against controller-gen's output, and one install, upgrade and
// uninstall on a real API server (internal/k8stest).
//
// The chart's RBAC rules come from controller-gen's files, copied into the
// chart (helm cannot read files outside it); `go generate` refreshes them
// and TestRBACCopiesFresh fails when they are stale.
//
// helm is the pinned build from hack/k8s-binaries.sh (next to
// kube-apiserver); without it the tests are skipped unless CI is set.
package charttest

//go:generate cp ../../agent/rbac/role.yaml ../../charts/sigil/files/rbac/agent-role.yaml
//go:generate cp ../../operator/rbac/role.yaml ../../charts/sigil/files/rbac/operator-role.yaml

// Package podexec runs commands in Kubernetes pods through the API server
// (the pods/exec subresource), as `kubectl exec` does: over WebSocket, with a
// fallback to SPDY for API servers that cannot upgrade to it.
package podexec

import (
	"context"
	"io"
	"net/http"
	"net/url"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
)

// NewExecutor tries WebSocket (RemoteCommand v5) and falls back to SPDY on
// API servers that cannot upgrade to it.
func NewExecutor(cfg *rest.Config, u *url.URL) (remotecommand.Executor, error) {
	spdy, err := remotecommand.NewSPDYExecutor(cfg, http.MethodPost, u)
	if err != nil {
		return nil, err
	}
	// WebSocket upgrades are GET requests (RFC 6455 4.1).
	ws, err := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, u.String())
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

// Run runs command in a container of a pod and streams its output. A
// non-zero exit is an error that satisfies errors.As with
// k8s.io/client-go/util/exec.ExitError.
func Run(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, namespace, pod, container string,
	command []string, stdout, stderr io.Writer) error {
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: container,
		Command:   command,
		Stdout:    stdout != nil,
		Stderr:    stderr != nil,
	}, scheme.ParameterCodec)
	exec, err := NewExecutor(cfg, req.URL())
	if err != nil {
		return err
	}
	return exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: stdout, Stderr: stderr})
}

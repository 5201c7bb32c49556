package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/agent/metrics"
)

// Server serves the local API on a unix socket.
type Server struct {
	m   *Manager
	log *slog.Logger
	srv *http.Server
	ln  net.Listener
	obs observeState // observability routes (observe.go)
	// k8sHealth reports the control plane (SetK8sHealth); nil: off.
	k8sHealth atomic.Pointer[func() apitypes.K8sHealth]
	// services lists the socket load-balancer's services (SetServices).
	services atomic.Pointer[ServiceSource]
}

// SetK8sHealth makes /v1/healthz report the Kubernetes control plane.
func (s *Server) SetK8sHealth(fn func() apitypes.K8sHealth) { s.k8sHealth.Store(&fn) }

// Listen creates the socket (directory 0700, socket 0600, root only),
// replacing a stale socket left by a previous run.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is already serving %s", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// NewServer returns the API server for m.
func NewServer(m *Manager, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{m: m, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/healthz", s.health)
	mux.HandleFunc("PUT /v1/endpoints/{cid}/{ifname}", s.putEndpoint)
	mux.HandleFunc("GET /v1/endpoints/{cid}/{ifname}", s.getEndpoint)
	mux.HandleFunc("DELETE /v1/endpoints/{cid}/{ifname}", s.deleteEndpoint)
	mux.HandleFunc("GET /v1/endpoints", s.listEndpoints)
	mux.HandleFunc("POST /v1/gc", s.gc)
	mux.HandleFunc("GET /v1/ipam", s.listIPAM)
	mux.HandleFunc("GET /v1/services", s.listServices)
	s.routeObservability(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, apitypes.CodeNotFound, fmt.Sprintf("no route %s %s (API %s)", r.Method, r.URL.Path, apitypes.Version))
	})
	s.srv = &http.Server{Handler: metrics.Instrument(mux), ReadHeaderTimeout: 10 * time.Second}
	return s
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.ln = ln
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server gracefully.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apitypes.ErrorResponse{Error: apitypes.ErrorBody{Code: code, Message: msg}})
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		writeErr(w, http.StatusInternalServerError, apitypes.CodeInternal, err.Error())
		return
	}
	status := http.StatusInternalServerError
	switch e.Code {
	case apitypes.CodeInvalid:
		status = http.StatusBadRequest
	case apitypes.CodeNotFound:
		status = http.StatusNotFound
	case apitypes.CodeNotReady:
		status = http.StatusServiceUnavailable
	case apitypes.CodePoolExhaust:
		status = http.StatusInsufficientStorage
	case apitypes.CodeConflict:
		status = http.StatusConflict
	}
	writeErr(w, status, e.Code, e.Msg)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	h := apitypes.Health{APIVersion: apitypes.Version, PodCIDR: s.m.Pool().Prefix.String()}
	if !s.m.Ready() {
		h.Status, h.Message = "not-ready", "restoring endpoints"
		writeJSON(w, http.StatusServiceUnavailable, apitypes.ErrorResponse{Error: apitypes.ErrorBody{
			Code: apitypes.CodeNotReady, Message: "agent is starting: restoring endpoints"}})
		return
	}
	h.Status, h.Ready, h.Endpoints = "ok", true, len(s.m.List())
	if fn := s.k8sHealth.Load(); fn != nil {
		kh := (*fn)()
		h.K8s = &kh
		if !kh.Connected {
			h.Message = "Kubernetes API server unreachable: enforcing the last known policy state"
		}
	}
	writeJSON(w, http.StatusOK, h)
}

func (s *Server) putEndpoint(w http.ResponseWriter, r *http.Request) {
	var req apitypes.EndpointRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, apitypes.CodeInvalid, "decoding endpoint request: "+err.Error())
		return
	}
	if req.ContainerID != r.PathValue("cid") || req.IfName != r.PathValue("ifname") {
		writeErr(w, http.StatusBadRequest, apitypes.CodeInvalid, "containerID/ifName in the body do not match the path")
		return
	}
	start := time.Now()
	ep, err := s.m.Create(req)
	if err != nil {
		s.log.Warn("create endpoint failed", "container", req.ContainerID, "if", req.IfName, "err", err)
		s.fail(w, err)
		return
	}
	s.log.Debug("create endpoint", "container", req.ContainerID, "took", time.Since(start))
	writeJSON(w, http.StatusOK, ep)
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request) {
	ep, ok := s.m.Get(r.PathValue("cid"), r.PathValue("ifname"))
	if !ok {
		writeErr(w, http.StatusNotFound, apitypes.CodeNotFound,
			fmt.Sprintf("no endpoint for container %s interface %s", r.PathValue("cid"), r.PathValue("ifname")))
		return
	}
	writeJSON(w, http.StatusOK, ep)
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request) {
	res, err := s.m.Delete(r.PathValue("cid"), r.PathValue("ifname"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) listEndpoints(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, apitypes.EndpointList{Endpoints: s.m.List()})
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req apitypes.GCRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, apitypes.CodeInvalid, "decoding gc request: "+err.Error())
		return
	}
	res, err := s.m.GC(req.ValidAttachments)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) listIPAM(w http.ResponseWriter, r *http.Request) {
	all, err := s.m.Allocations()
	if err != nil {
		s.fail(w, err)
		return
	}
	out := apitypes.IPAMList{Allocations: []apitypes.IPAMAllocation{}}
	for _, a := range all {
		out.Allocations = append(out.Allocations, apitypes.IPAMAllocation{
			ContainerID: a.Owner.ContainerID, IfName: a.Owner.IfName, IP: a.IP, Pool: a.Pool})
	}
	writeJSON(w, http.StatusOK, out)
}

package agent

import (
	"net/http"
	"time"

	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
)

// ServiceSource lists the services installed in the socket load-balancer
// (datapath.LB).
type ServiceSource interface {
	List() ([]datapath.LBEntry, error)
}

// SetServices makes GET /v1/services list src's services; until it is
// called the route answers unavailable (services are kube-proxy's).
func (s *Server) SetServices(src ServiceSource) { s.services.Store(&src) }

// ServiceList converts installed LB entries to the API's view of them.
func ServiceList(entries []datapath.LBEntry) apitypes.ServiceList {
	out := apitypes.ServiceList{Services: make([]apitypes.Service, 0, len(entries))}
	for _, e := range entries {
		svc := apitypes.Service{
			Frontend: apitypes.ServiceFrontend{Address: e.Frontend.Address, Port: e.Frontend.Port,
				Protocol: datapath.ProtoName(e.Frontend.Proto)},
			Backends:               make([]apitypes.ServiceBackend, 0, len(e.Backends)),
			AffinityTimeoutSeconds: uint32(e.Affinity / time.Second),
		}
		for _, b := range e.Backends {
			svc.Backends = append(svc.Backends, apitypes.ServiceBackend{Address: b.Address, Port: b.Port})
		}
		out.Services = append(out.Services, svc)
	}
	return out
}

func (s *Server) listServices(w http.ResponseWriter, _ *http.Request) {
	src := s.services.Load()
	if src == nil {
		writeErr(w, http.StatusServiceUnavailable, apitypes.CodeUnavailable,
			"service load-balancing is off on this node (agent started with --kube-proxy-replacement=false, "+
				"without Kubernetes or without the BPF datapath): kube-proxy handles services")
		return
	}
	entries, err := (*src).List()
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ServiceList(entries))
}

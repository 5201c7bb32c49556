package k8s

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/datapath"
)

// DefaultAffinityTimeout is the ClientIP session affinity timeout when the
// Service does not set one (the API's default, 3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// ServiceLB is what the service controller programs: datapath.LB.
type ServiceLB interface {
	UpsertService(datapath.Service) error
	DeleteService(datapath.Frontend) error
	List() ([]datapath.LBEntry, error)
}

// ServiceConfig configures a ServiceController.
type ServiceConfig struct {
	// Cache, if set, is the informer cache shared with the agent's other
	// controllers (Controller.Cache); its owner starts it. Else one is made
	// from RestConfig and started by the service controller.
	Cache      crcache.Cache
	RestConfig *rest.Config
	// LB receives the services.
	LB     ServiceLB
	Logger *slog.Logger
}

// ServiceController keeps the socket load-balancer's maps equal to the
// cluster's Services and their ready EndpointSlice endpoints: informers on
// Services and EndpointSlices enqueue the Service's name, one reconciler
// goroutine computes its frontends and writes the differences.
type ServiceController struct {
	cfg      ServiceConfig
	log      *slog.Logger
	cache    crcache.Cache
	ownCache bool
	// indexed: the cache has indexServiceName on EndpointSlices.
	indexed bool
	queue   workqueue.TypedRateLimitingInterface[string]
	synced  chan struct{} // closed after the initial sync

	// Reconciler goroutine only.
	installed map[datapath.Frontend]datapath.Service
	claims    map[datapath.Frontend]string   // frontend -> namespace/name of its Service
	owned     map[string][]datapath.Frontend // namespace/name -> frontends
	warned    map[string]bool                // SCTP ports logged once

	done chan struct{}
}

// Cache returns the controller's informer cache, to share its informers
// (ServiceConfig.Cache).
func (c *Controller) Cache() crcache.Cache { return c.cache }

// NewServiceController builds the service controller; Start runs it.
func NewServiceController(cfg ServiceConfig) (*ServiceController, error) {
	if cfg.LB == nil || (cfg.Cache == nil && cfg.RestConfig == nil) {
		return nil, errors.New("k8s: service controller needs LB and Cache or RestConfig")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &ServiceController{cfg: cfg, log: cfg.Logger.With("component", "k8s-services"), cache: cfg.Cache,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "sigil-agent-services"}),
		synced: make(chan struct{}), done: make(chan struct{}),
		installed: map[datapath.Frontend]datapath.Service{}, claims: map[datapath.Frontend]string{},
		owned: map[string][]datapath.Frontend{}, warned: map[string]bool{}}
	if s.cache == nil {
		var err error
		s.cache, err = crcache.New(cfg.RestConfig, crcache.Options{Scheme: Scheme(),
			DefaultTransform: crcache.TransformStripManagedFields()})
		if err != nil {
			return nil, fmt.Errorf("k8s: service cache: %w", err)
		}
		s.ownCache = true
	}
	return s, nil
}

// Start runs the informers and the reconciler until ctx ends; it returns
// at once. Wait waits for the reconciler to stop.
func (s *ServiceController) Start(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.queue.ShutDown()
	}()
	go s.run(ctx)
}

// Wait blocks until the reconciler has stopped after ctx ended.
func (s *ServiceController) Wait() { <-s.done }

// Synced is closed once the maps hold the initial state.
func (s *ServiceController) Synced() <-chan struct{} { return s.synced }

func (s *ServiceController) run(ctx context.Context) {
	defer close(s.done)
	var infs []crcache.Informer
	backoff := time.Second
	for {
		var err error
		if infs, err = s.setup(ctx); err == nil {
			break
		}
		s.log.Warn("service informers", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	if s.ownCache {
		go func() {
			if err := s.cache.Start(ctx); err != nil {
				s.log.Error("service informer cache stopped", "err", err)
			}
		}()
	}
	if !toolscache.WaitForCacheSync(ctx.Done(), infs[0].HasSynced, infs[1].HasSynced) {
		return
	}
	for {
		err := s.fullSync(ctx)
		if err == nil {
			break
		}
		s.log.Warn("initial service sync failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	close(s.synced)
	for s.processNext(ctx) {
	}
}

// indexServiceName indexes EndpointSlices by the Service they belong to
// (their kubernetes.io/service-name label): a reconcile then reads its
// Service's slices without scanning every slice of the namespace, which
// made the initial sync of N Services cost N² at 10,000.
const indexServiceName = "sigil.serviceName"

func (s *ServiceController) setup(ctx context.Context) ([]crcache.Informer, error) {
	if !s.indexed {
		err := s.cache.IndexField(ctx, &discoveryv1.EndpointSlice{}, indexServiceName, func(o client.Object) []string {
			if name := o.GetLabels()[discoveryv1.LabelServiceName]; name != "" {
				return []string{name}
			}
			return nil
		})
		if err != nil {
			// A shared cache that already runs may refuse a new index:
			// the label selector still works, only slower.
			s.log.Info("endpointslice index unavailable; listing by label", "err", err)
		} else {
			s.indexed = true
		}
	}
	svcInf, err := s.cache.GetInformer(ctx, &corev1.Service{}, crcache.BlockUntilSynced(false))
	if err != nil {
		return nil, fmt.Errorf("informer for services: %w", err)
	}
	epsInf, err := s.cache.GetInformer(ctx, &discoveryv1.EndpointSlice{}, crcache.BlockUntilSynced(false))
	if err != nil {
		return nil, fmt.Errorf("informer for endpointslices: %w", err)
	}
	svcKey := func(o any) {
		if k, err := toolscache.DeletionHandlingMetaNamespaceKeyFunc(o); err == nil {
			s.queue.Add(k)
		}
	}
	sliceKey := func(o any) {
		if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = d.Obj
		}
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
				s.queue.Add(es.Namespace + "/" + name)
			}
		}
	}
	for _, h := range []struct {
		inf crcache.Informer
		fn  func(any)
	}{{svcInf, svcKey}, {epsInf, sliceKey}} {
		fn := h.fn
		if _, err := h.inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    fn,
			UpdateFunc: func(_, o any) { fn(o) },
			DeleteFunc: fn,
		}); err != nil {
			return nil, err
		}
	}
	return []crcache.Informer{svcInf, epsInf}, nil
}

func (s *ServiceController) processNext(ctx context.Context) bool {
	k, shutdown := s.queue.Get()
	if shutdown {
		return false
	}
	defer s.queue.Done(k)
	if err := s.reconcile(ctx, k); err != nil {
		s.log.Warn("service reconcile failed; retrying", "service", k, "err", err)
		s.queue.AddRateLimited(k)
		return true
	}
	s.queue.Forget(k)
	return true
}

// fullSync adopts what the maps hold (a previous run's services keep
// working meanwhile), installs every Service's frontends and deletes the
// frontends no Service has any more.
func (s *ServiceController) fullSync(ctx context.Context) error {
	start := time.Now()
	entries, err := s.cfg.LB.List()
	if err != nil {
		return err
	}
	for _, e := range entries {
		s.installed[e.Frontend] = e.Service
	}
	var svcs corev1.ServiceList
	if err := s.cache.List(ctx, &svcs); err != nil {
		return err
	}
	var errs []error
	for i := range svcs.Items {
		errs = append(errs, s.reconcile(ctx, svcs.Items[i].Namespace+"/"+svcs.Items[i].Name))
	}
	stale := 0
	for f := range s.installed {
		if _, ok := s.claims[f]; !ok {
			if err := s.cfg.LB.DeleteService(f); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(s.installed, f)
			stale++
		}
	}
	s.log.Info("initial service sync done", "services", len(svcs.Items), "frontends", len(s.installed),
		"staleDeleted", stale, "took", time.Since(start).String())
	return errors.Join(errs...)
}

// reconcile brings one Service's frontends (namespace/name) up to date.
func (s *ServiceController) reconcile(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	var want []datapath.Service
	var svc corev1.Service
	err := s.cache.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &svc)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	default:
		var eps discoveryv1.EndpointSliceList
		var match client.ListOption = client.MatchingLabels{discoveryv1.LabelServiceName: name}
		if s.indexed {
			match = client.MatchingFields{indexServiceName: name}
		}
		if err := s.cache.List(ctx, &eps, client.InNamespace(ns), match); err != nil {
			return err
		}
		var skipped []string
		want, skipped = DesiredServices(&svc, eps.Items)
		for _, p := range skipped {
			if wk := key + "/" + p; !s.warned[wk] {
				s.warned[wk] = true
				s.log.Info("service port not load-balanced: the socket load-balancer handles TCP and UDP only",
					"service", key, "port", p)
			}
		}
	}
	var errs []error
	keep := map[datapath.Frontend]bool{}
	var owned []datapath.Frontend
	for _, d := range want {
		f := d.Frontend
		if other, ok := s.claims[f]; ok && other != key {
			s.log.Warn("frontend claimed by two services; the latest wins", "frontend", f.String(), "service", key, "other", other)
		}
		s.claims[f] = key
		keep[f] = true
		owned = append(owned, f)
		if cur, ok := s.installed[f]; ok && sameService(cur, d) {
			continue
		}
		if err := s.cfg.LB.UpsertService(d); err != nil {
			errs = append(errs, err)
			continue
		}
		s.installed[f] = d
		s.log.Debug("service installed", "frontend", f.String(), "backends", len(d.Backends))
	}
	for _, f := range s.owned[key] {
		if keep[f] || s.claims[f] != key {
			continue
		}
		if err := s.cfg.LB.DeleteService(f); err != nil {
			errs = append(errs, err)
			owned = append(owned, f) // retried
			continue
		}
		delete(s.claims, f)
		delete(s.installed, f)
		s.log.Debug("service removed", "frontend", f.String())
	}
	if len(owned) == 0 {
		delete(s.owned, key)
	} else {
		s.owned[key] = owned
	}
	return errors.Join(errs...)
}

func sameService(a, b datapath.Service) bool {
	if a.Affinity != b.Affinity || len(a.Backends) != len(b.Backends) {
		return false
	}
	x, y := slices.Clone(a.Backends), slices.Clone(b.Backends)
	slices.SortFunc(x, cmpBackend)
	slices.SortFunc(y, cmpBackend)
	return slices.Equal(x, y)
}

func cmpBackend(a, b datapath.Backend) int {
	if c := a.Address.Compare(b.Address); c != 0 {
		return c
	}
	return cmp.Compare(a.Port, b.Port)
}

// DesiredServices computes the load-balancer services of a Service from
// its EndpointSlices: one per IPv4 ClusterIP and TCP or UDP port, with the
// ready (and not terminating) IPv4 endpoints as backends, their port taken
// from the slice port of the same name as the service port (which is how
// named targetPorts resolve). Services without a ClusterIP (headless,
// ExternalName) have none. skipped names the ports left out for their
// protocol (SCTP).
func DesiredServices(svc *corev1.Service, eps []discoveryv1.EndpointSlice) (out []datapath.Service, skipped []string) {
	switch svc.Spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	default:
		return nil, nil
	}
	var vips []netip.Addr
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if s == "" || s == corev1.ClusterIPNone {
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap().Is4() {
			vips = append(vips, a.Unmap())
		}
	}
	if len(vips) == 0 {
		return nil, nil
	}
	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	for _, sp := range svc.Spec.Ports {
		proto := sp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		var p uint8
		switch proto {
		case corev1.ProtocolTCP:
			p = datapath.ProtoTCP
		case corev1.ProtocolUDP:
			p = datapath.ProtoUDP
		default:
			skipped = append(skipped, fmt.Sprintf("%d/%s", sp.Port, proto))
			continue
		}
		backends := readyBackends(eps, sp.Name, proto)
		for _, vip := range vips {
			out = append(out, datapath.Service{
				Frontend: datapath.Frontend{Address: vip, Port: uint16(sp.Port), Proto: p},
				Backends: slices.Clone(backends), Affinity: affinity})
		}
	}
	return out, skipped
}

// readyBackends returns the ready endpoints of the slices at the port named
// portName, sorted and without duplicates (an endpoint may appear in two
// slices while the EndpointSlice controller moves it).
func readyBackends(eps []discoveryv1.EndpointSlice, portName string, proto corev1.Protocol) []datapath.Backend {
	var out []datapath.Backend
	for _, es := range eps {
		if es.DeletionTimestamp != nil || es.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		var port uint16
		for _, p := range es.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			pp := corev1.ProtocolTCP
			if p.Protocol != nil {
				pp = *p.Protocol
			}
			if name == portName && pp == proto && p.Port != nil && *p.Port > 0 && *p.Port < 65536 {
				port = uint16(*p.Port)
				break
			}
		}
		if port == 0 {
			continue
		}
		for _, ep := range es.Endpoints {
			// nil ready means ready (API); terminating endpoints drain:
			// their connections stay, new ones go elsewhere.
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Unmap().Is4() {
					out = append(out, datapath.Backend{Address: ip.Unmap(), Port: port})
				}
			}
		}
	}
	slices.SortFunc(out, cmpBackend)
	return slices.Compact(out)
}

// Package k8s is the node agent's control-plane side: informers on the
// node's own pods, namespaces, security identities, the three policy kinds,
// SigilEndpoints and SigilNodes feed one reconciler goroutine that resolves
// each local endpoint's identity and drives the policy enforcer
// (agent.Enforcer), which owns the policy engine and writes the BPF maps.
//
// Startup: the endpoint manager restores endpoints from its state dir and
// the pinned maps keep enforcing what the previous run applied; only once
// every informer has synced does the reconciler load the full state into
// the engine and call Enforcer.MarkSynced, which writes diffs (never clears
// first). While the API server is unreachable the maps keep the last known
// state and Health says so.
package k8s

//go:generate go tool controller-gen rbac:roleName=sigil-agent paths=./... output:rbac:artifacts:config=../rbac

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sigil-net/sigil/agent"
	sigilv1 "github.com/sigil-net/sigil/api/v1alpha1"
	"github.com/sigil-net/sigil/datapath"
	"github.com/sigil-net/sigil/identity"
	"github.com/sigil-net/sigil/operator/identityalloc"
	"github.com/sigil-net/sigil/policy"
)

// The agent reads everything it enforces and writes nothing but
// identities: it creates one when a local pod's label set has none yet, and
// updates one to clear the garbage collector's unused mark when reusing it
// (operator/identityalloc).
//
// +kubebuilder:rbac:groups="",resources=pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=sigil.io,resources=sigilnetworkpolicies;sigilclusterwidenetworkpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=sigil.io,resources=sigilendpoints;sigilnodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=sigil.io,resources=sigilidentities,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch

// Scheme returns a scheme with the core, networking and Sigil types.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(sigilv1.AddToScheme(s))
	return s
}

// AllocateFunc returns the cluster identity of a label set, allocating it
// (creating its SigilIdentity) when there is none.
type AllocateFunc func(ctx context.Context, lbls identity.Labels) (datapath.Identity, error)

// Config configures a Controller.
type Config struct {
	// RestConfig reaches the API server.
	RestConfig *rest.Config
	// NodeName is this node's name: only its pods are watched.
	NodeName string
	// Enforcer receives the policy state.
	Enforcer *agent.Enforcer
	// Filter derives security labels (zero value: identity.NewFilter()).
	Filter *identity.Filter
	// Allocate allocates identities for local label sets that have none.
	// Nil (and AllocateIdentities false): wait for the operator to create
	// the SigilIdentity (endpoints stay at the init identity, failed closed,
	// until it appears).
	Allocate AllocateFunc
	// AllocateIdentities, when Allocate is nil, allocates with the cluster
	// allocator (operator/identityalloc) through the controller's own
	// client, as the operator does: what sigil-agent runs.
	AllocateIdentities bool
	// ProbeInterval is how often API-server connectivity is checked for
	// health (default 5s).
	ProbeInterval time.Duration
	// Overlay, if set, is kept in step with the SigilNodes: tunnel map,
	// routes and masquerading (overlay.go).
	Overlay *agent.Overlay
	// Prefilter, if set, gets the deny list of the clusterwide policies.
	Prefilter *agent.NodePrefilter
	Logger    *slog.Logger
}

type kind uint8

const (
	kindPod kind = iota
	kindNamespace
	kindIdentity
	kindNetworkPolicy
	kindSigilPolicy
	kindClusterPolicy
	kindSigilEndpoint
	kindNode
	kindEndpoint // a local endpoint, by ID
)

func (k kind) String() string {
	return [...]string{"pod", "namespace", "identity", "networkpolicy", "sigilnetworkpolicy",
		"sigilclusterwidenetworkpolicy", "sigilendpoint", "sigilnode", "endpoint"}[k]
}

type key struct {
	kind      kind
	namespace string
	name      string
}

const (
	indexLabelsHash = "labelsHash"
	indexNodeName   = "status.nodeName"
)

// Controller runs the agent's informers and its reconciler.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	filter identity.Filter
	cache  crcache.Cache
	direct client.Client
	disc   discovery.DiscoveryInterface
	queue  workqueue.TypedRateLimitingInterface[key]

	obsMu    sync.Mutex
	observed map[key]time.Time
	applied  map[key]string // resourceVersion of the policy last given to the engine

	hmu       sync.Mutex
	health    Health
	cacheSync bool

	done chan struct{} // closed when the reconciler has stopped
}

// Health is the control-plane part of the agent's health.
type Health struct {
	// Connected: the last API-server probe or watch succeeded.
	Connected bool `json:"connected"`
	// Synced: the informers synced and the maps hold the computed state.
	Synced bool `json:"synced"`
	// LastSync is when the maps were last brought up to date with an
	// API-server change (or the initial sync).
	LastSync time.Time `json:"lastSync,omitzero"`
	// Message says what is wrong, if anything.
	Message string `json:"message,omitempty"`
}

// New builds the controller; Start runs it.
func New(cfg Config) (*Controller, error) {
	if cfg.RestConfig == nil || cfg.NodeName == "" || cfg.Enforcer == nil {
		return nil, errors.New("k8s: RestConfig, NodeName and Enforcer are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 5 * time.Second
	}
	filter := identity.NewFilter()
	if cfg.Filter != nil {
		filter = *cfg.Filter
	}
	c := &Controller{cfg: cfg, log: cfg.Logger.With("component", "k8s"), filter: filter,
		observed: map[key]time.Time{}, applied: map[key]string{}, done: make(chan struct{}),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[key](),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "sigil-agent"}),
		health: Health{Message: "waiting for the API server"}}
	if c.cfg.Allocate == nil && c.cfg.AllocateIdentities {
		c.cfg.Allocate = func(ctx context.Context, lbls identity.Labels) (datapath.Identity, error) {
			return identityalloc.Allocate(ctx, c.Client(), lbls)
		}
	}
	scheme := Scheme()
	var err error
	c.cache, err = crcache.New(cfg.RestConfig, crcache.Options{
		Scheme: scheme,
		ByObject: map[client.Object]crcache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName)},
		},
		DefaultTransform: crcache.TransformStripManagedFields(),
		DefaultWatchErrorHandler: func(_ context.Context, r *toolscache.Reflector, err error) {
			c.setConnected(false, fmt.Sprintf("watch %s: %v", r.TypeDescription(), err))
		},
	})
	if err != nil {
		return nil, fmt.Errorf("k8s: cache: %w", err)
	}
	if c.direct, err = client.New(cfg.RestConfig, client.Options{Scheme: scheme}); err != nil {
		return nil, fmt.Errorf("k8s: client: %w", err)
	}
	if c.disc, err = discovery.NewDiscoveryClientForConfig(cfg.RestConfig); err != nil {
		return nil, fmt.Errorf("k8s: discovery: %w", err)
	}
	cfg.Enforcer.OnEndpoint(func(ep agent.LocalEndpoint, removed bool) {
		if !removed {
			c.queue.Add(key{kind: kindEndpoint, name: strconv.FormatUint(uint64(ep.ID), 10)})
		}
	})
	return c, nil
}

// Client returns an uncached client (for identity allocation).
func (c *Controller) Client() client.Client { return c.direct }

// Health returns the control-plane health.
func (c *Controller) Health() Health {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	h := c.health
	h.Synced = c.cfg.Enforcer.Synced()
	return h
}

func (c *Controller) setConnected(ok bool, msg string) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if c.health.Connected != ok {
		if ok {
			c.log.Info("API server reachable")
		} else {
			c.log.Warn("API server unreachable: enforcing the last known state", "err", msg)
		}
	}
	c.health.Connected = ok
	switch {
	case !ok:
		c.health.Message = "API server unreachable, enforcing the last known state: " + msg
	case !c.cacheSync:
		c.health.Message = "waiting for the informers to sync"
	default:
		c.health.Message = ""
	}
}

func (c *Controller) markSynced() {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.health.LastSync = time.Now()
}

// Start sets up the informers (retrying while the API server is
// unreachable), and runs the cache, the connectivity probe and the
// reconciler until ctx ends. It returns at once; Wait waits for the
// reconciler to stop.
func (c *Controller) Start(ctx context.Context) {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	go c.probe(ctx)
	go c.run(ctx)
}

// Wait blocks until the reconciler, started by Start, has stopped after
// ctx ended: from then on the controller no longer touches the enforcer
// (and so the datapath), which may be closed.
func (c *Controller) Wait() { <-c.done }

func (c *Controller) probe(ctx context.Context) {
	t := time.NewTicker(c.cfg.ProbeInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.disc.RESTClient().Get().AbsPath("/readyz").Do(pctx).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.setConnected(false, err.Error())
		} else {
			c.setConnected(true, "")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Controller) run(ctx context.Context) {
	defer close(c.done)
	backoff := time.Second
	for {
		err := c.setup(ctx)
		if err == nil {
			break
		}
		c.setConnected(false, err.Error())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	go func() {
		if err := c.cache.Start(ctx); err != nil {
			c.log.Error("informer cache stopped", "err", err)
		}
	}()
	if !c.cache.WaitForCacheSync(ctx) {
		return
	}
	c.hmu.Lock()
	c.cacheSync = true
	c.hmu.Unlock()
	c.setConnected(true, "")
	if err := c.fullSync(ctx); err != nil {
		c.log.Error("initial sync", "err", err)
	}
	for c.processNext(ctx) {
	}
}

// setup registers the indexes and the informers' event handlers.
func (c *Controller) setup(ctx context.Context) error {
	if err := c.cache.IndexField(ctx, &sigilv1.SigilIdentity{}, indexLabelsHash, func(o client.Object) []string {
		return []string{identity.Labels(o.(*sigilv1.SigilIdentity).Spec.SecurityLabels).Hash()}
	}); err != nil && !strings.Contains(err.Error(), "already") {
		return fmt.Errorf("index identities: %w", err)
	}
	if err := c.cache.IndexField(ctx, &sigilv1.SigilEndpoint{}, indexNodeName, func(o client.Object) []string {
		return []string{o.(*sigilv1.SigilEndpoint).Status.NodeName}
	}); err != nil && !strings.Contains(err.Error(), "already") {
		return fmt.Errorf("index endpoints: %w", err)
	}
	for _, w := range []struct {
		obj  client.Object
		kind kind
	}{
		{&corev1.Pod{}, kindPod}, {&corev1.Namespace{}, kindNamespace}, {&sigilv1.SigilIdentity{}, kindIdentity},
		{&networkingv1.NetworkPolicy{}, kindNetworkPolicy}, {&sigilv1.SigilNetworkPolicy{}, kindSigilPolicy},
		{&sigilv1.SigilClusterwideNetworkPolicy{}, kindClusterPolicy},
		{&sigilv1.SigilEndpoint{}, kindSigilEndpoint}, {&sigilv1.SigilNode{}, kindNode},
	} {
		inf, err := c.cache.GetInformer(ctx, w.obj, crcache.BlockUntilSynced(false))
		if err != nil {
			return fmt.Errorf("informer for %s: %w", w.kind, err)
		}
		k := w.kind
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { c.enqueue(k, o) },
			UpdateFunc: func(_, o any) { c.enqueue(k, o) },
			DeleteFunc: func(o any) { c.enqueue(k, o) },
		}); err != nil {
			return err
		}
	}
	return nil
}

func (c *Controller) enqueue(k kind, o any) {
	s, err := toolscache.DeletionHandlingMetaNamespaceKeyFunc(o)
	if err != nil {
		return
	}
	ns, name, _ := toolscache.SplitMetaNamespaceKey(s)
	kk := key{kind: k, namespace: ns, name: name}
	c.obsMu.Lock()
	if _, ok := c.observed[kk]; !ok {
		c.observed[kk] = time.Now()
	}
	c.obsMu.Unlock()
	c.queue.Add(kk)
}

func (c *Controller) takeObserved(k key) time.Time {
	c.obsMu.Lock()
	defer c.obsMu.Unlock()
	t, ok := c.observed[k]
	delete(c.observed, k)
	if !ok {
		return time.Now()
	}
	return t
}

func (c *Controller) processNext(ctx context.Context) bool {
	k, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(k)
	if err := c.reconcile(ctx, k); err != nil {
		c.log.Warn("reconcile failed; retrying", "kind", k.kind.String(), "namespace", k.namespace, "name", k.name, "err", err)
		c.queue.AddRateLimited(k)
		return true
	}
	c.queue.Forget(k)
	c.markSynced()
	return true
}

// fullSync loads the synced caches into the enforcer and marks it synced.
func (c *Controller) fullSync(ctx context.Context) error {
	start := time.Now()
	var ids sigilv1.SigilIdentityList
	if err := c.cache.List(ctx, &ids); err != nil {
		return err
	}
	for i := range ids.Items {
		c.reconcileIdentity(ctx, key{kind: kindIdentity, name: ids.Items[i].Name})
	}
	var errs []error
	var nps networkingv1.NetworkPolicyList
	errs = append(errs, c.cache.List(ctx, &nps))
	for _, p := range nps.Items {
		errs = append(errs, c.reconcile(ctx, key{kind: kindNetworkPolicy, namespace: p.Namespace, name: p.Name}))
	}
	var snps sigilv1.SigilNetworkPolicyList
	errs = append(errs, c.cache.List(ctx, &snps))
	for _, p := range snps.Items {
		errs = append(errs, c.reconcile(ctx, key{kind: kindSigilPolicy, namespace: p.Namespace, name: p.Name}))
	}
	var scnps sigilv1.SigilClusterwideNetworkPolicyList
	errs = append(errs, c.cache.List(ctx, &scnps))
	for _, p := range scnps.Items {
		errs = append(errs, c.reconcile(ctx, key{kind: kindClusterPolicy, name: p.Name}))
	}
	if len(scnps.Items) == 0 {
		errs = append(errs, c.syncPrefilter(ctx))
	}
	errs = append(errs, c.reconcileNodes(ctx))
	var seps sigilv1.SigilEndpointList
	errs = append(errs, c.cache.List(ctx, &seps))
	for _, s := range seps.Items {
		errs = append(errs, c.reconcile(ctx, key{kind: kindSigilEndpoint, namespace: s.Namespace, name: s.Name}))
	}
	for _, ep := range c.cfg.Enforcer.Endpoints() {
		if err := c.resolveEndpoint(ctx, ep.ID); err != nil {
			// Not fatal: the endpoint stays failed closed and is retried.
			c.log.Warn("initial sync: endpoint identity", "id", ep.ID, "err", err)
			c.queue.AddRateLimited(key{kind: kindEndpoint, name: strconv.FormatUint(uint64(ep.ID), 10)})
		}
	}
	c.cfg.Enforcer.MarkSynced()
	c.markSynced()
	c.log.Info("initial sync done", "identities", len(ids.Items), "policies", len(nps.Items)+len(snps.Items)+len(scnps.Items),
		"remoteEndpoints", len(seps.Items), "took", time.Since(start).String())
	return errors.Join(errs...)
}

func (c *Controller) reconcile(ctx context.Context, k key) error {
	switch k.kind {
	case kindEndpoint:
		id, err := strconv.ParseUint(k.name, 10, 32)
		if err != nil {
			return nil
		}
		return c.resolveEndpoint(ctx, uint32(id))
	case kindPod:
		return c.resolvePod(ctx, k.namespace, k.name)
	case kindNamespace:
		var errs []error
		for _, ep := range c.cfg.Enforcer.Endpoints() {
			if ep.PodNamespace == k.name {
				errs = append(errs, c.resolveEndpoint(ctx, ep.ID))
			}
		}
		return errors.Join(errs...)
	case kindIdentity:
		return c.reconcileIdentity(ctx, k)
	case kindNetworkPolicy, kindSigilPolicy:
		return c.reconcilePolicy(ctx, k)
	case kindClusterPolicy:
		return errors.Join(c.reconcilePolicy(ctx, k), c.syncPrefilter(ctx))
	case kindSigilEndpoint:
		return c.reconcileSigilEndpoint(ctx, k)
	case kindNode:
		if err := c.reconcileNodes(ctx); err != nil {
			return err
		}
		// Pods of that node may have a new tunnel endpoint.
		var seps sigilv1.SigilEndpointList
		if err := c.cache.List(ctx, &seps, client.MatchingFields{indexNodeName: k.name}); err != nil {
			return err
		}
		for _, s := range seps.Items {
			c.queue.Add(key{kind: kindSigilEndpoint, namespace: s.Namespace, name: s.Name})
		}
	}
	return nil
}

func (c *Controller) resolvePod(ctx context.Context, ns, name string) error {
	var errs []error
	for _, ep := range c.cfg.Enforcer.Endpoints() {
		if ep.PodNamespace == ns && ep.PodName == name {
			errs = append(errs, c.resolveEndpoint(ctx, ep.ID))
		}
	}
	return errors.Join(errs...)
}

// securityLabels returns the security labels and named ports of a pod from
// the caches; ok is false when the pod or its namespace is not known.
func (c *Controller) securityLabels(ctx context.Context, ns, name string) (identity.Labels, []policy.NamedPort, bool, error) {
	if ns == "" || name == "" {
		return nil, nil, false, nil
	}
	var pod corev1.Pod
	if err := c.cache.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, false, nil
		}
		return nil, nil, false, err
	}
	var nsObj corev1.Namespace
	if err := c.cache.Get(ctx, client.ObjectKey{Name: ns}, &nsObj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, false, nil
		}
		return nil, nil, false, err
	}
	return c.filter.SecurityLabels(ns, pod.Labels, nsObj.Labels), podNamedPorts(&pod), true, nil
}

func podNamedPorts(p *corev1.Pod) []policy.NamedPort {
	var out []policy.NamedPort
	for _, ctr := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
		for _, cp := range ctr.Ports {
			if cp.Name == "" {
				continue
			}
			out = append(out, policy.NamedPort{Name: cp.Name, Proto: protoNumber(string(cp.Protocol)), Port: uint16(cp.ContainerPort)})
		}
	}
	return out
}

func protoNumber(p string) uint8 {
	switch strings.ToUpper(p) {
	case "UDP":
		return datapath.ProtoUDP
	case "SCTP":
		return datapath.ProtoSCTP
	}
	return datapath.ProtoTCP
}

// lookupIdentity finds the identity of a label set in the cache.
func (c *Controller) lookupIdentity(ctx context.Context, lbls identity.Labels) (datapath.Identity, bool, error) {
	var list sigilv1.SigilIdentityList
	if err := c.cache.List(ctx, &list, client.MatchingFields{indexLabelsHash: lbls.Hash()}); err != nil {
		return 0, false, err
	}
	for _, si := range list.Items {
		if si.DeletionTimestamp == nil && identity.Labels(si.Spec.SecurityLabels).Equal(lbls) {
			return datapath.Identity(si.Spec.ID), true, nil
		}
	}
	return 0, false, nil
}

// resolveEndpoint gives a local endpoint the identity of its pod's labels,
// allocating it if needed. An endpoint whose pod is not (or no longer)
// known keeps its identity.
func (c *Controller) resolveEndpoint(ctx context.Context, epID uint32) error {
	ep, ok := c.cfg.Enforcer.Endpoint(epID)
	if !ok {
		return nil
	}
	lbls, ports, ok, err := c.securityLabels(ctx, ep.PodNamespace, ep.PodName)
	if err != nil || !ok {
		return err
	}
	id, found, err := c.lookupIdentity(ctx, lbls)
	if err != nil {
		return err
	}
	if !found {
		if c.cfg.Allocate == nil {
			c.log.Debug("no identity yet for the pod's labels; waiting for the operator", "pod", ep.PodNamespace+"/"+ep.PodName)
			return nil
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		id, err = c.cfg.Allocate(actx, lbls)
		cancel()
		if err != nil {
			return fmt.Errorf("allocate identity for %s/%s: %w", ep.PodNamespace, ep.PodName, err)
		}
	}
	return c.cfg.Enforcer.SetEndpointIdentity(epID, id, lbls, ports)
}

func (c *Controller) reconcileIdentity(ctx context.Context, k key) error {
	id64, err := strconv.ParseUint(k.name, 10, 32)
	if err != nil {
		return nil
	}
	id := datapath.Identity(id64)
	var si sigilv1.SigilIdentity
	err = c.cache.Get(ctx, client.ObjectKey{Name: k.name}, &si)
	switch {
	case apierrors.IsNotFound(err):
		if c.cfg.Enforcer.RemoveIdentity(id) {
			// Still used here: re-resolve (allocating it again).
			for _, ep := range c.cfg.Enforcer.Endpoints() {
				if ep.Identity == id {
					c.queue.Add(key{kind: kindEndpoint, name: strconv.FormatUint(uint64(ep.ID), 10)})
				}
			}
		}
		return nil
	case err != nil:
		return err
	}
	if err := c.cfg.Enforcer.UpsertIdentity(id, identity.Labels(si.Spec.SecurityLabels)); err != nil {
		c.log.Warn("identity rejected", "identity", k.name, "err", err)
		return nil
	}
	// Endpoints waiting for an identity may have it now.
	if c.cfg.Enforcer.Synced() {
		for _, ep := range c.cfg.Enforcer.Endpoints() {
			if !ep.Computed {
				c.queue.Add(key{kind: kindEndpoint, name: strconv.FormatUint(uint64(ep.ID), 10)})
			}
		}
	}
	return nil
}

func (c *Controller) reconcilePolicy(ctx context.Context, k key) error {
	observed := c.takeObserved(k)
	var (
		obj   client.Object
		ref   policy.PolicyRef
		xlate func() (*policy.Policy, error)
	)
	switch k.kind {
	case kindNetworkPolicy:
		np := &networkingv1.NetworkPolicy{}
		obj, ref = np, policy.PolicyRef{Kind: policy.KindNetworkPolicy, Namespace: k.namespace, Name: k.name}
		xlate = func() (*policy.Policy, error) { return policy.FromNetworkPolicy(np) }
	case kindSigilPolicy:
		p := &sigilv1.SigilNetworkPolicy{}
		obj, ref = p, policy.PolicyRef{Kind: policy.KindSigilNetworkPolicy, Namespace: k.namespace, Name: k.name}
		xlate = func() (*policy.Policy, error) { return policy.FromSigilPolicy(p) }
	default:
		p := &sigilv1.SigilClusterwideNetworkPolicy{}
		obj, ref = p, policy.PolicyRef{Kind: policy.KindSigilClusterwidePolicy, Name: k.name}
		xlate = func() (*policy.Policy, error) { return policy.FromSigilClusterwidePolicy(p) }
	}
	err := c.cache.Get(ctx, client.ObjectKey{Namespace: k.namespace, Name: k.name}, obj)
	if apierrors.IsNotFound(err) {
		if _, had := c.applied[k]; had {
			delete(c.applied, k)
			c.cfg.Enforcer.RemovePolicy(ref, observed)
			c.log.Info("policy removed", "policy", ref.String(), "delay", time.Since(observed).String())
		}
		return nil
	}
	if err != nil {
		return err
	}
	if c.applied[k] == obj.GetResourceVersion() {
		return nil
	}
	p, err := xlate()
	if err != nil {
		// Keep enforcing the previous version: never open on a bad update.
		c.log.Error("policy not applied: translation failed", "policy", ref.String(), "err", err)
		return nil
	}
	c.cfg.Enforcer.UpsertPolicy(p, observed)
	c.applied[k] = obj.GetResourceVersion()
	c.log.Info("policy applied", "policy", ref.String(), "rules", len(p.Rules), "delay", time.Since(observed).String())
	return nil
}

func (c *Controller) reconcileSigilEndpoint(ctx context.Context, k key) error {
	mapKey := k.namespace + "/" + k.name
	var sep sigilv1.SigilEndpoint
	err := c.cache.Get(ctx, client.ObjectKey{Namespace: k.namespace, Name: k.name}, &sep)
	if apierrors.IsNotFound(err) || err == nil && (sep.Status.NodeName == c.cfg.NodeName || sep.Status.Identity == 0) {
		c.cfg.Enforcer.RemoveRemoteEndpoint(mapKey)
		return nil
	}
	if err != nil {
		return err
	}
	r := agent.RemoteEndpoint{Identity: datapath.Identity(sep.Status.Identity)}
	for _, s := range sep.Status.IPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			r.IPs = append(r.IPs, ip.Unmap())
		}
	}
	for _, np := range sep.Status.NamedPorts {
		r.NamedPorts = append(r.NamedPorts, policy.NamedPort{Name: np.Name, Proto: protoNumber(np.Protocol), Port: uint16(np.Port)})
	}
	var node sigilv1.SigilNode
	if err := c.cache.Get(ctx, client.ObjectKey{Name: sep.Status.NodeName}, &node); err == nil {
		r.TunnelEndpoint = tunnelEndpoint(&node)
	}
	c.cfg.Enforcer.UpsertRemoteEndpoint(mapKey, r)
	return nil
}

func tunnelEndpoint(n *sigilv1.SigilNode) netip.Addr {
	for _, s := range []string{n.Spec.TunnelEndpoint, n.Spec.InternalIP} {
		if ip, err := netip.ParseAddr(s); err == nil {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// reconcileNodes rebuilds the node entries of the ipcache: this node's
// addresses resolve to host, the others' to remote-node.
func (c *Controller) reconcileNodes(ctx context.Context) error {
	var nodes sigilv1.SigilNodeList
	if err := c.cache.List(ctx, &nodes); err != nil {
		return err
	}
	out := map[netip.Prefix]datapath.IPCacheEntry{}
	for _, n := range nodes.Items {
		id := datapath.IdentityRemoteNode
		if n.Name == c.cfg.NodeName {
			id = datapath.IdentityHost
		}
		seen := map[netip.Addr]bool{}
		for _, s := range []string{n.Spec.InternalIP, n.Spec.TunnelEndpoint} {
			ip, err := netip.ParseAddr(s)
			if err != nil || seen[ip.Unmap()] {
				continue
			}
			ip = ip.Unmap()
			seen[ip] = true
			out[netip.PrefixFrom(ip, ip.BitLen())] = datapath.IPCacheEntry{Identity: id}
		}
	}
	c.cfg.Enforcer.SetNodeIPCache(out)
	return c.syncOverlay(nodes.Items)
}

// Command kubeapiserver is a minimal Kubernetes API server built on the real k8s.io/apiserver code (0.36, from
// Debian's packages): core/v1 Secrets, ConfigMaps, Namespaces and Pods over etcd3, as a peer for the test suite and the
// benchmarks.  Built offline by scripts/provision-kube-apiserver; see tests/kube_apiserver_harness.py.
//
// What is real (k8s.io/apiserver, unchanged): the handler chain of the generic API server (request info, max
// in-flight, timeouts, panic recovery, /healthz /livez /readyz /version /metrics), the REST handlers
// (k8s.io/apiserver/pkg/endpoints: GET/LIST/WATCH/POST/PUT/PATCH/DELETE/DELETECOLLECTION, limit/continue,
// resourceVersion semantics, watch-list with the k8s.io/initial-events-end bookmark, table output), the
// serializers (JSON, YAML, protobuf, and CBOR with the CBORServingAndStorage gate, which this program turns on
// unless --cbor=off), the generic registry Store (k8s.io/apiserver/pkg/registry/generic/registry), the watch cache
// (genericregistry.StorageWithCacher, as kube-apiserver's --watch-cache) and the etcd3 storage, configured as
// kube-apiserver configures it (server/options.EtcdOptions + server/storage.DefaultStorageFactory; storage media
// type application/vnd.kubernetes.protobuf, kube's default for core types, under --etcd-prefix as
// <prefix>/secrets/<namespace>/<name>).
//
// What is ours: the scheme (k8s.io/api/core/v1 types, also registered as the internal version: Kubernetes'
// internal core types live in k8s.io/kubernetes, which Debian does not ship), minimal strategies (names are
// validated, Secret.type defaults to Opaque and stringData is merged into data, Namespace.status.phase is Active;
// no other validation, defaulting or finalizers: a Namespace is deleted at once), the field selectors kube has for
// these kinds (type, status.phase), no authentication (every request is user system:unsecured in system:masters),
// AlwaysAllow authorization, no admission, no OpenAPI (the generic server's InstallLegacyAPIGroup insists on an OpenAPI v3
// config, and Debian ships no OpenAPI definitions for core types, so the group is installed with the lower-level
// endpoints.APIGroupVersion.InstallREST on the generic server's go-restful container, with a deduced type
// converter for managed fields), and plain HTTP on a loopback address.
//
// Flags:
//
//	--etcd-servers URL[,URL]   etcd endpoints (http://127.0.0.1:2379; a bare host:port means http)
//	--etcd-prefix P            key prefix (default /registry)
//	--listen 127.0.0.1:PORT    plain HTTP, loopback addresses only
//	--watch-cache on|off       the watch cache (cacher) in front of etcd (default on)
//	--cbor on|off              the CBORServingAndStorage feature gate (CBOR responses; default on)
//	--storage-media-type T     what is written to etcd (default application/vnd.kubernetes.protobuf)
//	--feature-gates K=V,...    k8s.io/apiserver feature gates, as kube-apiserver's flag
//	--max-seconds S            exit by itself after S seconds (0: never); SIGTERM/SIGINT end it earlier
//	--v N                      klog verbosity (stderr)
//
// Once listening it prints one JSON line on stdout: {"event":"listening","url",...,"featureGates":{...}};
// /healthz answers 200 once the post-start hooks (among them the watch caches' initialization) have run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/runtime/serializer/cbor"
	"k8s.io/apimachinery/pkg/runtime/serializer/recognizer"
	"k8s.io/apimachinery/pkg/util/managedfields"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	genericapi "k8s.io/apiserver/pkg/endpoints"
	"k8s.io/apiserver/pkg/endpoints/discovery"
	discoveryendpoint "k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/options"
	serverstorage "k8s.io/apiserver/pkg/server/storage"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/feature"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	restclient "k8s.io/client-go/rest"
	"k8s.io/component-base/featuregate"
	"k8s.io/klog/v2"
)

var (
	scheme     = runtime.NewScheme()
	internalGV = schema.GroupVersion{Group: "", Version: runtime.APIVersionInternal}
)

func init() {
	utilruntime.Must(corev1.AddToScheme(scheme))
	// The REST handlers and the storage codec convert every object to the "internal" (hub) version of its group
	// and back.  kube-apiserver's internal core types are in k8s.io/kubernetes/pkg/apis/core; here the v1 types
	// double as the internal ones, so those conversions are copies that only set (v1) or clear (internal) the
	// object's kind and apiVersion -- as kube's conversions do.
	scheme.AddKnownTypes(internalGV,
		&corev1.Secret{}, &corev1.SecretList{},
		&corev1.ConfigMap{}, &corev1.ConfigMapList{},
		&corev1.Namespace{}, &corev1.NamespaceList{},
		&corev1.Pod{}, &corev1.PodList{},
	)
	utilruntime.Must(scheme.SetVersionPriority(corev1.SchemeGroupVersion))
	utilruntime.Must(addFieldLabelConversions(scheme))
}

// ----------------------------------------------------------------------------- strategies

// strategy is a minimal create/update/delete strategy: names are validated as kube-apiserver validates them
// (DNS subdomains; DNS labels for namespaces), nothing else is.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	namespaced bool
}

func (s strategy) NamespaceScoped() bool { return s.namespaced }

// mergeStringData does what kube's conversion of a v1 Secret to the internal one does: stringData (write-only)
// is merged into data, over keys data already has.
func mergeStringData(s *corev1.Secret) {
	if len(s.StringData) == 0 {
		s.StringData = nil
		return
	}
	if s.Data == nil {
		s.Data = make(map[string][]byte, len(s.StringData))
	}
	for k, v := range s.StringData {
		s.Data[k] = []byte(v)
	}
	s.StringData = nil
}

func (s strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	switch o := obj.(type) {
	case *corev1.Secret:
		mergeStringData(o)
		if o.Type == "" {
			o.Type = corev1.SecretTypeOpaque // kube's defaulting (k8s.io/kubernetes/pkg/apis/core/v1)
		}
	case *corev1.Namespace:
		o.Status = corev1.NamespaceStatus{Phase: corev1.NamespaceActive}
	}
}

func (s strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	switch o := obj.(type) {
	case *corev1.Secret:
		mergeStringData(o)
		if o.Type == "" {
			o.Type = old.(*corev1.Secret).Type
		}
	case *corev1.Namespace:
		o.Status = old.(*corev1.Namespace).Status // status is a subresource in kube; not writable here
	}
}

func (s strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	accessor, err := meta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(field.NewPath("metadata"), err)}
	}
	nameFn := apimachineryvalidation.NameIsDNSSubdomain
	if !s.namespaced {
		nameFn = apimachineryvalidation.NameIsDNSLabel
	}
	return apimachineryvalidation.ValidateObjectMetaAccessor(accessor, s.namespaced, nameFn, field.NewPath("metadata"))
}

func (s strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return s.Validate(ctx, obj)
}

func (strategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string      { return nil }
func (strategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string { return nil }
func (strategy) Canonicalize(obj runtime.Object)                                        {}
func (strategy) AllowCreateOnUpdate() bool                                              { return false }
func (strategy) AllowUnconditionalUpdate() bool                                         { return true }

// Field selectors beyond metadata.name and metadata.namespace, as kube-apiserver has them: Secrets' type and
// Namespaces' status.phase (k8s.io/kubernetes/pkg/apis/core/v1 conversion.go, pkg/registry/core/*/strategy.go).
var fieldLabels = map[string][]string{"Secret": {"type"}, "Namespace": {"status.phase"}}

func addFieldLabelConversions(s *runtime.Scheme) error {
	for kind, extra := range fieldLabels {
		allowed := map[string]bool{"metadata.name": true, "metadata.namespace": kind != "Namespace"}
		for _, f := range extra {
			allowed[f] = true
		}
		err := s.AddFieldLabelConversionFunc(corev1.SchemeGroupVersion.WithKind(kind), func(label, value string) (string, string, error) {
			if allowed[label] {
				return label, value, nil
			}
			return "", "", fmt.Errorf("field label not supported: %s", label)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func secretAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return nil, nil, fmt.Errorf("not a Secret: %T", obj)
	}
	return labels.Set(s.Labels), generic.AddObjectMetaFieldsSet(fields.Set{"type": string(s.Type)}, &s.ObjectMeta, true), nil
}

func namespaceAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	n, ok := obj.(*corev1.Namespace)
	if !ok {
		return nil, nil, fmt.Errorf("not a Namespace: %T", obj)
	}
	fs := generic.AddObjectMetaFieldsSet(fields.Set{"status.phase": string(n.Status.Phase)}, &n.ObjectMeta, false)
	return labels.Set(n.Labels), fs, nil
}

// REST storages with their short names, as kube-apiserver's.
type shortNamed struct {
	*genericregistry.Store
	short []string
}

func (s shortNamed) ShortNames() []string { return s.short }

func newStore(getter generic.RESTOptionsGetter, resource, singular string, namespaced bool, short []string,
	newFunc, newListFunc func() runtime.Object, attrs storage.AttrFunc) (rest.Storage, error) {
	st := strategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, namespaced: namespaced}
	store := &genericregistry.Store{
		NewFunc:                   newFunc,
		NewListFunc:               newListFunc,
		DefaultQualifiedResource:  corev1.Resource(resource),
		SingularQualifiedResource: corev1.Resource(singular),
		CreateStrategy:            st,
		UpdateStrategy:            st,
		DeleteStrategy:            st,
		TableConvertor:            rest.NewDefaultTableConvertor(corev1.Resource(resource)),
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: getter, AttrFunc: attrs}); err != nil {
		return nil, err
	}
	if len(short) == 0 {
		return store, nil
	}
	return shortNamed{Store: store, short: short}, nil
}

// ----------------------------------------------------------------------------- storage codec

// internalDecoder makes what the storage decodes an object of the internal version, as kube-apiserver's storage
// codec does (its decoder converts to the internal types, whose kind and apiVersion are empty).  Without it, an
// object decoded straight into a v1 struct (a LIST from etcd) would keep the kind and apiVersion the protobuf
// envelope carries, and list items would show them, which kube-apiserver's never do.
type internalDecoder struct{ runtime.Decoder }

func (d internalDecoder) Decode(data []byte, gvk *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	obj, actual, err := d.Decoder.Decode(data, gvk, into)
	if obj != nil {
		if _, unstructured := obj.(runtime.Unstructured); !unstructured {
			obj.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
		}
	}
	return obj, actual, err
}

// decodeAsInternal is the storage codec's decoder decorator (DefaultStorageFactory.AddSerializationChains): the
// decoders it is given (the storage media type's, then the universal deserializer ...) behind one recognizer, as
// NewStorageCodec would put them, whose results are made internal.
func decodeAsInternal(decoders []runtime.Decoder) []runtime.Decoder {
	return []runtime.Decoder{internalDecoder{recognizer.NewDecoder(decoders...)}}
}

// ----------------------------------------------------------------------------- etcd features

// waitForEtcdFeatureCheck holds the post-start hooks (and so /healthz) until k8s.io/apiserver's own check of
// etcd's RequestWatchProgress support (storage/feature.DefaultFeatureSupportChecker, run in the background when
// the etcd client is made) has found it, where the etcd version has it: until then the watch cache refuses
// watch-list requests (sendInitialEvents) and client-go falls back to LIST, so a client right after start-up
// would see a different server than one a moment later.  Below the gate (etcd < 3.4.31, 3.5.0-3.5.12) it returns
// at once: that server never has the feature.
func waitForEtcdFeatureCheck(ctx context.Context, endpoints []string) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx, Logger: zap.NewNop()})
	if err != nil {
		klog.Warningf("etcd feature check: %v", err)
		return
	}
	defer cli.Close()
	minimum34, minimum35, v35 := version.MustParseSemantic("3.4.31"), version.MustParseSemantic("3.5.13"), version.MustParseSemantic("3.5.0")
	for _, ep := range endpoints {
		statusCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.Status(statusCtx, ep)
		cancel()
		if err != nil {
			klog.Warningf("etcd feature check: status of %s: %v", ep, err)
			return
		}
		v, err := version.ParseSemantic(resp.Version)
		if err != nil || v.LessThan(minimum34) || (v.AtLeast(v35) && v.LessThan(minimum35)) {
			klog.Infof("etcd %s at %s has no RequestWatchProgress: the watch cache serves no watch-list", resp.Version, ep)
			return
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for !feature.DefaultFeatureSupportChecker.Supports(storage.RequestWatchProgress) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			klog.Warningf("etcd feature check: RequestWatchProgress still not confirmed by k8s.io/apiserver")
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ----------------------------------------------------------------------------- main

func onOff(name, v string) bool {
	switch v {
	case "on", "true", "1":
		return true
	case "off", "false", "0":
		return false
	}
	fmt.Fprintf(os.Stderr, "kubeapiserver: --%s must be on or off, not %q\n", name, v)
	os.Exit(64)
	return false
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kubeapiserver: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	etcdServers := flag.String("etcd-servers", "http://127.0.0.1:2379", "etcd endpoints, comma-separated")
	etcdPrefix := flag.String("etcd-prefix", "/registry", "etcd key prefix")
	listen := flag.String("listen", "127.0.0.1:8080", "plain-HTTP listen address (loopback only)")
	watchCache := flag.String("watch-cache", "on", "on|off: the watch cache")
	cborFlag := flag.String("cbor", "on", "on|off: the CBORServingAndStorage feature gate")
	storageMediaType := flag.String("storage-media-type", runtime.ContentTypeProtobuf, "media type written to etcd")
	featureGates := flag.String("feature-gates", "", "k8s.io/apiserver feature gates, K=V,...")
	maxSeconds := flag.Float64("max-seconds", 0, "exit after this many seconds (0: never)")
	klog.InitFlags(flag.CommandLine)
	flag.Parse()

	host, portStr, err := net.SplitHostPort(*listen)
	if err != nil {
		fail("--listen %q: %v", *listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		fail("--listen %q: only loopback addresses are served", *listen)
	}

	gates := map[string]bool{string(features.CBORServingAndStorage): onOff("cbor", *cborFlag)}
	utilruntime.Must(utilfeature.DefaultMutableFeatureGate.SetFromMap(gates))
	if *featureGates != "" {
		if err := utilfeature.DefaultMutableFeatureGate.Set(*featureGates); err != nil {
			fail("--feature-gates: %v", err)
		}
	}
	gate := utilfeature.DefaultFeatureGate

	// Serializers, with the options kube-apiserver's API groups get (genericapiserver.NewDefaultAPIGroupInfo).
	var codecOpts []serializer.CodecFactoryOptionsMutator
	if gate.Enabled(features.CBORServingAndStorage) {
		codecOpts = append(codecOpts, serializer.WithSerializer(cbor.NewSerializerInfo))
	}
	if gate.Enabled(features.StreamingCollectionEncodingToJSON) {
		codecOpts = append(codecOpts, serializer.WithStreamingCollectionEncodingToJSON())
	}
	if gate.Enabled(features.StreamingCollectionEncodingToProtobuf) {
		codecOpts = append(codecOpts, serializer.WithStreamingCollectionEncodingToProtobuf())
	}
	codecs := serializer.NewCodecFactory(scheme, codecOpts...)

	// The generic server: its handler chain, health checks, /version; no authentication, AlwaysAllow.
	config := genericapiserver.NewConfig(codecs)
	effectiveVersion := compatibility.DefaultBuildEffectiveVersion()
	config.EffectiveVersion = effectiveVersion
	config.ExternalAddress = *listen
	config.LoopbackClientConfig = &restclient.Config{Host: "http://" + *listen}
	unsecured := &user.DefaultInfo{Name: "system:unsecured", Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated}}
	config.Authentication.Authenticator = authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) {
		return &authenticator.Response{User: unsecured}, true, nil
	})
	config.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()

	// etcd3 storage as kube-apiserver sets it up: EtcdOptions (health checks, watch cache decorator) over a
	// DefaultStorageFactory (per-resource codec: storage media type, storage version v1, memory version internal).
	servers := strings.Split(*etcdServers, ",")
	for i, s := range servers {
		if !strings.Contains(s, "://") {
			servers[i] = "http://" + s
		}
	}
	backend := storagebackend.NewDefaultConfig(*etcdPrefix, nil)
	backend.Transport.ServerList = servers
	etcdOptions := options.NewEtcdOptions(backend)
	etcdOptions.DefaultStorageMediaType = *storageMediaType
	etcdOptions.EnableWatchCache = onOff("watch-cache", *watchCache)
	etcdOptions.EnableGarbageCollection = false // no garbage collector runs here
	etcdOptions.StorageConfig.StorageObjectCountTracker = config.StorageObjectCountTracker
	if errs := etcdOptions.Validate(); len(errs) > 0 {
		fail("etcd options: %v", errs)
	}
	resources := []schema.GroupResource{corev1.Resource("secrets"), corev1.Resource("configmaps"), corev1.Resource("namespaces"),
		corev1.Resource("pods")}
	encoding := serverstorage.NewDefaultResourceEncodingConfigForEffectiveVersion(scheme, effectiveVersion)
	for _, gr := range resources {
		encoding.SetResourceEncoding(gr, corev1.SchemeGroupVersion, internalGV)
	}
	apiResources := serverstorage.NewResourceConfig()
	apiResources.EnableVersions(corev1.SchemeGroupVersion)
	storageFactory := serverstorage.NewDefaultStorageFactory(etcdOptions.StorageConfig, etcdOptions.DefaultStorageMediaType,
		codecs, encoding, apiResources, nil)
	storageFactory.AddSerializationChains(nil, decodeAsInternal, resources...)
	if err := etcdOptions.ApplyWithStorageFactoryTo(storageFactory, config); err != nil {
		fail("etcd: %v", err)
	}

	server, err := config.Complete(nil).New("streamcodec-kube-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		fail("generic API server: %v", err)
	}

	getter := config.RESTOptionsGetter
	secrets, err := newStore(getter, "secrets", "secret", true, nil,
		func() runtime.Object { return &corev1.Secret{} }, func() runtime.Object { return &corev1.SecretList{} }, secretAttrs)
	if err != nil {
		fail("secrets storage: %v", err)
	}
	configMaps, err := newStore(getter, "configmaps", "configmap", true, []string{"cm"},
		func() runtime.Object { return &corev1.ConfigMap{} }, func() runtime.Object { return &corev1.ConfigMapList{} }, nil)
	if err != nil {
		fail("configmaps storage: %v", err)
	}
	namespaces, err := newStore(getter, "namespaces", "namespace", false, []string{"ns"},
		func() runtime.Object { return &corev1.Namespace{} }, func() runtime.Object { return &corev1.NamespaceList{} }, namespaceAttrs)
	if err != nil {
		fail("namespaces storage: %v", err)
	}
	pods, err := newStore(getter, "pods", "pod", true, []string{"po"},
		func() runtime.Object { return &corev1.Pod{} }, func() runtime.Object { return &corev1.PodList{} }, nil)
	if err != nil {
		fail("pods storage: %v", err)
	}
	storages := map[string]rest.Storage{"secrets": secrets, "configmaps": configMaps, "namespaces": namespaces, "pods": pods}

	// The core group at /api/v1, as genericapiserver's InstallLegacyAPIGroup installs it (minus OpenAPI).
	served := map[string][]string{}
	for name := range storages {
		served[name] = []string{"v1"}
	}
	group := &genericapi.APIGroupVersion{
		Root:                        genericapiserver.DefaultLegacyAPIPrefix,
		GroupVersion:                corev1.SchemeGroupVersion,
		Storage:                     storages,
		AllServedVersionsByResource: served,
		OptionsExternalVersion:      &schema.GroupVersion{Version: "v1"},
		Serializer:                  codecs,
		ParameterCodec:              runtime.NewParameterCodec(scheme),
		Creater:                     scheme,
		Convertor:                   scheme,
		ConvertabilityChecker:       scheme,
		UnsafeConvertor:             runtime.UnsafeObjectConvertor(scheme),
		Defaulter:                   scheme,
		Typer:                       scheme,
		Namer:                       runtime.Namer(meta.NewAccessor()),
		TypeConverter:               managedfields.NewDeducedTypeConverter(),
		EquivalentResourceRegistry:  server.EquivalentResourceRegistry,
		Authorizer:                  config.Authorization.Authorizer,
		MinRequestTimeout:           time.Duration(config.MinRequestTimeout) * time.Second,
		MaxRequestBodyBytes:         config.MaxRequestBodyBytes,
	}
	discoveryResources, _, err := group.InstallREST(server.Handler.GoRestfulContainer)
	if err != nil {
		fail("installing /api/v1: %v", err)
	}
	server.AggregatedLegacyDiscoveryGroupManager.AddGroupVersion("", apidiscoveryv2.APIVersionDiscovery{
		Freshness: apidiscoveryv2.DiscoveryFreshnessCurrent,
		Version:   "v1",
		Resources: discoveryResources,
	})
	legacyRoot := discovery.NewLegacyRootAPIHandler(discovery.DefaultAddresses{DefaultAddress: *listen}, codecs, genericapiserver.DefaultLegacyAPIPrefix)
	wrapped := discoveryendpoint.WrapAggregatedDiscoveryToHandler(legacyRoot, server.AggregatedLegacyDiscoveryGroupManager, server.AggregatedLegacyDiscoveryGroupManager)
	server.Handler.GoRestfulContainer.Add(wrapped.GenerateWebService("/api", metav1.APIVersions{}))
	for name, s := range storages {
		if withReadiness, ok := s.(rest.StorageWithReadiness); ok {
			server.StorageReadinessHook.RegisterStorage(metav1.GroupVersionResource{Version: "v1", Resource: name}, withReadiness)
		}
	}
	server.AddPostStartHookOrDie("streamcodec-etcd-features", func(hookCtx genericapiserver.PostStartHookContext) error {
		waitForEtcdFeatureCheck(hookCtx, servers)
		return nil
	})
	server.RegisterDestroyFunc(func() {
		for _, s := range storages {
			s.Destroy()
		}
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *maxSeconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*maxSeconds*float64(time.Second)))
		defer cancel()
	}

	prepared := server.PrepareRun()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("listen: %v", err)
	}
	// As genericapiserver's SecureServingInfo.Serve sets up its server, minus TLS.
	httpServer := &http.Server{
		Handler:           prepared.Handler,
		MaxHeaderBytes:    1 << 20,
		IdleTimeout:       90 * time.Second,
		ReadHeaderTimeout: 32 * time.Second,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- httpServer.Serve(ln) }()

	gateReport := map[string]bool{}
	for _, f := range []string{"WatchList", "CBORServingAndStorage", "ConsistentListFromCache", "ResilientWatchCacheInitialization",
		"WatchCacheInitializationPostStartHook", "StreamingCollectionEncodingToJSON", "StreamingCollectionEncodingToProtobuf", "ListFromCacheSnapshot"} {
		gateReport[f] = gate.Enabled(featuregate.Feature(f))
	}
	line, _ := json.Marshal(map[string]interface{}{
		"event": "listening", "url": "http://" + net.JoinHostPort(host, portStr), "etcdServers": servers,
		"etcdPrefix": *etcdPrefix, "watchCache": etcdOptions.EnableWatchCache, "storageMediaType": *storageMediaType,
		"version": effectiveVersion.Info().GitVersion, "featureGates": gateReport, "pid": os.Getpid(),
	})
	fmt.Println(string(line))

	// RunWithContext runs the post-start hooks (watch cache initialization, ...) and, once ctx is done, the
	// graceful shutdown of the generic server; the listener is ours, so this program ends it and exits.
	runErr := make(chan error, 1)
	go func() { runErr <- prepared.RunWithContext(ctx) }()
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		fail("serving: %v", err)
	case err := <-runErr:
		if err != nil {
			fail("run: %v", err)
		}
	}
	klog.Infof("shutting down (%v)", context.Cause(ctx))
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		_ = httpServer.Close() // open watches
	}
	klog.Flush()
	os.Exit(0)
}

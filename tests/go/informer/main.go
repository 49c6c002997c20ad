// Command informer runs N real client-go shared informers (core/v1 Secrets or ConfigMaps) against one API server
// and reports what happens as JSON lines on stdout, one object per line (klog writes to stderr only).
//
// Built by scripts/provision-client-go (GOPATH mode, offline, from Debian's client-go packages) for
// tests/test_client_go.py.  Flags:
//
//	--server URL            the API server (no auth, no TLS)
//	--resource R            secrets (default) or configmaps
//	--namespace NS          watch one namespace (default: all)
//	--informers N           N independent informers, each with its own clientset, HTTP transport and connections
//	--content-type T        default (client-go's own choice: protobuf for built-in types, JSON fallback),
//	                        json, protobuf or cbor (needs the ClientsAllowCBOR feature gate)
//	--watch-list on|off     client-go's WatchListClient feature gate (sets KUBE_FEATURE_WatchListClient unless the
//	                        environment already sets it; the effective value must match)
//	--sync-timeout S        give up (exit 2) unless every informer has synced within S seconds
//	--run-seconds S         keep running S seconds after the sync, reporting live events (SIGTERM ends it early)
//	--expect-objects N      exit 3 unless every informer holds N objects when it has synced
//	--fail-fast             exit 4 at the first watch error (SetWatchErrorHandler) before every informer has synced
//	--writes                once synced, write one object through informer 0's clientset (its content type, so
//	                        protobuf or CBOR request bodies): create, get, update, a stale update, a delete with
//	                        preconditions, a get, a second delete; a "write" event per step
//
// Events (field "event"):
//
//	start    {"informers","contentType","watchList","allowCBOR","preferCBOR","consistencyDetector"}
//	request  {"informer","method","path","query","kind":"list"|"watch"|"other","accept","requestContentType",
//	          "status","contentType","error"?} -- one per HTTP request, written when its response headers arrive
//	          (or it fails)
//	synced   {"informer","objects","bytes","checksum","seconds","lists","watches","initialAdds"} -- when the
//	         informer's handler registration has synced; bytes is the sum of the lengths of all data values,
//	         checksum the sha256 (hex) described at checksum() below
//	added | updated | deleted  {"informer","name","namespace","resourceVersion"} -- handler callbacks after the
//	         initial list (adds of the initial list are only counted: initialAdds)
//	error    {"informer","error","expired"} -- a watch error (SetWatchErrorHandler)
//	write    {"step","ok","code","reason","error","name","namespace","uid","resourceVersion","labels","type",
//	         "keys","checksum"} -- one per --writes step; code/reason are the API error's (0/"" on success),
//	         the rest the object the server answered with, checksum as checksum() below over that object alone
//	exit     {"synced","reason","informers":[{"informer","synced","objects","bytes","checksum","lists","watches",
//	          "responseBytes"}]} -- always the last line
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/consistencydetector"
	"k8s.io/klog/v2"
)

var (
	outMu sync.Mutex
	out   = newEncoder()
)

func newEncoder() *json.Encoder {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	return enc
}

// emit writes one JSON line on stdout.
func emit(event string, fields map[string]interface{}) {
	fields["event"] = event
	outMu.Lock()
	defer outMu.Unlock()
	_ = out.Encode(fields)
}

// informerState is everything one informer reports.
type informerState struct {
	index         int
	lists         atomic.Int64
	watches       atomic.Int64
	responseBytes atomic.Int64
	initialAdds   atomic.Int64
	synced        atomic.Bool
	informer      cache.SharedIndexInformer
	client        kubernetes.Interface
}

// recorder is the informer's HTTP round tripper: it reports each request and counts LISTs, WATCHes and bytes.
type recorder struct {
	st       *informerState
	resource string
	next     http.RoundTripper
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	q := req.URL.Query()
	kind := "other"
	if req.Method == http.MethodGet && strings.HasSuffix(strings.TrimSuffix(req.URL.Path, "/"), "/"+r.resource) {
		if w := q.Get("watch"); w == "1" || w == "true" {
			kind = "watch"
			r.st.watches.Add(1)
		} else {
			kind = "list"
			r.st.lists.Add(1)
		}
	}
	resp, err := r.next.RoundTrip(req)
	fields := map[string]interface{}{
		"informer": r.st.index, "method": req.Method, "path": req.URL.Path, "query": req.URL.RawQuery, "kind": kind,
		"accept": req.Header.Get("Accept"), "requestContentType": req.Header.Get("Content-Type"),
	}
	if err != nil {
		fields["error"] = err.Error()
	} else {
		fields["status"] = resp.StatusCode
		fields["contentType"] = resp.Header.Get("Content-Type")
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &r.st.responseBytes}
	}
	emit("request", fields)
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// dataOf returns an object's identity and its data values (Secret data, ConfigMap data + binaryData).
func dataOf(obj interface{}) (meta metav1.Object, data map[string][]byte, ok bool) {
	switch o := obj.(type) {
	case *corev1.Secret:
		return o, o.Data, true
	case *corev1.ConfigMap:
		data = map[string][]byte{}
		for k, v := range o.Data {
			data[k] = []byte(v)
		}
		for k, v := range o.BinaryData {
			data[k] = v
		}
		return o, data, true
	}
	return nil, nil, false
}

// checksum of a store's objects: sha256 over the objects sorted by "namespace/name", each written as
// "namespace/name\n" then, per data key in sorted order, "key=<len(value)>\n" + value + "\n".  Also returns the
// object count and the sum of the lengths of all data values.
func checksum(objs []interface{}) (count int, total int64, sum string) {
	type item struct {
		key  string
		data map[string][]byte
	}
	items := make([]item, 0, len(objs))
	for _, obj := range objs {
		meta, data, ok := dataOf(obj)
		if !ok {
			continue
		}
		items = append(items, item{meta.GetNamespace() + "/" + meta.GetName(), data})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].key < items[j].key })
	h := sha256.New()
	for _, it := range items {
		h.Write([]byte(it.key + "\n"))
		keys := make([]string, 0, len(it.data))
		for k := range it.data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v := it.data[k]
			total += int64(len(v))
			h.Write([]byte(k + "=" + strconv.Itoa(len(v)) + "\n"))
			h.Write(v)
			h.Write([]byte("\n"))
		}
	}
	return len(items), total, hex.EncodeToString(h.Sum(nil))
}

func objectFields(st *informerState, obj interface{}) map[string]interface{} {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	fields := map[string]interface{}{"informer": st.index}
	if meta, _, ok := dataOf(obj); ok {
		fields["name"] = meta.GetName()
		fields["namespace"] = meta.GetNamespace()
		fields["resourceVersion"] = meta.GetResourceVersion()
	}
	return fields
}

func storeSummary(st *informerState) map[string]interface{} {
	n, total, sum := checksum(st.informer.GetStore().List())
	return map[string]interface{}{
		"informer": st.index, "synced": st.synced.Load(), "objects": n, "bytes": total, "checksum": sum,
		"lists": st.lists.Load(), "watches": st.watches.Load(), "responseBytes": st.responseBytes.Load(),
	}
}

func main() {
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("logtostderr", "true")
	klog.SetOutput(os.Stderr)

	server := flag.String("server", "", "API server URL")
	resource := flag.String("resource", "secrets", "secrets or configmaps")
	namespace := flag.String("namespace", "", "one namespace (default: all)")
	count := flag.Int("informers", 1, "number of independent informers")
	contentType := flag.String("content-type", "default", "default, json, protobuf or cbor")
	watchList := flag.String("watch-list", "", "on or off: the WatchListClient feature gate (default: client-go's)")
	syncTimeout := flag.Float64("sync-timeout", 60, "seconds to wait for every informer to sync")
	runSeconds := flag.Float64("run-seconds", 0, "seconds to keep running after the sync")
	expectObjects := flag.Int("expect-objects", -1, "objects every informer must hold when synced (-1: any)")
	failFast := flag.Bool("fail-fast", false, "exit 4 at the first watch error before every informer has synced")
	writes := flag.Bool("writes", false, "once synced, create, update and delete one object through informer 0's clientset")
	verbosity := flag.String("v", "0", "klog verbosity (stderr)")
	flag.Parse()
	_ = klogFlags.Set("v", *verbosity)

	fail := func(code int, reason string) {
		emit("exit", map[string]interface{}{"synced": false, "reason": reason, "informers": []interface{}{}})
		os.Exit(code)
	}
	if *server == "" || *count < 1 || (*resource != "secrets" && *resource != "configmaps") {
		fail(64, "usage: informer --server URL [--resource secrets|configmaps] [--informers N] ...")
	}

	// Feature gates are read from the environment once, on first use: set them before anything asks.
	setDefault := func(name, value string) {
		if _, ok := os.LookupEnv(name); !ok {
			_ = os.Setenv(name, value)
		}
	}
	switch *watchList {
	case "on":
		setDefault("KUBE_FEATURE_WatchListClient", "true")
	case "off":
		setDefault("KUBE_FEATURE_WatchListClient", "false")
	case "":
	default:
		fail(64, "--watch-list must be on or off")
	}
	if *contentType == "cbor" {
		setDefault("KUBE_FEATURE_ClientsAllowCBOR", "true")
		setDefault("KUBE_FEATURE_ClientsPreferCBOR", "true")
	}
	gates := clientfeatures.FeatureGates()
	wl := gates.Enabled(clientfeatures.WatchListClient)
	allowCBOR := gates.Enabled(clientfeatures.ClientsAllowCBOR)
	emit("start", map[string]interface{}{
		"informers": *count, "contentType": *contentType, "watchList": wl, "allowCBOR": allowCBOR,
		"preferCBOR":          gates.Enabled(clientfeatures.ClientsPreferCBOR),
		"consistencyDetector": consistencydetector.IsDataConsistencyDetectionForWatchListEnabled(),
	})
	if (*watchList == "on" && !wl) || (*watchList == "off" && wl) {
		fail(64, fmt.Sprintf("--watch-list %s, but the WatchListClient gate is %v (KUBE_FEATURE_WatchListClient=%q)",
			*watchList, wl, os.Getenv("KUBE_FEATURE_WatchListClient")))
	}
	if *contentType == "cbor" && !allowCBOR {
		fail(64, "--content-type cbor needs KUBE_FEATURE_ClientsAllowCBOR=true")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	states := make([]*informerState, *count)
	syncedCh := make(chan int, *count)
	errCh := make(chan string, 1)
	var syncedAll atomic.Bool
	start := time.Now()
	for i := range states {
		st := &informerState{index: i}
		states[i] = st
		cfg := &rest.Config{Host: *server, QPS: 50, Burst: 100}
		switch *contentType {
		case "default":
		case "json":
			cfg.ContentType = "application/json"
			cfg.AcceptContentTypes = "application/json"
		case "protobuf":
			cfg.ContentType = "application/vnd.kubernetes.protobuf"
			cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf"
		case "cbor":
			cfg.ContentType = "application/cbor"
		default:
			fail(64, "--content-type must be default, json, protobuf or cbor")
		}
		// Its own transport: client-go would otherwise share http.DefaultTransport (and its idle connections)
		// between all clientsets of a TLS-less config.
		cfg.Transport = http.DefaultTransport.(*http.Transport).Clone()
		res := *resource
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return &recorder{st: st, resource: res, next: rt} }
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			fail(1, "kubernetes.NewForConfig: "+err.Error())
		}
		st.client = client
		var opts []informers.SharedInformerOption
		if *namespace != "" {
			opts = append(opts, informers.WithNamespace(*namespace))
		}
		factory := informers.NewSharedInformerFactoryWithOptions(client, 0, opts...)
		if res == "secrets" {
			st.informer = factory.Core().V1().Secrets().Informer()
		} else {
			st.informer = factory.Core().V1().ConfigMaps().Informer()
		}
		_ = st.informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			emit("error", map[string]interface{}{
				"informer": st.index, "error": err.Error(),
				"expired": apierrors.IsResourceExpired(err) || apierrors.IsGone(err),
			})
			if *failFast && !syncedAll.Load() {
				select {
				case errCh <- fmt.Sprintf("informer %d: %v", st.index, err):
				default:
				}
			}
		})
		reg, err := st.informer.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(obj interface{}, isInInitialList bool) {
				if isInInitialList {
					st.initialAdds.Add(1)
					return
				}
				emit("added", objectFields(st, obj))
			},
			UpdateFunc: func(_, obj interface{}) { emit("updated", objectFields(st, obj)) },
			DeleteFunc: func(obj interface{}) { emit("deleted", objectFields(st, obj)) },
		})
		if err != nil {
			fail(1, "AddEventHandler: "+err.Error())
		}
		factory.Start(ctx.Done())
		go func() {
			if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
				return
			}
			st.synced.Store(true)
			fields := storeSummary(st)
			delete(fields, "synced")
			delete(fields, "responseBytes")
			fields["seconds"] = time.Since(start).Seconds()
			fields["initialAdds"] = st.initialAdds.Load()
			emit("synced", fields)
			syncedCh <- st.index
		}()
	}

	finish := func(code int, reason string) {
		all := true
		summaries := make([]interface{}, len(states))
		for i, st := range states {
			summaries[i] = storeSummary(st)
			all = all && st.synced.Load()
		}
		emit("exit", map[string]interface{}{"synced": all, "reason": reason, "informers": summaries})
		cancel()
		os.Exit(code)
	}

	deadline := time.NewTimer(time.Duration(*syncTimeout * float64(time.Second)))
	for n := 0; n < *count; n++ {
		select {
		case i := <-syncedCh:
			if *expectObjects >= 0 {
				if got, _, _ := checksum(states[i].informer.GetStore().List()); got != *expectObjects {
					finish(3, fmt.Sprintf("informer %d synced with %d objects, expected %d", i, got, *expectObjects))
				}
			}
		case msg := <-errCh:
			finish(4, "watch error before the sync (--fail-fast): "+msg)
		case <-deadline.C:
			finish(2, fmt.Sprintf("not every informer synced within %g s", *syncTimeout))
		case s := <-signals:
			finish(2, "signal "+s.String()+" before the sync")
		}
	}
	deadline.Stop()
	syncedAll.Store(true)
	if *writes {
		ns := *namespace
		if ns == "" {
			ns = "default"
		}
		writeCycle(ctx, states[0].client, *resource, ns)
	}
	if *runSeconds > 0 {
		select {
		case <-time.After(time.Duration(*runSeconds * float64(time.Second))):
			finish(0, "run-seconds elapsed")
		case s := <-signals:
			finish(0, "signal "+s.String())
		}
	}
	finish(0, "synced")
}

// writeCycle writes one object named "client-go-write" through client (its content type: protobuf bodies by
// default, CBOR with ClientsPreferCBOR) and emits a "write" event per step.  Data values include every byte
// value and an empty one, so that bytes fields are carried as bytes.
func writeCycle(ctx context.Context, client kubernetes.Interface, resource, ns string) {
	all := make([]byte, 256)
	reversed := make([]byte, 256)
	for i := range all {
		all[i], reversed[i] = byte(i), byte(255-i)
	}
	meta := metav1.ObjectMeta{Name: "client-go-write", Namespace: ns, Labels: map[string]string{"step": "create"}}
	if resource == "secrets" {
		writeSteps[*corev1.Secret](ctx, client.CoreV1().Secrets(ns), &corev1.Secret{ObjectMeta: meta,
			Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"all": all, "empty": {}}},
			func(s *corev1.Secret) *corev1.Secret {
				s = s.DeepCopy()
				s.Data = map[string][]byte{"all": reversed, "added": []byte("x")}
				return s
			})
	} else {
		writeSteps[*corev1.ConfigMap](ctx, client.CoreV1().ConfigMaps(ns), &corev1.ConfigMap{ObjectMeta: meta,
			Data: map[string]string{"text": "h\u00e9llo"}, BinaryData: map[string][]byte{"all": all, "empty": {}}},
			func(c *corev1.ConfigMap) *corev1.ConfigMap {
				c = c.DeepCopy()
				c.Data = map[string]string{"text": "changed"}
				c.BinaryData = map[string][]byte{"all": reversed, "added": []byte("x")}
				return c
			})
	}
}

// typedClient is what writeSteps uses of a typed client (SecretInterface, ConfigMapInterface).
type typedClient[T metav1.Object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// writeSteps: create initial, get it, update it to changed(created) (label step=update), the same update again
// (created's resourceVersion: a conflict), a delete with a wrong UID, a delete with the right UID and
// resourceVersion, a get, and a last delete however the others went.
func writeSteps[T metav1.Object](ctx context.Context, api typedClient[T], initial T, changed func(T) T) {
	name := initial.GetName()
	del := func(step string, uid types.UID, rv string) {
		opts := metav1.DeleteOptions{}
		if uid != "" {
			opts.Preconditions = &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}
		}
		reportWrite(step, nil, api.Delete(ctx, name, opts))
	}
	defer del("delete-again", "", "")
	created, err := api.Create(ctx, initial, metav1.CreateOptions{})
	reportWrite("create", created, err)
	if err != nil {
		return
	}
	got, err := api.Get(ctx, name, metav1.GetOptions{})
	reportWrite("get", got, err)
	change := changed(created)
	change.SetLabels(map[string]string{"step": "update"})
	updated, err := api.Update(ctx, change, metav1.UpdateOptions{})
	reportWrite("update", updated, err)
	stale, err := api.Update(ctx, change, metav1.UpdateOptions{})
	reportWrite("stale-update", stale, err)
	if updated.GetUID() == "" { // the update failed: nothing of it to delete by
		return
	}
	del("delete-wrong-uid", types.UID("00000000-0000-0000-0000-000000000000"), updated.GetResourceVersion())
	del("delete", updated.GetUID(), updated.GetResourceVersion())
	gone, err := api.Get(ctx, name, metav1.GetOptions{})
	reportWrite("get-deleted", gone, err)
}

// reportWrite emits the "write" event of one step: its API error, or the object the server answered with.
func reportWrite(step string, obj interface{}, err error) {
	fields := map[string]interface{}{"step": step, "ok": err == nil, "code": 0, "reason": "", "error": ""}
	if err != nil {
		fields["error"] = err.Error()
		if status, ok := err.(apierrors.APIStatus); ok {
			fields["code"] = status.Status().Code
			fields["reason"] = string(status.Status().Reason)
		}
	} else if m, data, ok := dataOf(obj); ok {
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		_, _, sum := checksum([]interface{}{obj})
		fields["name"], fields["namespace"], fields["uid"] = m.GetName(), m.GetNamespace(), string(m.GetUID())
		fields["resourceVersion"], fields["labels"], fields["keys"], fields["checksum"] = m.GetResourceVersion(), m.GetLabels(), keys, sum
		if s, ok := obj.(*corev1.Secret); ok {
			fields["type"] = string(s.Type)
		}
	}
	emit("write", fields)
}

#!/usr/bin/env bash
# Builds the incumbent the benchmark (benches/provision.rs) compares us with:
# kubernetes-sigs/nfs-subdir-external-provisioner.
#
# The real thing cannot be built here. Its module
# (github.com/kubernetes-sigs/nfs-subdir-external-provisioner, last release
# v4.0.2 = Helm chart 4.0.18) and its controller library
# (sigs.k8s.io/sig-storage-lib-external-provisioner, every major version) are
# refused by the Go module proxy this project can reach ("403 This module
# version is not available"), and nothing else may be fetched. So this script
# builds a MODEL of it instead: a small Go program written for this benchmark
# (embedded below, it is not the upstream code) that does, request for request,
# what the incumbent does with its defaults:
#   - client-go clientset with the default client-side rate limit, QPS 5 /
#     burst 10 (the incumbent sets neither), from rest.InClusterConfig()
#     unless KUBECONFIG is set;
#   - GET /version at start; leader election on a Lease (15s/10s/2s) unless
#     ENABLE_LEADER_ELECTION=false; named after PROVISIONER_NAME ('/' -> '-');
#   - informers on claims, volumes and classes (resync 15 min); 4 claim and 4
#     volume workers; the library's rate-limited queues (per-item exponential
#     15s..1000s, overall 10/s burst 100 for retries), 15 retries;
#   - provision: event "Provisioning", mkdir -p /persistentvolumes/<ns>-<claim>-<pv>
#     (0777, chmod, chown), POST the PV (retried 5 x 10s), event
#     "ProvisioningSucceeded";
#   - reclaim of a Released PV with policy Delete: stat, GET the StorageClass
#     (from the API, not the cache), onDelete / archiveOnDelete, os.RemoveAll
#     (or rename to archived-...), DELETE the PV;
#   - logs "Started provisioner controller" when its workers start.
# Its figures are therefore those of the incumbent's algorithm and client
# settings on the same client library, not of the upstream binary itself. To
# bench the real binary (e.g. copied out of the upstream image), set
# INCUMBENT_BIN=/path/to/nfs-subdir-external-provisioner for the bench; it is
# run the same way (in-cluster config, /persistentvolumes).
#
# Usage: tests/e2e/incumbent.sh [--print-path]
# Builds into ${NFS3P_CACHE:-$HOME/.cache/nfs3-provisioner}/incumbent-model-<hash>/
# (keyed by this file's Go source and the client-go version) with the Go module
# cache of the control plane build, and prints the binary's path as the last
# line of stdout. Fast path: nothing is built when the binary is there.
set -euo pipefail

{
client_go_version=v0.33.13 # the control plane's release: already in the Go module cache

cache_root=${NFS3P_CACHE:-${HOME:-/root}/.cache/nfs3-provisioner}

main_go() {
  cat <<'GO'
// A model of nfs-subdir-external-provisioner (v4.0.2) with the defaults of
// sig-storage-lib-external-provisioner, written for the nfs3-provisioner
// benchmark. See tests/e2e/incumbent.sh for what it reproduces and why it
// exists. Not the upstream code.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcore "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/tools/reference"
	"k8s.io/client-go/util/workqueue"
)

const (
	root          = "/persistentvolumes" // where the incumbent expects the export mounted
	annProvBy     = "pv.kubernetes.io/provisioned-by"
	annProv       = "volume.kubernetes.io/storage-provisioner"
	annProvBeta   = "volume.beta.kubernetes.io/storage-provisioner"
	workers       = 4
	maxRetries    = 15
	storeRetries  = 5
	storeInterval = 10 * time.Second
)

type ctl struct {
	client     kubernetes.Interface
	name       string
	server     string
	path       string
	claims     cache.Indexer
	volumes    cache.Store
	classes    cache.Store
	claimQ     workqueue.TypedRateLimitingInterface[string]
	volumeQ    workqueue.TypedRateLimitingInterface[string]
	recorder   record.EventRecorder
	claimInf   cache.SharedIndexInformer
	volumeInf  cache.SharedIndexInformer
	classInf   cache.SharedIndexInformer
}

func limiter() workqueue.TypedRateLimiter[string] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](15*time.Second, 1000*time.Second),
		&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}

func mustEnv(k string) string {
	v := os.Getenv(k)
	if v == "" {
		log.Fatalf("%s not set", k)
	}
	return v
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	server, path, name := mustEnv("NFS_SERVER"), mustEnv("NFS_PATH"), mustEnv("PROVISIONER_NAME")
	var cfg *rest.Config
	var err error
	if kc := os.Getenv("KUBECONFIG"); kc != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kc)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		log.Fatalf("config: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg) // QPS 0 -> client-go default 5, burst 10
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	ver, err := client.Discovery().ServerVersion()
	if err != nil {
		log.Fatalf("server version: %v", err)
	}
	log.Printf("server version %s", ver.GitVersion)
	leader := true
	if s := os.Getenv("ENABLE_LEADER_ELECTION"); s != "" {
		if leader, err = strconv.ParseBool(s); err != nil {
			log.Fatalf("ENABLE_LEADER_ELECTION: %v", err)
		}
	}

	host, _ := os.Hostname()
	id := host + "_" + string(uuid.NewUUID())
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcore.EventSinkImpl{Interface: client.CoreV1().Events(v1.NamespaceAll)})
	c := &ctl{
		client: client, name: name, server: server, path: path,
		claimQ:   workqueue.NewTypedRateLimitingQueueWithConfig(limiter(), workqueue.TypedRateLimitingQueueConfig[string]{Name: "claims"}),
		volumeQ:  workqueue.NewTypedRateLimitingQueueWithConfig(limiter(), workqueue.TypedRateLimitingQueueConfig[string]{Name: "volumes"}),
		recorder: bc.NewRecorder(scheme.Scheme, v1.EventSource{Component: name + "_" + id}),
	}
	f := informers.NewSharedInformerFactory(client, 15*time.Minute)
	c.claimInf = f.Core().V1().PersistentVolumeClaims().Informer()
	c.claimInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.addClaim(o) },
		UpdateFunc: func(_, o any) { c.addClaim(o) },
	})
	if err := c.claimInf.AddIndexers(cache.Indexers{"uid": func(o any) ([]string, error) {
		m, err := metaOf(o)
		if err != nil {
			return nil, err
		}
		return []string{string(m.GetUID())}, nil
	}}); err != nil {
		log.Fatalf("indexer: %v", err)
	}
	c.claims = c.claimInf.GetIndexer()
	c.volumeInf = f.Core().V1().PersistentVolumes().Informer()
	c.volumeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { c.addVolume(o) },
		UpdateFunc: func(_, o any) { c.addVolume(o) },
		DeleteFunc: func(o any) {
			if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o); err == nil {
				c.volumeQ.Forget(k)
			}
		},
	})
	c.volumes = c.volumeInf.GetStore()
	c.classInf = f.Storage().V1().StorageClasses().Informer()
	c.classes = c.classInf.GetStore()

	ctx := context.Background()
	if !leader {
		c.run(ctx)
		return
	}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
			ns = strings.TrimSpace(string(b))
		}
	}
	if ns == "" {
		ns = "default"
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, ns, strings.ReplaceAll(name, "/", "-"),
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id, EventRecorder: c.recorder})
	if err != nil {
		log.Fatalf("lock: %v", err)
	}
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: c.run,
			OnStoppedLeading: func() { log.Fatalf("leader election lost") },
		},
	})
}

func metaOf(o any) (metav1.Object, error) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("not an object: %T", o)
	}
	return m, nil
}

func (c *ctl) addClaim(o any) {
	if m, err := metaOf(o); err == nil {
		c.claimQ.Add(string(m.GetUID()))
	}
}

func (c *ctl) addVolume(o any) {
	if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o); err == nil {
		c.volumeQ.Add(k)
	}
}

func (c *ctl) run(ctx context.Context) {
	log.Printf("Starting provisioner controller %s", c.name)
	go c.claimInf.Run(ctx.Done())
	go c.volumeInf.Run(ctx.Done())
	go c.classInf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.claimInf.HasSynced, c.volumeInf.HasSynced, c.classInf.HasSynced) {
		return
	}
	for i := 0; i < workers; i++ {
		go wait.Until(func() { for c.next(ctx, c.claimQ, c.syncClaim) {} }, time.Second, ctx.Done())
		go wait.Until(func() { for c.next(ctx, c.volumeQ, c.syncVolume) {} }, time.Second, ctx.Done())
	}
	log.Printf("Started provisioner controller %s", c.name)
	<-ctx.Done()
}

func (c *ctl) next(ctx context.Context, q workqueue.TypedRateLimitingInterface[string], sync func(context.Context, string) error) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	if err := sync(ctx, key); err != nil {
		if q.NumRequeues(key) < maxRetries {
			q.AddRateLimited(key)
		}
		log.Printf("error syncing %q: %v", key, err)
		return true
	}
	q.Forget(key)
	return true
}

func (c *ctl) class(name string) (*storagev1.StorageClass, error) {
	o, ok, err := c.classes.GetByKey(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("storageClass %q not found", name)
	}
	return o.(*storagev1.StorageClass), nil
}

func claimClass(pvc *v1.PersistentVolumeClaim) string {
	if s, ok := pvc.Annotations[v1.BetaStorageClassAnnotation]; ok {
		return s
	}
	if pvc.Spec.StorageClassName != nil {
		return *pvc.Spec.StorageClassName
	}
	return ""
}

func (c *ctl) syncClaim(ctx context.Context, uid string) error {
	objs, err := c.claims.ByIndex("uid", uid)
	if err != nil || len(objs) == 0 {
		return err
	}
	pvc := objs[0].(*v1.PersistentVolumeClaim)
	if pvc.Spec.VolumeName != "" {
		return nil
	}
	p, ok := pvc.Annotations[annProv]
	if !ok {
		p, ok = pvc.Annotations[annProvBeta]
	}
	if !ok || p != c.name {
		return nil
	}
	cls, err := c.class(claimClass(pvc))
	if err != nil {
		return err
	}
	if cls.VolumeBindingMode != nil && *cls.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
		return nil
	}
	pvName := "pvc-" + string(pvc.UID)
	if _, exists, _ := c.volumes.GetByKey(pvName); exists {
		return nil
	}
	ref, err := reference.GetReference(scheme.Scheme, pvc)
	if err != nil {
		return err
	}
	if cls.Provisioner != c.name {
		return nil
	}
	c.recorder.Event(pvc, v1.EventTypeNormal, "Provisioning", fmt.Sprintf("External provisioner is provisioning volume for claim \"%s/%s\"", pvc.Namespace, pvc.Name))
	pv, err := c.provision(pvc, cls, pvName)
	if err != nil {
		c.recorder.Event(pvc, v1.EventTypeWarning, "ProvisioningFailed", err.Error())
		return err
	}
	pv.Spec.ClaimRef = ref
	metav1.SetMetaDataAnnotation(&pv.ObjectMeta, annProvBy, cls.Provisioner)
	pv.Spec.StorageClassName = claimClass(pvc)
	for i := 0; ; i++ {
		_, err = c.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		if i+1 >= storeRetries {
			c.recorder.Event(pvc, v1.EventTypeWarning, "ProvisioningFailed", err.Error())
			return err
		}
		time.Sleep(storeInterval)
	}
	c.recorder.Event(pvc, v1.EventTypeNormal, "ProvisioningSucceeded", fmt.Sprintf("Successfully provisioned volume %s", pvName))
	return nil
}

func (c *ctl) provision(pvc *v1.PersistentVolumeClaim, cls *storagev1.StorageClass, pvName string) (*v1.PersistentVolume, error) {
	if pvc.Spec.Selector != nil {
		return nil, fmt.Errorf("claim Selector is not supported")
	}
	dir := strings.Join([]string{pvc.Namespace, pvc.Name, pvName}, "-")
	full, path := filepath.Join(root, dir), filepath.Join(c.path, dir)
	mode := os.FileMode(0o777)
	if err := os.MkdirAll(full, mode); err != nil {
		return nil, fmt.Errorf("unable to create directory to provision new pv: %v", err)
	}
	_ = os.Chmod(full, mode)
	_ = os.Chown(full, 0, 0)
	policy := v1.PersistentVolumeReclaimDelete
	if cls.ReclaimPolicy != nil {
		policy = *cls.ReclaimPolicy
	}
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: policy,
			AccessModes:                   pvc.Spec.AccessModes,
			MountOptions:                  cls.MountOptions,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: pvc.Spec.Resources.Requests[v1.ResourceStorage]},
			PersistentVolumeSource:        v1.PersistentVolumeSource{NFS: &v1.NFSVolumeSource{Server: c.server, Path: path}},
		},
	}, nil
}

func (c *ctl) syncVolume(ctx context.Context, key string) error {
	o, ok, err := c.volumes.GetByKey(key)
	if err != nil || !ok {
		return err
	}
	pv := o.(*v1.PersistentVolume)
	if pv.Annotations[annProvBy] != c.name || pv.DeletionTimestamp != nil ||
		pv.Status.Phase != v1.VolumeReleased || pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete {
		return nil
	}
	if err := c.remove(ctx, pv); err != nil {
		c.recorder.Event(pv, v1.EventTypeWarning, "VolumeFailedDelete", err.Error())
		return err
	}
	return c.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
}

func (c *ctl) remove(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.NFS == nil {
		return nil
	}
	base := filepath.Base(pv.Spec.NFS.Path)
	old := filepath.Join(root, base)
	if _, err := os.Stat(old); os.IsNotExist(err) {
		return nil
	}
	if pv.Spec.StorageClassName == "" {
		return fmt.Errorf("volume has no storage class")
	}
	cls, err := c.client.StorageV1().StorageClasses().Get(ctx, pv.Spec.StorageClassName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	switch cls.Parameters["onDelete"] {
	case "delete":
		return os.RemoveAll(old)
	case "retain":
		return nil
	}
	if s, ok := cls.Parameters["archiveOnDelete"]; ok {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		if !b {
			return os.RemoveAll(old)
		}
	}
	return os.Rename(old, filepath.Join(root, "archived-"+base))
}
GO
}

key=$( { main_go; echo "$client_go_version"; } | sha256sum | cut -c1-12)
dir="$cache_root/incumbent-model-$key"
bin="$dir/bin/nfs-subdir-external-provisioner"

if [[ ${1:-} == --print-path ]]; then
  echo "$bin"
  exit 0
fi
if [[ -x $bin ]]; then
  echo "$bin"
  exit 0
fi

go=$(command -v go || true)
[[ -z $go && -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go
if [[ -z $go ]]; then
  echo "incumbent.sh: no Go toolchain found" >&2
  exit 1
fi

mkdir -p "$dir"
exec 9>"$dir/.build.lock"
flock 9
if [[ -x $bin ]]; then
  echo "$bin"
  exit 0
fi
echo "incumbent.sh: the real nfs-subdir-external-provisioner is not available from the Go module proxy here;" >&2
echo "incumbent.sh: building the model of it (client-go $client_go_version) into $dir" >&2
src="$dir/src"
rm -rf "$src"
mkdir -p "$src"
main_go >"$src/main.go"
cat >"$src/go.mod" <<EOF
module nfs3-provisioner/bench/incumbent-model

go 1.24.0

require k8s.io/client-go $client_go_version
EOF
export CGO_ENABLED=0
# Resolve the rest of the module graph (all of it is in the Go module cache
# already when the control plane was built), then build.
(cd "$src" && GOFLAGS=-mod=mod "$go" mod tidy >&2 && "$go" build -trimpath -ldflags="-s -w" -o "$dir/bin.tmp/nfs-subdir-external-provisioner" . >&2)
mkdir -p "$dir/bin"
mv -f "$dir/bin.tmp/nfs-subdir-external-provisioner" "$bin"
rm -rf "$dir/bin.tmp"
echo "incumbent.sh: built $bin" >&2
echo "$bin"
exit 0
}

//! Wiring: caches of classes, claims and volumes; one controller that provisions claims
//! ([`provision`]) and one that reclaims released volumes ([`reclaim`]).

pub mod cached_volume;
mod directories;
mod provision;
mod reclaim;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::WatchParams;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use thiserror::Error;
use tracing::{info, warn};

use crate::backend::{BackendError, Shares};
use crate::params::Defaults;
use crate::path::{self, Dialect};
use crate::plan;
use cached_volume::CachedVolume;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Refused(String),
    /// The claim's directory exists and nothing says it may be handed over.
    #[error("{0}")]
    Existing(String),
    /// Another volume goes first; this one is retried.
    #[error("{0}")]
    Waiting(String),
    /// The directory is still used by live volumes; retried until they are released.
    #[error("{0}")]
    InUse(String),
}

impl Error {
    /// Whether retrying soon can help. Permanent failures need someone to act (access
    /// denied or a read-only export, a name the server refuses, an edited PV annotation,
    /// an API request the server rejects as forbidden or invalid): they are reported
    /// once per retry and retried slowly, every [`PERMANENT_RETRY`].
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => matches!(s.code, 400 | 403 | 404 | 405 | 413 | 422),
            Error::Kube(_) => false,
            Error::Backend(e) => e.is_permanent(),
            Error::Refused(_) | Error::Existing(_) => true,
            Error::Waiting(_) | Error::InUse(_) => false,
        }
    }

    /// What the event says about the next attempt.
    pub(crate) fn retry_note(&self) -> &'static str {
        if self.is_permanent() {
            "this needs an administrator to act; retrying every 5 minutes"
        } else {
            "will retry"
        }
    }
}

/// How often a permanent failure is tried again: it may have been fixed meanwhile.
const PERMANENT_RETRY: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub provisioner: String,
    pub defaults: Defaults,
    pub shares: Shares,
    pub classes: Store<StorageClass>,
    pub volumes: Store<CachedVolume>,
    directories: directories::Directories,
    /// Consecutive failures per object uid and when the last one was, for exponential
    /// backoff that never gives up. Entries of objects that stopped failing without
    /// succeeding (deleted meanwhile) are dropped after [`FAILURE_MEMORY`].
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// PV uids this process has just reclaimed, and how far. Deleting the PV brings one
    /// more event for it (deletion timestamp set, our finalizer still on) from before
    /// the finalizer went; this spares running the idempotent steps again for it.
    reclaimed: Mutex<HashMap<String, (Instant, Reclaimed)>>,
}

/// How far this process got with reclaiming one volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reclaimed {
    Data,
    Finalizer,
}

/// How long a reclaimed uid is remembered: far longer than the one event it is for.
const RECLAIMED_MEMORY: Duration = Duration::from_secs(600);

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        provisioner: String,
        defaults: Defaults,
        shares: Shares,
        classes: Store<StorageClass>,
        volumes: Store<CachedVolume>,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            provisioner,
            defaults,
            shares,
            classes,
            volumes,
            directories: Default::default(),
            failures: Mutex::new(HashMap::new()),
            reclaimed: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes without holding up the caller: for events that follow the work, so a
    /// worker slot is free again as soon as the work is done.
    fn publish_detached<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let reference = obj.object_ref(&());
        let ev = event(type_, reason, note);
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                warn!(error = %e, reason, "could not publish event");
            }
        });
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = event(type_, reason, note);
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    fn mark_reclaimed(&self, uid: &str, stage: Reclaimed) {
        if uid.is_empty() {
            return;
        }
        let mut r = self.reclaimed.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        r.retain(|_, (at, _)| now.duration_since(*at) < RECLAIMED_MEMORY);
        let entry = r.entry(uid.to_string()).or_insert((now, stage));
        *entry = (now, entry.1.max(stage));
    }

    fn reclaimed(&self, uid: &str) -> Option<Reclaimed> {
        self.reclaimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .filter(|(at, _)| at.elapsed() < RECLAIMED_MEMORY)
            .map(|(_, stage)| *stage)
    }

    fn succeeded(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// 1 s, 2 s, 4 s ... capped at 5 minutes, per object, with up to a fifth added at
    /// random so objects that failed together (a server outage) do not all come back in
    /// the same instant: a claim keeps being retried, and one bad claim does not slow
    /// the others.
    fn backoff(&self, uid: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Longer than the longest backoff: an entry not renewed that long is for an
        // object that is gone.
        f.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_MEMORY);
        let (n, at) = f.entry(uid.to_string()).or_insert((0, now));
        *n = n.saturating_add(1);
        *at = now;
        let base = backoff_delay(*n);
        let fifth = u64::try_from(base.as_millis() / 5).unwrap_or(0).max(1);
        let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(fifth)) as u64;
        base + Duration::from_millis(jitter)
    }
}

/// Claims per list page: at most about 15 MB of tenant metadata in memory at once.
const CLAIM_PAGE_SIZE: u32 = 10;

const FAILURE_MEMORY: Duration = Duration::from_secs(3600);

pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::Waiting(_)) {
        // Soon: the volume it waits for is usually reclaimed within seconds.
        return Action::requeue(Duration::from_secs(5));
    }
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let backoff = ctx.backoff(&uid);
    let delay = if err.is_permanent() {
        backoff.max(PERMANENT_RETRY)
    } else {
        backoff
    };
    warn!(name = obj.meta().name.as_deref().unwrap_or(""), error = %err, permanent = err.is_permanent(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Drops what the controllers never read, so the caches stay small at thousands of objects.
fn strip<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(ann) = obj.meta_mut().annotations.as_mut() {
        ann.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What of a claim's metadata the served classes read: the cache keeps only that, so a
/// tenant cannot grow the provisioner's memory with labels and annotations on claims
/// (of any class) that it never looks at.
#[derive(Debug, Default)]
pub struct Served {
    classes: HashSet<String>,
    labels: HashSet<String>,
    annotations: HashSet<String>,
    /// Classes already warned about, with the template warned about.
    warned: HashSet<(String, String)>,
}

/// Annotations provisioning reads whatever the class.
const READ_ANNOTATIONS: &[&str] = &[
    plan::ANN_STORAGE_PROVISIONER,
    plan::ANN_STORAGE_PROVISIONER_BETA,
    plan::ANN_SELECTED_NODE,
    plan::ANN_CLASS_BETA,
];

/// Marks a cached claim that lost labels or annotations to [`strip_claim`]: if its class
/// turns out to need them (a class made after the claim), provisioning reads it again.
pub(crate) const ANN_STRIPPED: &str = "nfs3-provisioner.io/cache-stripped";

/// Longest template value kept: a longer one cannot make a valid path anyway (1024
/// bytes at most), and this much still fails path validation the same way.
const MAX_KEPT_VALUE: usize = 1025;

impl Served {
    /// Recomputes what the classes of `provisioner` read, and warns once per class whose
    /// template lets claims of different namespaces collide.
    fn update(&mut self, classes: &[Arc<StorageClass>], provisioner: &str) {
        self.classes.clear();
        self.labels.clear();
        self.annotations.clear();
        for class in classes.iter().filter(|c| c.provisioner == provisioner) {
            let name = class.metadata.name.clone().unwrap_or_default();
            self.classes.insert(name.clone());
            let params = class.parameters.clone().unwrap_or_default();
            let template = [
                ("pathPattern", Dialect::PathPattern),
                ("subDir", Dialect::SubDir),
            ]
            .into_iter()
            .find_map(|(k, d)| params.get(k).map(|t| (t.clone(), d)));
            let Some((template, dialect)) = template else {
                continue;
            };
            let (labels, annotations) = path::used_keys(&template, dialect);
            self.labels.extend(labels);
            self.annotations.extend(annotations);
            let sharing = params.get("directorySharing").map(String::as_str);
            if let Some(why) = path::collision_risk(&template, dialect)
                && sharing != Some("any")
                && self.warned.insert((name.clone(), template.clone()))
            {
                warn!(
                    class = name,
                    template,
                    "StorageClass template can give claims of different namespaces the same or nested directories: {why}; such claims are refused, but a safer template starts with the namespace as a segment of its own, e.g. \"${{.PVC.namespace}}/${{.PVC.name}}\""
                );
            }
        }
    }
}

/// Strips a claim to what provisioning reads. A claim that names a volume is never
/// provisioned again (it stays bound, or goes Lost), so of those, the cache keeps only
/// what says so: with thousands of bound claims in a cluster, their labels, annotations
/// and status are most of the cache.
fn strip_claim(pvc: &mut PersistentVolumeClaim, served: &Served) {
    strip(pvc);
    let meta = &mut pvc.metadata;
    meta.owner_references = None;
    meta.finalizers = None;
    pvc.status = pvc.status.take().map(|s| PersistentVolumeClaimStatus {
        phase: s.phase,
        ..Default::default()
    });
    let Some(spec) = pvc.spec.as_mut() else {
        return;
    };
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        *spec = PersistentVolumeClaimSpec {
            volume_name: spec.volume_name.take(),
            storage_class_name: spec.storage_class_name.take(),
            ..Default::default()
        };
        let meta = &mut pvc.metadata;
        meta.annotations = None;
        meta.labels = None;
        return;
    }
    let ours = plan::class_name(pvc).is_some_and(|c| served.classes.contains(c));
    let meta = &mut pvc.metadata;
    let mut stripped = false;
    if let Some(labels) = meta.labels.as_mut() {
        let before = labels.len();
        labels.retain(|k, _| ours && served.labels.contains(k));
        labels.values_mut().for_each(truncate);
        stripped |= labels.len() != before;
    }
    if let Some(ann) = meta.annotations.as_mut() {
        let before = ann.len();
        ann.retain(|k, _| {
            READ_ANNOTATIONS.contains(&k.as_str()) || (ours && served.annotations.contains(k))
        });
        ann.values_mut().for_each(truncate);
        stripped |= ann.len() != before;
    }
    if stripped {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(ANN_STRIPPED.to_string(), String::new());
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary; true if it cut.
fn cut_to(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    true
}

fn truncate(v: &mut String) {
    cut_to(v, MAX_KEPT_VALUE);
}

fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    strip: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

/// Whether the API server sends a watch's initial list as events (streaming lists, the
/// WatchList feature: beta but off by default in Kubernetes 1.33, which refuses such a
/// watch with 422). A streamed list holds one object at a time where a listed page holds
/// all of its own, and needs no round trip per page. Asked once, with a selector no claim
/// has, so the answer carries no objects; anything but a yes falls back to lists.
async fn streams_lists(client: &Client) -> bool {
    let probe = WatchParams::streaming_lists()
        .labels("nfs3-provisioner.io/streaming-list-probe")
        .timeout(1);
    match Api::<PersistentVolumeClaim>::all(client.clone())
        .watch(&probe, "0")
        .await
    {
        Ok(_) => {
            info!("API server streams initial lists: caches are filled from watches");
            true
        }
        Err(e) => {
            info!(answer = %e, "API server does not stream initial lists: caches are filled from lists");
            false
        }
    }
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    ctx_parts: impl FnOnce(Store<StorageClass>, Store<CachedVolume>) -> Context,
    concurrency: u16,
    ready: Arc<crate::http::Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let streaming = streams_lists(&client).await;
    // Classes and PVs are made by the cluster's admins: listed from the API server's
    // cache, whole, unless it can stream them.
    let admin_made = || {
        if streaming {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default().any_semantic()
        }
    };
    let (classes, class_events) = cached(
        Api::<StorageClass>::all(client.clone()),
        admin_made(),
        strip,
    );
    // The provisioner's name is in the context, made once the stores exist; the streams
    // run only after that. Until it is set, nothing is cut.
    let provisioner = Arc::new(std::sync::OnceLock::<String>::new());
    let (volumes, volume_events) =
        cached(Api::<CachedVolume>::all(client.clone()), admin_made(), {
            let provisioner = provisioner.clone();
            move |pv: &mut CachedVolume| {
                strip(pv);
                if let Some(p) = provisioner.get() {
                    pv.strip_foreign(p);
                }
            }
        });
    let served = Arc::new(RwLock::new(Served::default()));
    // Claims are made by tenants, up to about 1.5 MB each: streamed one at a time where
    // the API server can, otherwise listed in small pages (the API server ignores page
    // sizes for lists from its cache); each is stripped before the next is read, so a
    // tenant's bloated claims never sit in memory together.
    let tenant_made = if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default().page_size(CLAIM_PAGE_SIZE)
    };
    let (claims, claim_events) = cached(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        tenant_made,
        {
            let served = served.clone();
            move |pvc: &mut PersistentVolumeClaim| {
                strip_claim(pvc, &served.read().unwrap_or_else(|p| p.into_inner()));
            }
        },
    );
    let ctx = Arc::new(ctx_parts(classes.clone(), volumes.clone()));
    let _ = provisioner.set(ctx.provisioner.clone());
    let config = ControllerConfig::default().concurrency(concurrency);

    // A new or changed class may make waiting claims provisionable: look at all again.
    // The store already holds the change when its event comes through here.
    let class_changed = class_events.filter_map({
        let (classes, provisioner) = (classes.clone(), ctx.provisioner.clone());
        move |r| {
            if r.is_ok() {
                served
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .update(&classes.state(), &provisioner);
            }
            async move { r.ok().map(|_| ()) }
        }
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let claims_ctl = Controller::for_stream(claim_events, claims.clone())
        .with_config(config.clone())
        .reconcile_all_on(class_changed)
        .graceful_shutdown_on(wait(shutdown_rx.clone()))
        .run(provision::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let volumes_ctl = Controller::for_stream(volume_events, volumes.clone())
        .with_config(config)
        .graceful_shutdown_on(wait(shutdown_rx))
        .run(reclaim::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});

    let (c1, v1, k1) = (classes.clone(), volumes.clone(), claims.clone());
    let readiness = tokio::spawn(async move {
        let (a, b, c) = tokio::join!(synced(&c1), synced(&v1), synced(&k1));
        if a.is_ok() && b.is_ok() && c.is_ok() {
            info!(
                classes = c1.state().len(),
                volumes = v1.state().len(),
                claims = k1.state().len(),
                "caches synced"
            );
            ready.set_synced(true);
        }
    });
    let controllers = async { tokio::join!(claims_ctl, volumes_ctl) };
    tokio::pin!(controllers);
    tokio::select! {
        _ = &mut controllers => {}
        _ = shutdown => {
            // Stop taking new work and let reconciles under way finish.
            let _ = shutdown_tx.send(true);
            controllers.await;
        }
    }
    readiness.abort();
    info!("controllers stopped");
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    let note = cap_note(note);
    // kube's Recorder counts events with the same type, reason and action as one series
    // and keeps the first note: a claim whose failure changes (another volume's
    // directory, then an unrecorded one) would keep showing the first. The action
    // carries a hash of the note, so each distinct message is an event of its own and
    // a repeated one still counts up.
    let action = match type_ {
        EventType::Normal => reason.to_string(),
        EventType::Warning => format!("{reason}-{:016x}", plan::fnv1a(note.as_bytes())),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action,
        secondary: None,
    }
}

/// The API refuses notes over 1 kB (bytes, not characters): cut at a character boundary.
fn cap_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        cut_to(&mut note, MAX - 3);
        note.push_str("...");
    }
    note
}

/// Waits for a store's first full list. The controller waits on the same store, and a
/// store wakes only one of several waiters (kube-runtime's DelayedInit keeps one waker),
/// so this asks again every 50 ms instead of relying on being woken (readiness
/// then lags the real sync by at most that).
async fn synced<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await
        {
            return r;
        }
    }
}

pub(crate) fn name_of<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", obj.meta().name.as_deref().unwrap_or("")),
        None => obj.meta().name.clone().unwrap_or_default(),
    }
}

pub(crate) fn uid_of<K: ResourceExt>(obj: &K) -> String {
    obj.uid().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_fit_in_1024_bytes_whatever_the_characters() {
        for s in [
            "a".repeat(5000),
            "\u{e9}".repeat(2000),
            "\u{1F600}".repeat(700),
        ] {
            let n = cap_note(s.clone());
            assert!(n.len() <= 1024, "{}", n.len());
            assert!(n.ends_with("..."));
        }
        assert_eq!(cap_note("short".into()), "short");
    }

    #[test]
    fn failures_that_need_an_administrator_are_told_apart() {
        use crate::backend::{BackendError, NfsStatus};
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        let status = |status| {
            Error::Backend(BackendError::Status {
                op: "MKDIR",
                path: "p".into(),
                status,
            })
        };
        for (err, permanent) in [
            (api(403), true),
            (api(422), true),
            (api(409), false),
            (api(500), false),
            (api(429), false),
            (status(NfsStatus::NFS3ERR_ACCES), true),
            (status(NfsStatus::NFS3ERR_ROFS), true),
            (status(NfsStatus::NFS3ERR_NAMETOOLONG), true),
            (status(NfsStatus::NFS3ERR_JUKEBOX), false),
            (status(NfsStatus::NFS3ERR_NOSPC), false),
            (Error::Refused("bad annotation".into()), true),
            (Error::Waiting("first".into()), false),
            (Error::InUse("shared".into()), false),
        ] {
            assert_eq!(err.is_permanent(), permanent, "{err}");
            assert_eq!(err.retry_note().contains("administrator"), permanent);
        }
    }

    #[test]
    fn different_warnings_are_different_events_and_the_same_one_repeats() {
        let a = event(EventType::Warning, "ProvisioningFailed", "one".into());
        let b = event(EventType::Warning, "ProvisioningFailed", "two".into());
        let a2 = event(EventType::Warning, "ProvisioningFailed", "one".into());
        assert_ne!(a.action, b.action);
        assert_eq!(a.action, a2.action);
        assert!(a.action.starts_with("ProvisioningFailed-") && a.action.len() < 128);
        let n = event(EventType::Normal, "Provisioning", "x".into());
        assert_eq!(n.action, "Provisioning");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let got: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    fn claim(volume_name: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "c", "namespace": "ns", "uid": "u",
                "labels": {"team": "a"},
                "annotations": {
                    "volume.kubernetes.io/storage-provisioner": "p",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"
                },
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "nfs",
                "volumeName": volume_name
            },
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}
        }))
        .unwrap()
    }

    #[test]
    fn bound_claims_are_cached_as_bound_and_nothing_more() {
        let mut c = claim(Some("pvc-u"));
        strip_claim(&mut c, &Served::default());
        assert_eq!(c.metadata.name.as_deref(), Some("c"));
        assert_eq!(c.metadata.uid.as_deref(), Some("u"));
        assert!(c.metadata.annotations.is_none() && c.metadata.labels.is_none());
        assert!(c.metadata.managed_fields.is_none());
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(spec.volume_name.as_deref(), Some("pvc-u"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert!(spec.access_modes.is_none() && spec.resources.is_none());
        assert_eq!(c.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
        assert!(c.status.as_ref().unwrap().capacity.is_none());
        // Even with a class of ours, a claim that names a volume is left alone.
        let class = StorageClass {
            metadata: kube::api::ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            provisioner: "p".into(),
            ..Default::default()
        };
        assert!(matches!(
            crate::plan::decide_claim(&c, Some(&class), "p"),
            crate::plan::ClaimDecision::Skip("claim already names a volume")
        ));
    }

    #[test]
    fn claims_waiting_for_a_volume_keep_what_provisioning_reads() {
        let served = Served {
            classes: HashSet::from(["nfs".to_string()]),
            labels: HashSet::from(["team".to_string()]),
            annotations: HashSet::from(["example.com/folder".to_string()]),
            warned: HashSet::new(),
        };
        let mut c = claim(None);
        let meta = &mut c.metadata;
        let labels = meta.labels.as_mut().unwrap();
        labels.insert("huge".into(), "x".repeat(60));
        labels.insert("team".into(), "a".into());
        let ann = meta.annotations.as_mut().unwrap();
        ann.insert("example.com/folder".into(), "y".repeat(300_000));
        ann.insert("example.com/other".into(), "z".repeat(300_000));
        strip_claim(&mut c, &served);
        assert!(c.metadata.managed_fields.is_none());
        let ann = c.metadata.annotations.as_ref().unwrap();
        assert!(ann.contains_key("volume.kubernetes.io/storage-provisioner"));
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!ann.contains_key("example.com/other"));
        assert_eq!(ann["example.com/folder"].len(), MAX_KEPT_VALUE);
        assert!(ann.contains_key(ANN_STRIPPED));
        let labels = c.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["team"], "a");
        assert!(c.spec.as_ref().unwrap().resources.is_some());
        assert!(c.status.as_ref().unwrap().capacity.is_none());

        // A claim of a class that is not ours keeps no label and only the annotations
        // every claim is read for.
        let mut foreign = claim(None);
        foreign.spec.as_mut().unwrap().storage_class_name = Some("other".into());
        strip_claim(&mut foreign, &served);
        assert!(foreign.metadata.labels.as_ref().unwrap().is_empty());
        let ann = foreign.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.len(), 2, "{ann:?}");
    }
}

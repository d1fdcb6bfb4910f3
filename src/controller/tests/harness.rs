//! What the reconciler tests stand on: a scripted, strict API server behind kube's own
//! client (tower-test's mock service), a controller context on a temporary share with
//! the real `mounted` backend, and the claims, classes and volumes the tests start from.
//! Every name of the controller the tests depend on (context constructor, reconcilers,
//! error policy, plan constants) is used here only, so a rename costs one line here.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::backend::{BackendConfig, Shares};
pub(crate) use crate::controller::cache::ANN_STRIPPED;
use crate::controller::cached_volume::CachedVolume;
use crate::controller::{Context, Error, error_policy, provision, reclaim};
use crate::params::Defaults;
pub use crate::plan::{
    ANN_DIRECTORY, ANN_ON_DELETE, ANN_PROVISIONED_BY, ANN_SERVER, ANN_SHARE,
    ANN_STORAGE_PROVISIONER, FINALIZER,
};

pub const PROVISIONER: &str = "nfs3-provisioner.io/nfs";
pub const SERVER: &str = "10.0.0.5";
pub const SHARE: &str = "/srv/k8s";
pub const NS: &str = "team-a";
pub const CLAIM: &str = "data";
pub const CLAIM_UID: &str = "0b5e7c2a-1d4f-4a6b-9c3e-8f2d1a0b9c7e";
pub const PV: &str = "pvc-0b5e7c2a-1d4f-4a6b-9c3e-8f2d1a0b9c7e";
/// The default directory name of the claim above: `<namespace>-<claim>-<pv>`.
pub const DIR: &str = "team-a-data-pvc-0b5e7c2a-1d4f-4a6b-9c3e-8f2d1a0b9c7e";
pub const PV_PATH: &str = "/api/v1/persistentvolumes";
pub const CLAIM_PATH: &str = "/api/v1/namespaces/team-a/persistentvolumeclaims/data";

/// A reconcile that takes longer than this is hung (nothing here waits on a timer).
const DEADLINE: Duration = Duration::from_secs(20);

/// One request the reconciler made, other than an event.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: Value,
    /// The directories on the share when the request arrived, so a test can tell what
    /// was done to the share before and after each API write.
    pub share_then: Vec<String>,
}

impl Call {
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// One event the reconciler published (POST, or PATCH of a repeated one).
#[derive(Clone, Debug)]
pub struct SeenEvent {
    pub type_: String,
    pub reason: String,
    pub note: String,
    /// `kind/namespace/name` of the object the event is about.
    pub regarding: String,
}

pub struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    pub fn created(body: Value) -> Self {
        Self { status: 201, body }
    }

    /// A `Status` failure as the API server sends it.
    pub fn status(code: u16, reason: &str) -> Self {
        Self {
            status: code,
            body: json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("mock: {reason}"),
                "reason": reason, "code": code,
            }),
        }
    }
}

type Responder = Box<dyn FnOnce(&Value) -> Reply + Send>;

struct Expected {
    method: &'static str,
    path: String,
    respond: Responder,
}

#[derive(Default)]
struct Log {
    script: VecDeque<Expected>,
    calls: Vec<Call>,
    events: Vec<SeenEvent>,
    unexpected: Vec<String>,
}

/// The API server of one test: answers exactly the requests scripted with
/// [`Harness::expect`], each once and in the order given; events are always accepted and
/// recorded apart (some are published concurrently with the work, or detached from it).
/// Anything else is answered 500 and fails the test when the reconcile returns.
struct ApiServer {
    log: Arc<Mutex<Log>>,
}

impl ApiServer {
    fn start(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        share: PathBuf,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let method = parts.method.to_string();
                let path = parts.uri.path().to_string();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let reply = {
                    let mut log = shared.lock().unwrap_or_else(|p| p.into_inner());
                    answer(&mut log, method, path, content_type, body, &share)
                };
                let bytes = serde_json::to_vec(&reply.body).unwrap_or_default();
                let response = Response::builder()
                    .status(reply.status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(bytes))
                    .expect("a static response is well formed");
                send.send_response(response);
            }
        });
        (Self { log }, task)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        f(&mut self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn answer(
    log: &mut Log,
    method: String,
    path: String,
    content_type: String,
    body: Value,
    share: &Path,
) -> Reply {
    if path.starts_with("/apis/events.k8s.io/v1/") {
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        let r = &body["regarding"];
        let part = |k: &str| r[k].as_str().unwrap_or_default();
        log.events.push(SeenEvent {
            type_: text("type"),
            reason: text("reason"),
            note: text("note"),
            regarding: format!("{}/{}/{}", part("kind"), part("namespace"), part("name")),
        });
        let mut echoed = body;
        if echoed["metadata"]["name"].is_null() {
            echoed["metadata"]["name"] = json!(format!("event-{}", log.events.len()));
        }
        return Reply::created(echoed);
    }
    let at = log
        .script
        .iter()
        .position(|e| e.method == method && e.path == path);
    let Some(at) = at else {
        log.unexpected.push(format!("{method} {path} {body}"));
        return Reply::status(500, "UnexpectedRequest");
    };
    // Strict order: a scripted request may not overtake an earlier scripted one.
    if at != 0 {
        log.unexpected.push(format!(
            "{method} {path} before {} {}",
            log.script[0].method, log.script[0].path
        ));
        return Reply::status(500, "UnexpectedRequest");
    }
    let Some(expected) = log.script.pop_front() else {
        return Reply::status(500, "UnexpectedRequest");
    };
    log.calls.push(Call {
        method,
        path,
        content_type,
        body: body.clone(),
        share_then: tree(share),
    });
    (expected.respond)(&body)
}

/// Every directory under `root`, relative, sorted; files are left out.
pub fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, at: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(at) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

pub struct Harness {
    pub ctx: Arc<Context>,
    api: ApiServer,
    server: tokio::task::JoinHandle<()>,
    classes: Writer<StorageClass>,
    volumes: Writer<CachedVolume>,
    /// Holds the share (`share/`) and, beside it, what must stay out of its reach.
    dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("share directory");
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (api, server) = ApiServer::start(handle, share.clone());
        let client = Client::new(service, "default");
        let (classes_store, classes) = reflector::store();
        let (volumes_store, volumes) = reflector::store();
        let ctx = Context::new(
            client,
            Reporter {
                controller: "nfs3-provisioner".into(),
                instance: Some("test".into()),
            },
            PROVISIONER.into(),
            Defaults {
                server: Some(SERVER.into()),
                share: Some(SHARE.into()),
            },
            Shares::new(BackendConfig::Mounted {
                root: share,
                served: None,
            }),
            classes_store,
            volumes_store,
        );
        Self {
            ctx: Arc::new(ctx),
            api,
            server,
            classes,
            volumes,
            dir,
        }
    }

    /// The share's root on disk (the mounted backend's mount point).
    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// Beside the share, out of its reach: what a path escaping the share would hit.
    pub fn outside(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn dirs(&self) -> Vec<String> {
        tree(&self.share())
    }

    /// Scripts the next request: `method path`, answered by `respond` given the
    /// request's body.
    pub fn expect(
        &self,
        method: &'static str,
        path: &str,
        respond: impl FnOnce(&Value) -> Reply + Send + 'static,
    ) {
        self.api.with(|l| {
            l.script.push_back(Expected {
                method,
                path: path.to_string(),
                respond: Box::new(respond),
            })
        });
    }

    /// Adopts another provisioner's volumes, as `--adopt-provisioned-by` does.
    pub fn adopt(&mut self, adoption: crate::plan::adopt::Adoption) {
        let ctx = Arc::get_mut(&mut self.ctx).expect("the context is not shared yet");
        ctx.adoption = Some(adoption);
    }

    pub fn add_class(&mut self, class: StorageClass) {
        self.classes
            .apply_watcher_event(&watcher::Event::Apply(class));
    }

    /// Puts a PV in the volume cache, as the watch would.
    pub fn add_volume(&mut self, pv: &PersistentVolume) {
        self.volumes
            .apply_watcher_event(&watcher::Event::Apply(cached(pv)));
    }

    /// The claim controller's reconcile of one claim.
    pub async fn provision(&self, claim: &PersistentVolumeClaim) -> Result<Action, Error> {
        let run = provision::reconcile(Arc::new(claim.clone()), self.ctx.clone());
        self.finish(run).await
    }

    /// The volume controller's reconcile of one PV (as its cache holds it).
    pub async fn reclaim(&self, pv: &PersistentVolume) -> Result<Action, Error> {
        let run = reclaim::reconcile(Arc::new(cached(pv)), self.ctx.clone());
        self.finish(run).await
    }

    /// What the controller does after a failed reconcile of `obj`.
    pub fn after_error<K: Resource + Clone>(&self, obj: &K, err: &Error) -> Action {
        error_policy(Arc::new(obj.clone()), err, self.ctx.clone())
    }

    async fn finish<T>(&self, run: impl Future<Output = T>) -> T {
        let out = tokio::time::timeout(DEADLINE, run)
            .await
            .unwrap_or_else(|_| panic!("the reconcile did not finish within {DEADLINE:?}"));
        let unexpected = self.api.with(|l| l.unexpected.clone());
        assert!(
            unexpected.is_empty(),
            "unexpected API requests: {unexpected:#?}"
        );
        out
    }

    /// The requests made so far (events aside), as `METHOD path`; also checks that
    /// every scripted request was made.
    pub fn calls(&self) -> Vec<String> {
        self.api.with(|l| {
            let left: Vec<_> = l
                .script
                .iter()
                .map(|e| format!("{} {}", e.method, e.path))
                .collect();
            assert!(left.is_empty(), "scripted requests never made: {left:?}");
            l.calls.iter().map(Call::line).collect()
        })
    }

    pub fn call(&self, i: usize) -> Call {
        self.api.with(|l| l.calls[i].clone())
    }

    /// The events published so far, as `Type Reason`, in the order they arrived.
    pub fn events(&self) -> Vec<String> {
        self.api.with(|l| {
            l.events
                .iter()
                .map(|e| format!("{} {}", e.type_, e.reason))
                .collect()
        })
    }

    pub fn event(&self, reason: &str) -> SeenEvent {
        self.api.with(|l| {
            l.events
                .iter()
                .find(|e| e.reason == reason)
                .cloned()
                .unwrap_or_else(|| panic!("no {reason} event in {:?}", l.events))
        })
    }

    /// Waits for `n` events: some are published after the reconcile returned.
    pub async fn wait_events(&self, n: usize) {
        let wait = async {
            while self.api.with(|l| l.events.len()) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(DEADLINE, wait).await.is_err() {
            panic!("expected {n} events, got {:?}", self.events());
        }
    }
}

fn cached(pv: &PersistentVolume) -> CachedVolume {
    serde_json::from_value(serde_json::to_value(pv).expect("a PV serializes"))
        .expect("a PV reads as a cached volume")
}

/// When the controller runs this object again, `None` for "on its next change". Read
/// from `Action`'s Debug form: kube keeps the field private.
pub fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let (number, unit) = inner
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| inner.split_at(i))?;
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A claim the control plane has handed to this provisioner, waiting for its volume.
pub fn claim() -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {
            "name": CLAIM, "namespace": NS, "uid": CLAIM_UID, "resourceVersion": "7",
            "annotations": { ANN_STORAGE_PROVISIONER: PROVISIONER },
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": { "requests": { "storage": "1Gi" } },
            "storageClassName": "nfs",
        },
        "status": { "phase": "Pending" },
    }))
    .expect("a valid claim")
}

/// The class `nfs` of this provisioner, with `params`.
pub fn class(params: &[(&str, &str)]) -> StorageClass {
    let params: BTreeMap<&str, &str> = params.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": { "name": "nfs" },
        "provisioner": PROVISIONER,
        "parameters": params,
        "mountOptions": ["nfsvers=3"],
        "reclaimPolicy": "Delete",
    }))
    .expect("a valid class")
}

/// A PV of ours for the claim above, recording `directory` and `on_delete`, released.
pub fn released_pv(directory: &str, on_delete: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {
            "name": PV, "uid": "pv-uid-1", "resourceVersion": "40",
            "finalizers": [FINALIZER, "kubernetes.io/pv-protection"],
            "annotations": {
                ANN_PROVISIONED_BY: PROVISIONER,
                ANN_SERVER: SERVER,
                ANN_SHARE: SHARE,
                ANN_DIRECTORY: directory,
                ANN_ON_DELETE: on_delete,
            },
        },
        "spec": {
            "capacity": { "storage": "1Gi" },
            "accessModes": ["ReadWriteMany"],
            "nfs": { "server": SERVER, "path": format!("{SHARE}/{directory}") },
            "claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": NS, "name": CLAIM, "uid": CLAIM_UID,
            },
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "nfs",
        },
        "status": { "phase": "Released" },
    }))
    .expect("a valid PV")
}

/// `pv` as the API server returns it once deleted: still there, held by finalizers.
pub fn deleting(pv: &PersistentVolume) -> Value {
    let mut v = serde_json::to_value(pv).expect("a PV serializes");
    v["metadata"]["deletionTimestamp"] = json!("2026-11-30T21:00:00Z");
    v
}

/// Someone else's PV (another claim, namespace `namespace`) whose NFS path is `path`.
pub fn other_pv(name: &str, path: &str, namespace: &str, phase: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": { "name": name, "uid": format!("uid-{name}") },
        "spec": {
            "nfs": { "server": SERVER, "path": path },
            "claimRef": { "namespace": namespace, "name": "theirs", "uid": "their-claim" },
            "persistentVolumeReclaimPolicy": "Delete",
        },
        "status": { "phase": phase },
    }))
    .expect("a valid PV")
}

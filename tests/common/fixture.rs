//! One scenario's own corner of the shared control plane and NFS exports: its provisioner
//! name, namespaces and StorageClasses, all labelled with the test, and a `Drop` that
//! removes them (with the PVs and the directories they left) whether the test passed or
//! panicked. Cleanup runs on a thread of its own with a deadline, so a test that killed
//! the API server cannot hang its binary in `Drop`.
//!
//! The first fixture of a process also sweeps what killed runs left (labelled objects
//! whose process is gone, and test PVs whose namespace is gone): thousands of leftovers
//! slow kube-controller-manager's binder and make the next run flaky.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use super::cluster::{Provisioner, all_bound, cluster, nfs_path, volumes_gone};

/// On every object a fixture creates: which test made it.
pub const TEST_LABEL: &str = "nfs3p-e2e/test";
/// And which process: a sweep takes only what a dead process left.
pub const PID_LABEL: &str = "nfs3p-e2e/pid";
/// Every fixture's provisioner name ends so; `.iso.` is the isolation tests' older form.
const PROVISIONER_SUFFIXES: [&str; 2] = [
    ".e2e.nfs3-provisioner.io/nfs",
    ".iso.nfs3-provisioner.io/nfs",
];

/// Younger objects are never swept: their test may have just made them.
const SWEEP_MIN_AGE_S: i64 = 120;
/// Older labelled objects are swept even if their pid is alive again (reused).
const SWEEP_MAX_AGE_S: i64 = 3600;
/// The whole of one cleanup or sweep, and the part of it spent on the API server.
const CLEANUP: Duration = Duration::from_secs(75);
const API_CLEANUP: Duration = Duration::from_secs(60);

pub struct Fixture {
    pub client: Client,
    /// The test's label, as given.
    pub label: String,
    /// The provisioner name its classes name (unique per fixture).
    pub provisioner: String,
    /// Unique per fixture: class names and the scenario's own directory derive from it.
    pub token: String,
    namespaces: Mutex<Vec<String>>,
    classes: Mutex<Vec<String>>,
    dirs: Mutex<Vec<PathBuf>>,
}

impl Fixture {
    /// Starts NFS and the control plane if needed, sweeps leftovers of killed runs (once
    /// per process), and gives the test its names.
    pub async fn new(label: &str) -> Fixture {
        super::nfs();
        cluster();
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        SWEPT.get_or_init(|| async { on_own_thread(sweep) }).await;
        let token = super::unique(label);
        Fixture {
            client: super::cluster::admin().await,
            label: label.to_string(),
            provisioner: format!("{token}{}", PROVISIONER_SUFFIXES[0]),
            token,
            namespaces: Mutex::new(Vec::new()),
            classes: Mutex::new(Vec::new()),
            dirs: Mutex::new(Vec::new()),
        }
    }

    /// `metadata.labels` of whatever the test creates.
    pub fn labels(&self) -> serde_json::Value {
        json!({TEST_LABEL: label_value(&self.label), PID_LABEL: std::process::id().to_string()})
    }

    /// The fixture's labels with `more` (the test's own labels).
    pub fn labels_with(&self, more: &serde_json::Value) -> serde_json::Value {
        let mut labels = self.labels();
        merge(&mut labels, more);
        labels
    }

    /// A provisioner process serving this fixture's classes; `suffix` tells replicas'
    /// logs apart. Declare it after the fixture, so it is killed before cleanup runs.
    pub fn start(&self, suffix: &str, extra: &[(&str, &str)]) -> Provisioner {
        Provisioner::start(&self.provisioner, &format!("{}{suffix}", self.label), extra)
    }

    /// A namespace of the test's own, named after its label.
    pub async fn namespace(&self) -> String {
        self.namespace_named(&super::unique(&self.label)).await
    }

    pub async fn namespace_named(&self, name: &str) -> String {
        let ns = Namespace {
            metadata: self.meta(name),
            ..Default::default()
        };
        // Tracked before it exists: a create that fails half way is still cleaned up.
        lock(&self.namespaces).push(name.to_string());
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name.to_string()
    }

    /// A class of this fixture's provisioner named `<token>-<suffix>`.
    pub async fn class(&self, suffix: &str, params: serde_json::Value) -> String {
        self.class_with(suffix, params, json!({})).await
    }

    /// The same; `extra` is merged at the top level (reclaimPolicy, mountOptions...).
    pub async fn class_with(
        &self,
        suffix: &str,
        params: serde_json::Value,
        extra: serde_json::Value,
    ) -> String {
        let mut v = json!({
            "metadata": {"name": format!("{}-{suffix}", self.token)},
            "provisioner": self.provisioner,
            "parameters": params,
        });
        merge(&mut v, &extra);
        let sc = self.create_class(v).await;
        sc.metadata.name.unwrap_or_default()
    }

    /// Any StorageClass (another provisioner's, an example's), labelled and tracked.
    pub async fn create_class(&self, mut v: serde_json::Value) -> StorageClass {
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        v["metadata"]["labels"] = self.labels_with(&v["metadata"]["labels"]);
        let sc: StorageClass = serde_json::from_value(v).expect("class");
        lock(&self.classes).push(name);
        Api::<StorageClass>::all(self.client.clone())
            .create(&PostParams::default(), &sc)
            .await
            .expect("create class")
    }

    /// A claim of `class`; `meta` is merged into its metadata (labels, annotations).
    pub async fn claim(
        &self,
        ns: &str,
        name: &str,
        class: &str,
        meta: serde_json::Value,
    ) -> PersistentVolumeClaim {
        self.claim_with(ns, name, class, meta, json!({})).await
    }

    /// The same; `spec` is merged into its spec (volumeMode, selector...).
    pub async fn claim_with(
        &self,
        ns: &str,
        name: &str,
        class: &str,
        meta: serde_json::Value,
        spec: serde_json::Value,
    ) -> PersistentVolumeClaim {
        let pvc = self.claim_object(ns, name, class, meta, spec);
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &pvc)
            .await
            .expect("create claim")
    }

    /// The claim `claim_with` would create, for tests that create it their own way.
    pub fn claim_object(
        &self,
        ns: &str,
        name: &str,
        class: &str,
        meta: serde_json::Value,
        spec: serde_json::Value,
    ) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "storageClassName": class,
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        });
        merge(&mut v["metadata"], &meta);
        v["metadata"]["labels"] = self.labels_with(&meta["labels"]);
        merge(&mut v["spec"], &spec);
        serde_json::from_value(v).expect("claim")
    }

    /// Waits until `claim` in `ns` is Bound; its PV.
    pub async fn bound_pv(&self, ns: &str, claim: &str, limit: Duration) -> PersistentVolume {
        super::cluster::wait_for(&format!("{ns}/{claim} Bound"), limit, || async move {
            let c = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                .get_opt(claim)
                .await
                .ok()??;
            if super::cluster::phase(&c) != "Bound" {
                return None;
            }
            let pv = c.spec?.volume_name?;
            Api::<PersistentVolume>::all(self.client.clone())
                .get_opt(&pv)
                .await
                .ok()?
        })
        .await
    }

    /// Waits until the PV `name` is gone.
    pub async fn pv_gone(&self, name: &str, limit: Duration) {
        super::cluster::wait_for(&format!("PV {name} to go"), limit, || async move {
            let got = Api::<PersistentVolume>::all(self.client.clone())
                .get_opt(name)
                .await
                .ok()?;
            got.is_none().then_some(())
        })
        .await
    }

    /// Waits until the `count` claims of `ns` are Bound (see `all_bound`).
    pub async fn all_bound(
        &self,
        ns: &str,
        count: usize,
        limit: Duration,
        p: &Provisioner,
    ) -> Vec<PersistentVolumeClaim> {
        all_bound(&self.client, ns, count, limit, p).await
    }

    /// Deletes every claim of `ns` and waits until their PVs are reclaimed: the end of a
    /// scenario that checks reclaim works.
    pub async fn reclaim_all(&self, ns: &str, limit: Duration, p: &Provisioner) {
        super::cluster::delete_claims(&self.client, ns).await;
        volumes_gone(&self.client, ns, limit, p).await;
    }

    /// A directory (on an export) to remove when the test ends.
    pub fn remove_later(&self, dir: impl Into<PathBuf>) {
        lock(&self.dirs).push(dir.into());
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        serde_json::from_value(json!({"name": name, "labels": self.labels()})).expect("meta")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let scope = Scope {
            namespaces: std::mem::take(&mut *lock(&self.namespaces)),
            classes: std::mem::take(&mut *lock(&self.classes)),
            provisioners: vec![self.provisioner.clone()],
            pvs: Vec::new(),
            dirs: std::mem::take(&mut *lock(&self.dirs)),
            token: Some(self.token.clone()),
        };
        on_own_thread(move || cleanup(scope));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding it still gets its cleanup.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn merge(into: &mut serde_json::Value, add: &serde_json::Value) {
    if let (Some(obj), Some(add)) = (into.as_object_mut(), add.as_object()) {
        for (k, v) in add {
            obj.insert(k.clone(), v.clone());
        }
    }
}

/// A test label as a label value: at most 63 characters of `[a-z0-9-]`.
fn label_value(label: &str) -> String {
    let v: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches('-').to_string()
}

/// What one cleanup removes.
#[derive(Default)]
struct Scope {
    namespaces: Vec<String>,
    classes: Vec<String>,
    /// PVs of these provisioners go, wherever their claim was.
    provisioners: Vec<String>,
    /// And these PVs by name.
    pvs: Vec<String>,
    /// Directories to remove (only below the exports).
    dirs: Vec<PathBuf>,
    /// Export entries whose name holds it (or a namespace's name) go too.
    token: Option<String>,
}

/// Runs `f` on a thread with a runtime of its own, within `CLEANUP`: `Drop` may run inside
/// a test's runtime (where blocking on it is not allowed) or while it unwinds.
fn on_own_thread<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let worker = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return eprintln!("fixture cleanup: no runtime: {e}"),
        };
        // The deadline's timer needs the runtime: made inside `block_on`, not before.
        if rt
            .block_on(async { tokio::time::timeout(CLEANUP, f()).await })
            .is_err()
        {
            eprintln!("fixture cleanup: gave up after {CLEANUP:?}; the next sweep finishes it");
        }
    });
    let _ = worker.join();
}

/// An admin client whose requests fail fast when the API server is down.
async fn impatient_client() -> Option<Client> {
    let kc = Kubeconfig::read_from(&cluster().admin_kubeconfig).ok()?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .ok()?;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(10));
    config.write_timeout = Some(Duration::from_secs(10));
    Client::try_from(config).ok()
}

async fn cleanup(scope: Scope) {
    let mut dirs = scope.dirs.clone();
    // The API part has its own deadline, so the directories go even when it runs out
    // (a loaded API server, or one a chaos test left down).
    if let Some(client) = impatient_client().await {
        match tokio::time::timeout(API_CLEANUP, delete_objects(&client, &scope)).await {
            Ok(found) => dirs.extend(found),
            Err(_) => eprintln!("fixture cleanup: API objects not all gone after {API_CLEANUP:?}"),
        }
    }
    let mut needles: Vec<&str> = scope.namespaces.iter().map(String::as_str).collect();
    needles.extend(scope.token.as_deref());
    remove_dirs(&dirs, &needles);
}

/// Deletes the scope's PVs (finalizers cleared: no provisioner is left to honour them),
/// claims, classes and namespaces; the directories the PVs pointed at.
async fn delete_objects(client: &Client, scope: &Scope) -> Vec<PathBuf> {
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let dp = DeleteParams::default().grace_period(0);
    let mut dirs = Vec::new();
    let all = pvs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let no_finalizers = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    for pv in all {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let claim_ns = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|c| c.namespace.clone())
            .unwrap_or_default();
        let by = provisioned_by(&pv);
        // PVs a test makes by hand are named after its namespace.
        if scope.pvs.contains(&name)
            || scope.namespaces.contains(&claim_ns)
            || scope
                .namespaces
                .iter()
                .any(|ns| name.starts_with(ns.as_str()))
            || scope.provisioners.iter().any(|p| p == by)
        {
            dirs.push(PathBuf::from(nfs_path(&pv)));
            // Delete first: the PV protection controller re-adds its finalizer to a PV
            // that is not being deleted.
            let _ = pvs.delete(&name, &dp).await;
            let _ = pvs
                .patch(&name, &PatchParams::default(), &no_finalizers)
                .await;
        }
    }
    let lp = ListParams::default();
    for ns in &scope.namespaces {
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
        let _ = claims.delete_collection(&dp, &lp).await;
        let _ = Api::<Namespace>::all(client.clone()).delete(ns, &dp).await;
    }
    let classes = Api::<StorageClass>::all(client.clone());
    for class in &scope.classes {
        let _ = classes.delete(class, &dp).await;
    }
    dirs
}

fn provisioned_by(pv: &PersistentVolume) -> &str {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
        .map(String::as_str)
        .unwrap_or("")
}

/// Every export of the test NFS server (export3 only where `nfs.sh` serves it).
pub fn exports() -> Vec<PathBuf> {
    let env = super::nfs();
    let mut all = vec![
        env.export1.clone(),
        env.export2.clone(),
        env.export4.clone(),
        env.export5.clone(),
    ];
    if let Some(parent) = env.export1.parent() {
        all.push(parent.join("export3"));
    }
    all
}

/// Removes `dirs` (those below an export, never an export itself) and the entries
/// directly below each export whose name holds one of `needles`.
fn remove_dirs(dirs: &[PathBuf], needles: &[&str]) {
    let exports = exports();
    let mut doomed: BTreeSet<PathBuf> = dirs
        .iter()
        .filter(|d| {
            exports
                .iter()
                .any(|e| d.starts_with(e) && d.as_path() != e.as_path())
        })
        .cloned()
        .collect();
    // The provisioner's records of archives (named after them) go with the archives.
    let record_dirs = exports
        .iter()
        .flat_map(|e| ["archives", "archive-claims"].map(|d| e.join(".nfs3-provisioner").join(d)));
    for export in exports.iter().cloned().chain(record_dirs) {
        let Ok(entries) = std::fs::read_dir(&export) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if needles.iter().any(|n| !n.is_empty() && name.contains(n)) {
                doomed.insert(e.path());
            }
        }
    }
    for d in doomed {
        remove(&d);
    }
}

fn remove(p: &Path) {
    let _ = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    };
}

/// Seconds since `meta` was created (0 when unknown: never old enough to sweep).
fn age_s(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second())
        .unwrap_or(0)
}

/// A labelled object a killed run left: old enough, and its process gone (or so old
/// that its pid must have been reused).
fn abandoned(meta: &ObjectMeta) -> bool {
    let age = age_s(meta);
    if age < SWEEP_MIN_AGE_S {
        return false;
    }
    let pid = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(PID_LABEL))
        .and_then(|p| p.parse::<u32>().ok());
    let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    !alive || age > SWEEP_MAX_AGE_S
}

/// Removes what killed runs left: labelled namespaces and classes of dead processes, the
/// PVs in those namespaces, and test PVs whose namespace is gone.
async fn sweep() {
    let Some(client) = impatient_client().await else {
        return;
    };
    let lp = ListParams::default().labels(TEST_LABEL);
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let existing: BTreeSet<String> = namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut scope = Scope::default();
    for ns in &namespaces {
        let labelled = ns
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(TEST_LABEL));
        if labelled && abandoned(&ns.metadata) {
            scope.namespaces.extend(ns.metadata.name.clone());
        }
    }
    scope.classes = Api::<StorageClass>::all(client.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| abandoned(&c.metadata))
        .filter_map(|c| c.metadata.name)
        .collect();
    let pvs = Api::<PersistentVolume>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for pv in &pvs {
        let by = provisioned_by(pv);
        let claim_ns = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|c| c.namespace.as_deref())
            .unwrap_or("");
        let ours = PROVISIONER_SUFFIXES.iter().any(|s| by.ends_with(s));
        if ours && !existing.contains(claim_ns) && age_s(&pv.metadata) > SWEEP_MIN_AGE_S {
            scope.pvs.extend(pv.metadata.name.clone());
        }
    }
    if scope.namespaces.is_empty() && scope.classes.is_empty() && scope.pvs.is_empty() {
        return;
    }
    eprintln!(
        "fixture sweep: leftovers of killed runs: {} namespaces, {} classes, {} PVs",
        scope.namespaces.len(),
        scope.classes.len(),
        scope.pvs.len()
    );
    let dirs = delete_objects(&client, &scope).await;
    let needles: Vec<&str> = scope.namespaces.iter().map(String::as_str).collect();
    remove_dirs(&dirs, &needles);
}

/// The usual start of a scenario: a fixture, its provisioner, a namespace and a class
/// `<token>-c` with `params` (`class_extra` merged at its top level). Bind them in this
/// order (`let (fx, p, ns, class) = ...`): the provisioner is then killed before the
/// fixture cleans up.
pub async fn scene(
    label: &str,
    params: serde_json::Value,
    class_extra: serde_json::Value,
) -> (Fixture, Provisioner, String, String) {
    let fx = Fixture::new(label).await;
    let p = fx.start("", &[]);
    let ns = fx.namespace().await;
    let class = fx.class_with("c", params, class_extra).await;
    (fx, p, ns, class)
}

//! End to end: the real provisioner binary, run with the rights of the ServiceAccount in
//! deploy/, against a real kube-apiserver and kube-controller-manager (tests/e2e/cluster.sh)
//! and a real NFS server (nfs-ganesha, tests/e2e/nfs.sh). Every scenario asserts on the
//! API objects and on the exported directory on disk.
//!
//! Scenarios run in parallel, each with its own provisioner name, StorageClasses and
//! namespace, so they never act on each other's claims. The NFS outage scenario stops the
//! shared server, so it runs alone (`EXCLUSIVE`).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::fixture::{Fixture, scene};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::RwLock;

#[path = "e2e/adopt.rs"]
mod adopt;
#[path = "e2e/chaos.rs"]
mod chaos;
#[path = "e2e/leader.rs"]
mod leader;
#[path = "e2e/placement.rs"]
mod placement;
#[path = "e2e/usage.rs"]
mod usage;

static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

/// The one Lease name deploy/base's Role lets the ServiceAccount read and renew
/// (`resourceNames`), so the scenarios with leader election take turns with it.
static LEASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LEASE_NAME: &str = "nfs3-provisioner";

/// Takes the Lease name for one scenario, with no holder left from an earlier one.
/// Take it after `EXCLUSIVE`, always in that order.
async fn the_lease(client: &kube::Client) -> tokio::sync::MutexGuard<'static, ()> {
    let guard = LEASE.lock().await;
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        "nfs3-provisioner",
    );
    let _ = leases.delete(LEASE_NAME, &DeleteParams::default()).await;
    guard
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0)
}

/// Every path below `root` (depth-first, up to `depth` levels) whose name contains `needle`.
fn find_named(root: &Path, needle: &str, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(needle) {
            found.push(p.clone());
        }
        if depth > 1 && e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            found.extend(find_named(&p, needle, depth - 1));
        }
    }
    found
}

/// The examples users apply, made private to this test: class names get a prefix, the
/// provisioner name and namespace are the test's own, and pods are left out (no kubelet
/// runs here). Returns the classes and claims as the API server accepted them.
async fn apply_examples(fx: &Fixture, ns: &str) -> (Vec<StorageClass>, Vec<PersistentVolumeClaim>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("storageclass-examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the 10 examples, found {files:?}"
    );
    let prefix = format!("{ns}-");
    let (mut classes, mut claims) = (Vec::new(), Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("example YAML parses");
            let mut v: serde_json::Value = serde_json::to_value(&value).expect("YAML to JSON");
            match v["kind"].as_str() {
                Some("StorageClass") => {
                    let name = format!("{prefix}{}", v["metadata"]["name"].as_str().unwrap_or(""));
                    v["metadata"]["name"] = json!(name);
                    assert_eq!(
                        v["provisioner"],
                        json!("nfs3-provisioner.io/nfs"),
                        "{file:?}"
                    );
                    v["provisioner"] = json!(fx.provisioner);
                    classes.push(fx.create_class(v).await);
                }
                Some("PersistentVolumeClaim") => {
                    v["metadata"]["namespace"] = json!(ns);
                    v["metadata"]["labels"] = fx.labels_with(&v["metadata"]["labels"]);
                    let class = format!(
                        "{prefix}{}",
                        v["spec"]["storageClassName"].as_str().unwrap_or("")
                    );
                    v["spec"]["storageClassName"] = json!(class);
                    // The label feeds example 05's pathPattern: make its directory unique.
                    if v["metadata"]["labels"]["team"].is_string() {
                        v["metadata"]["labels"]["team"] = json!(ns);
                    }
                    claims.push((file.clone(), v));
                }
                Some("Pod") => {}
                other => panic!("unexpected kind {other:?} in {file:?}"),
            }
        }
    }
    let mut created = Vec::new();
    for (file, mut v) in claims {
        let class = classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == v["spec"]["storageClassName"].as_str())
            .unwrap_or_else(|| panic!("{file:?}: claim of a class not in the examples"));
        if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
            // No scheduler runs here: say which node was chosen, as it would.
            v["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!("e2e-node");
        }
        let pvc: PersistentVolumeClaim = serde_json::from_value(v).expect("claim");
        let api = Api::<PersistentVolumeClaim>::namespaced(fx.client.clone(), ns);
        created.push(
            api.create(&PostParams::default(), &pvc)
                .await
                .expect("create example claim"),
        );
    }
    (classes, created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_bind_with_the_requested_layout_and_reclaim_as_their_class_says() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("examples").await;
    let p = fx.start("", &[]);
    let ns = fx.namespace().await;
    let client = fx.client.clone();
    let name = fx.provisioner.clone();
    let (classes, claims_made) = apply_examples(&fx, &ns).await;
    let count = claims_made.len();
    assert!(count >= 10, "one claim per example");

    let bound = all_bound(&client, &ns, count, Duration::from_secs(60), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    assert_eq!(pvs.len(), count, "one PV per claim");
    for pvc in &bound {
        let claim = pvc.metadata.name.as_deref().unwrap_or("");
        let pv = pv_of(&pvs, claim);
        let uid = pvc.metadata.uid.as_deref().unwrap_or("");
        assert_eq!(
            pv.metadata.name.as_deref(),
            Some(format!("pvc-{uid}").as_str())
        );
        assert_eq!(
            pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
            pv.metadata.name.as_deref()
        );
        let ann = pv.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("pv.kubernetes.io/provisioned-by"), Some(&name));
        let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
        assert!(
            finalizers
                .iter()
                .any(|f| f == "external-provisioner.volume.kubernetes.io/finalizer"),
            "{finalizers:?}"
        );
        let dir = on_disk(pv);
        assert!(dir.is_dir(), "{claim}: {dir:?} exists on the export");
        let spec = pv.spec.as_ref().expect("spec");
        assert_eq!(
            spec.capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.as_str()),
            pvc.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.as_str()),
            "{claim}: capacity is the request"
        );
        assert_eq!(
            spec.access_modes,
            pvc.spec.as_ref().and_then(|s| s.access_modes.clone())
        );
    }

    let dir_of = |claim: &str| on_disk(pv_of(&pvs, claim));
    let pv_name = |claim: &str| pv_of(&pvs, claim).metadata.name.clone().unwrap_or_default();
    // Default naming, as nfs-subdir-external-provisioner does it.
    let d = dir_of("nfs3-default-delete-pvc");
    assert_eq!(
        d,
        PathBuf::from(format!(
            "{}/{ns}-nfs3-default-delete-pvc-{}",
            export1(),
            pv_name("nfs3-default-delete-pvc")
        ))
    );
    assert_eq!(mode_of(&d), 0o777);
    assert_eq!(
        dir_of("nfs3-pattern-pvc"),
        PathBuf::from(format!("{}/{ns}/nfs3-pattern-pvc", export1()))
    );
    assert_eq!(
        dir_of("nfs3-metadata-pvc"),
        PathBuf::from(format!("{}/{ns}/{ns}/reports", export1()))
    );
    let owned = dir_of("nfs3-mode-uid-gid-pvc");
    let md = std::fs::metadata(&owned).expect("stat");
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o750, 1000, 1000),
        "mode/uid/gid applied"
    );
    assert!(
        dir_of("nfs3-second-server-pvc").starts_with(export2()),
        "second share"
    );
    assert_eq!(
        dir_of("nfs3-subdir-pvc"),
        PathBuf::from(format!("{}/{ns}/{}", export1(), pv_name("nfs3-subdir-pvc")))
    );
    let mo_class = classes
        .iter()
        .find(|c| c.mount_options.is_some())
        .expect("a class with mountOptions");
    let mo_pv = pvs
        .iter()
        .find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                == mo_class.metadata.name.as_deref()
        })
        .expect("its PV");
    assert_eq!(
        mo_pv.spec.as_ref().and_then(|s| s.mount_options.clone()),
        mo_class.mount_options.clone()
    );

    // Data a workload wrote, to see what each reclaim does with it.
    for claim in [
        "nfs3-default-delete-pvc",
        "nfs3-retain-pvc",
        "nfs3-archive-pvc",
    ] {
        std::fs::create_dir_all(dir_of(claim).join("sub")).expect("write into the volume");
        std::fs::write(dir_of(claim).join("sub/hello.txt"), claim).expect("write into the volume");
    }
    for claim in [
        "nfs3-default-delete-pvc",
        "nfs3-retain-pvc",
        "nfs3-archive-pvc",
    ] {
        delete_claim(&client, &ns, claim).await;
    }
    for claim in [
        "nfs3-default-delete-pvc",
        "nfs3-retain-pvc",
        "nfs3-archive-pvc",
    ] {
        fx.pv_gone(&pv_name(claim), Duration::from_secs(30)).await;
    }
    assert!(
        !dir_of("nfs3-default-delete-pvc").exists(),
        "onDelete delete removes the directory"
    );
    let kept = dir_of("nfs3-retain-pvc").join("sub/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&kept).ok().as_deref(),
        Some("nfs3-retain-pvc"),
        "onDelete retain keeps the data"
    );
    let archived = dir_of("nfs3-archive-pvc");
    let archived = archived.with_file_name(format!(
        "archived-{}",
        archived.file_name().and_then(|n| n.to_str()).unwrap_or("")
    ));
    assert!(!dir_of("nfs3-archive-pvc").exists());
    assert_eq!(
        std::fs::read_to_string(archived.join("sub/hello.txt"))
            .ok()
            .as_deref(),
        Some("nfs3-archive-pvc"),
        "onDelete archive renames the directory with its data"
    );

    // The rest are archived by default (nothing set means nothing lost).
    let rest: Vec<PersistentVolume> = volumes_of(&client, &ns).await;
    fx.reclaim_all(&ns, Duration::from_secs(60), &p).await;
    for pv in &rest {
        assert!(
            !on_disk(pv).exists(),
            "{:?} was archived or deleted",
            on_disk(pv)
        );
    }
    let provisioned = p
        .metric("nfs3_provisioner_provision_total{result=\"success\"}")
        .unwrap_or(0.0);
    assert!(
        provisioned >= count as f64,
        "metrics count provisions: {provisioned}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_policy_retain_leaves_the_volume_released_and_the_data_intact() {
    let _shared = EXCLUSIVE.read().await;
    let (fx, _p, ns, class) = scene(
        "retain",
        json!({"server": "127.0.0.1", "share": export1(), "onDelete": "delete"}),
        json!({"reclaimPolicy": "Retain"}),
    )
    .await;
    let client = fx.client.clone();
    fx.claim(&ns, "data", &class, json!({})).await;
    let pv = fx.bound_pv(&ns, "data", Duration::from_secs(30)).await;
    std::fs::write(on_disk(&pv).join("keep.txt"), "x").expect("write");
    delete_claim(&client, &ns, "data").await;
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    wait_for("PV Released", Duration::from_secs(30), || {
        let (client, pv_name) = (client.clone(), pv_name.clone());
        async move {
            pv_get(&client, &pv_name)
                .await
                .filter(|pv| pv_phase(pv) == "Released")
                .map(|_| ())
        }
    })
    .await;
    // Give a wrong reclaim every chance to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pv_get(&client, &pv_name).await.is_some(),
        "a Retain PV stays"
    );
    assert!(on_disk(&pv).join("keep.txt").exists(), "its data stays");
    // The administrator lets it go: the finalizer must not hold the PV forever, and
    // the data is still not touched (the policy was Retain when it was released).
    Api::<PersistentVolume>::all(client.clone())
        .delete(&pv_name, &DeleteParams::default())
        .await
        .expect("delete PV");
    fx.pv_gone(&pv_name, Duration::from_secs(30)).await;
    assert!(
        on_disk(&pv).join("keep.txt").exists(),
        "deleting a retained PV keeps the data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_hostile_claims_are_explained_and_nothing_is_written() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("refuse").await;
    let p = fx.start("", &[]);
    let ns = fx.namespace().await;
    let client = fx.client.clone();
    let share = json!(export1());
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "unknown",
            json!({"server": "127.0.0.1", "share": share, "archiveOnDelet": "true"}),
            "archiveOnDelet",
        ),
        (
            "badmode",
            json!({"server": "127.0.0.1", "share": share, "mode": "rwx"}),
            "mode",
        ),
        ("noserver", json!({"share": share}), "server"),
        (
            "relshare",
            json!({"server": "127.0.0.1", "share": "relative/path"}),
            "share",
        ),
        (
            "badondelete",
            json!({"server": "127.0.0.1", "share": share, "onDelete": "shred"}),
            "onDelete",
        ),
        (
            "hostile",
            json!({"server": "127.0.0.1", "share": share, "pathPattern": "${.PVC.annotations.folder}/x"}),
            "..",
        ),
        (
            "escape",
            json!({"server": "127.0.0.1", "share": share, "pathPattern": "../${.PVC.name}"}),
            "..",
        ),
    ];
    for (label, params, _) in &cases {
        let class = fx.class(label, params.clone()).await;
        let meta = json!({"annotations": {"folder": "../../../etc"}});
        fx.claim(&ns, label, &class, meta).await;
    }
    // Claims the provisioner cannot serve, on a class that is fine.
    let good = fx
        .class("good", json!({"server": "127.0.0.1", "share": share}))
        .await;
    let block = json!({"volumeMode": "Block"});
    fx.claim_with(&ns, "block", &good, json!({}), block).await;
    let selector = json!({"selector": {"matchLabels": {"a": "b"}}});
    fx.claim_with(&ns, "selector", &good, json!({}), selector)
        .await;

    for (label, _, needle) in &cases {
        let msg = wait_event(
            &client,
            &ns,
            label,
            "ProvisioningFailed",
            needle,
            Duration::from_secs(30),
        )
        .await;
        eprintln!("{label}: {msg}");
    }
    wait_event(
        &client,
        &ns,
        "block",
        "ProvisioningFailed",
        "Block",
        Duration::from_secs(30),
    )
    .await;
    wait_event(
        &client,
        &ns,
        "selector",
        "ProvisioningFailed",
        "selector",
        Duration::from_secs(30),
    )
    .await;
    for c in claims(&client, &ns).await {
        assert_eq!(phase(&c), "Pending", "{:?} stays Pending", c.metadata.name);
    }
    assert!(
        volumes_of(&client, &ns).await.is_empty(),
        "no PV for a refused claim"
    );
    let root = common::nfs()
        .export1
        .parent()
        .expect("exports' parent")
        .to_path_buf();
    let written = find_named(&root, &ns, 4);
    assert!(
        written.is_empty(),
        "nothing written on the exports: {written:?}"
    );
    assert!(
        !root.join("etc").exists() && !Path::new("/tmp/etc").exists(),
        "nothing written outside"
    );

    // Fixing the class brings the claim back without restarting anything.
    let fixed = format!("{}-unknown", fx.token);
    Api::<StorageClass>::all(client.clone())
        .delete(&fixed, &DeleteParams::default())
        .await
        .expect("delete class");
    let params = json!({"server": "127.0.0.1", "share": share, "archiveOnDelete": "false"});
    fx.class("unknown", params).await;
    wait_for(
        "the fixed class's claim to bind",
        Duration::from_secs(30),
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                claims(&client, &ns)
                    .await
                    .iter()
                    .any(|c| c.metadata.name.as_deref() == Some("unknown") && phase(c) == "Bound")
                    .then_some(())
            }
        },
    )
    .await;
    fx.reclaim_all(&ns, Duration::from_secs(30), &p).await;
}

/// A burst of 100 claims with the provisioner killed (SIGKILL) while it works: once it
/// is back, every claim has exactly one PV, every PV its directory, and no directory is
/// left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_100_claims_survives_kill_9() {
    let _shared = EXCLUSIVE.read().await;
    let pattern = "${.PVC.namespace}/${.PVC.name}";
    let params = json!({"server": "127.0.0.1", "share": export1(), "onDelete": "delete", "pathPattern": pattern});
    let (fx, mut p, ns, class) = scene("burst", params, json!({})).await;
    let client = fx.client.clone();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let pvc = fx.claim_object(&ns, &format!("c{i:03}"), &class, json!({}), json!({}));
        let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
        tasks.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &pvc).await
        }));
    }
    // Kill it as soon as it has made some volumes: the rest are in flight or not begun.
    wait_for("the first volumes", Duration::from_secs(60), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { (volumes_of(&client, &ns).await.len() >= 5).then_some(()) }
    })
    .await;
    p.kill9();
    let at_kill = volumes_of(&client, &ns).await.len();
    for t in tasks {
        t.await.expect("create claim").expect("create claim");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.restart();
    let bound = all_bound(&client, &ns, 100, Duration::from_secs(120), &p).await;
    let elapsed = started.elapsed();
    let pvs = volumes_of(&client, &ns).await;
    assert_eq!(pvs.len(), 100, "exactly one PV per claim");
    let names: BTreeSet<String> = bound
        .iter()
        .filter_map(|c| c.spec.as_ref()?.volume_name.clone())
        .collect();
    assert_eq!(names.len(), 100, "no two claims share a PV");
    for pvc in &bound {
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        assert_eq!(
            pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
            Some(format!("pvc-{uid}"))
        );
    }
    for pv in &pvs {
        assert!(on_disk(pv).is_dir(), "{:?} exists", on_disk(pv));
    }
    let dirs: BTreeSet<String> = std::fs::read_dir(common::nfs().export1.join(&ns))
        .expect("namespace directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = (0..100).map(|i| format!("c{i:03}")).collect();
    assert_eq!(dirs, expected, "one directory per claim, none orphaned");
    eprintln!("burst: 100 claims bound in {elapsed:?} ({at_kill} volumes when killed)");

    fx.reclaim_all(&ns, Duration::from_secs(120), &p).await;
    let left: Vec<_> = std::fs::read_dir(common::nfs().export1.join(&ns))
        .expect("namespace directory")
        .flatten()
        .collect();
    assert!(
        left.is_empty(),
        "every directory deleted: {} left",
        left.len()
    );
    assert!(p.is_running());
}

/// The NFS server stops while claims arrive: they fail with an explanation, are retried,
/// and bind once it is back, each to a directory that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nfs_outage_is_retried_until_the_server_is_back() {
    let _alone = EXCLUSIVE.write().await;
    let params = json!({"server": "127.0.0.1", "share": export1(), "onDelete": "delete"});
    let (fx, p, ns, class) = scene("outage", params, json!({})).await;
    let client = fx.client.clone();
    fx.claim(&ns, "before", &class, json!({})).await;
    all_bound(&client, &ns, 1, Duration::from_secs(30), &p).await;

    common::script("nfs.sh", &["stop-server"]);
    let outage = Instant::now();
    let restart = scopeguard(|| {
        common::script("nfs.sh", &["start-server"]);
    });
    for i in 0..5 {
        fx.claim(&ns, &format!("during-{i}"), &class, json!({}))
            .await;
    }
    let msg = wait_event(
        &client,
        &ns,
        "during-0",
        "ProvisioningFailed",
        "will retry",
        Duration::from_secs(30),
    )
    .await;
    eprintln!("during the outage: {msg}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    for c in claims(&client, &ns).await {
        if c.metadata.name.as_deref() != Some("before") {
            assert_eq!(phase(&c), "Pending");
        }
    }
    drop(restart);
    let down_for = outage.elapsed();
    let back = Instant::now();
    all_bound(&client, &ns, 6, Duration::from_secs(90), &p).await;
    eprintln!(
        "outage of {down_for:?}: all claims bound {:?} after the server came back",
        back.elapsed()
    );
    for pv in volumes_of(&client, &ns).await {
        assert!(on_disk(&pv).is_dir(), "{:?} exists", on_disk(&pv));
    }
    let (code, _) = p.http_get("/readyz").expect("readyz answers");
    assert_eq!(code, 200);
    fx.reclaim_all(&ns, Duration::from_secs(60), &p).await;
}

/// Runs `f` when dropped, even when the test fails: the NFS server must come back for
/// the other scenarios.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Two replicas with leader election: only the holder acts, the standby is ready, and
/// when the leader is killed the standby takes over within the lease duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over_when_the_leader_dies() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("leader").await;
    let client = fx.client.clone();
    let _lease = the_lease(&client).await;
    let mut a = fx.start("-a", &leader::elect_env(LEASE_NAME, "6", "replica-a"));
    let mut b = fx.start("-b", &leader::elect_env(LEASE_NAME, "6", "replica-b"));
    let ns = fx.namespace().await;
    let class = fx.class("c", delete_on(&export1())).await;

    let leader = wait_for("one replica to lead", Duration::from_secs(30), || {
        let (la, lb) = (
            a.metric("nfs3_provisioner_leader"),
            b.metric("nfs3_provisioner_leader"),
        );
        async move {
            match (la, lb) {
                (Some(1.0), Some(0.0)) => Some('a'),
                (Some(0.0), Some(1.0)) => Some('b'),
                _ => None,
            }
        }
    })
    .await;
    let (lead, standby) = if leader == 'a' {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // The standby's gauge reads 0 from its start, before it has read the Lease: wait
    // for what readiness says, which is that it has (see `http::Readiness`).
    let lead_name = if leader == 'a' {
        "replica-a"
    } else {
        "replica-b"
    };
    let body = wait_for("the standby to be ready", Duration::from_secs(30), || {
        let answer = standby.http_get("/readyz");
        async move {
            answer
                .filter(|(code, _)| *code == 200)
                .map(|(_, body)| body)
        }
    })
    .await;
    assert!(
        body.contains("role: standby") && body.contains(&format!("held by {lead_name}")),
        "{body}"
    );
    assert_eq!(standby.http_get("/healthz").map(|r| r.0), Some(200));

    for i in 0..10 {
        fx.claim(&ns, &format!("first-{i}"), &class, json!({}))
            .await;
    }
    all_bound(&client, &ns, 10, Duration::from_secs(30), lead).await;
    assert_eq!(
        standby
            .metric("nfs3_provisioner_provision_total{result=\"success\"}")
            .unwrap_or(0.0),
        0.0,
        "the standby did nothing"
    );

    lead.kill9();
    let killed = Instant::now();
    for i in 0..10 {
        fx.claim(&ns, &format!("second-{i}"), &class, json!({}))
            .await;
    }
    all_bound(&client, &ns, 20, Duration::from_secs(45), standby).await;
    let takeover = killed.elapsed();
    eprintln!(
        "standby took over and bound 10 claims {takeover:?} after the leader was killed (lease 6 s)"
    );
    assert!(
        takeover < Duration::from_secs(30),
        "took over in {takeover:?}"
    );
    assert_eq!(standby.metric("nfs3_provisioner_leader"), Some(1.0));
    let pvs = volumes_of(&client, &ns).await;
    assert_eq!(pvs.len(), 20, "no claim provisioned twice");
    let dirs = find_named(&common::nfs().export1, &ns, 1);
    assert_eq!(dirs.len(), 20, "one directory per claim");
    fx.reclaim_all(&ns, Duration::from_secs(60), standby).await;
}

/// A directory another PV still points at is never deleted: a PV made by hand that
/// reuses the directory of one of ours blocks its reclaim until it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_still_in_use_is_never_deleted() {
    let _shared = EXCLUSIVE.read().await;
    let (fx, _p, ns, class) = scene("shared", delete_on(&export1()), json!({})).await;
    let client = fx.client.clone();
    fx.claim(&ns, "data", &class, json!({})).await;
    let pv = fx.bound_pv(&ns, "data", Duration::from_secs(30)).await;
    let dir = on_disk(&pv);
    std::fs::write(dir.join("precious"), "x").expect("write");
    let static_pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-static")},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "nfs": {"server": "127.0.0.1", "path": format!("{}/sub", dir.display())},
        }
    }))
    .expect("static PV");
    let api = Api::<PersistentVolume>::all(client.clone());
    api.create(&PostParams::default(), &static_pv)
        .await
        .expect("create static PV");
    delete_claim(&client, &ns, "data").await;
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let reason = wait_for("a refusal event on the PV", Duration::from_secs(30), || {
        let client = client.clone();
        let pv_name = pv_name.clone();
        async move {
            let lp =
                kube::api::ListParams::default().fields(&format!("involvedObject.name={pv_name}"));
            let events = Api::<k8s_openapi::api::core::v1::Event>::all(client)
                .list(&lp)
                .await
                .ok()?
                .items;
            events
                .into_iter()
                .filter_map(|e| e.message)
                .find(|m| m.contains("also used by"))
        }
    })
    .await;
    eprintln!("refused: {reason}");
    assert!(
        dir.join("precious").exists(),
        "data kept while another PV points into it"
    );
    assert!(
        pv_get(&client, &pv_name).await.is_some(),
        "the PV waits, with its finalizer"
    );
    api.delete(&format!("{ns}-static"), &DeleteParams::default())
        .await
        .expect("delete static PV");
    // Retried with backoff; the static PV's own protection finalizer goes first.
    fx.pv_gone(&pv_name, Duration::from_secs(60)).await;
    assert!(!dir.exists(), "deleted once free");
}

/// Claims whose StorageClass names another provisioner are left alone, while a claim of
/// ours made after them in the same namespace binds: the provisioner was alive and had
/// seen the foreign claim when it was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_provisioners_claims_are_left_alone() {
    let _shared = EXCLUSIVE.read().await;
    let (fx, p, ns, ours) = scene("mine", delete_on(&export1()), json!({})).await;
    let client = fx.client.clone();
    let other = fx
        .create_class(json!({
            "metadata": {"name": format!("{}-other", fx.token)},
            "provisioner": "example.com/someone-else",
            "parameters": {"server": "127.0.0.1", "share": export1()},
        }))
        .await;
    let other = other.metadata.name.unwrap_or_default();
    fx.claim(&ns, "theirs", &other, json!({})).await;
    // The positive control: created after the foreign claim, so by the time it is Bound
    // the provisioner's cache had the foreign claim too, and it chose to leave it.
    fx.claim(&ns, "control", &ours, json!({})).await;
    let control = fx.bound_pv(&ns, "control", Duration::from_secs(30)).await;
    assert_eq!(
        control
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by")),
        Some(&fx.provisioner)
    );
    assert!(p.metric("nfs3_provisioner_provision_total{result=\"success\"}") >= Some(1.0));
    let theirs = claims(&client, &ns)
        .await
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("theirs"))
        .expect("the foreign claim");
    assert_eq!(
        phase(&theirs),
        "Pending",
        "nobody provisions the foreign claim"
    );
    let volumes = volumes_of(&client, &ns).await;
    assert_eq!(volumes.len(), 1, "only the control's PV: {volumes:?}");
    let events = events_for(&client, &ns, "theirs").await;
    assert!(
        events
            .iter()
            .all(|(_, r, _)| !r.starts_with("Provisioning")),
        "no provisioning event on the foreign claim: {events:?}"
    );
}

/// The `mounted` backend (a share mounted at a local path, as nfs-subdir deployments
/// have it): the same provisioning and reclaim, on the directory itself; a class asking
/// for another share is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_backend_provisions_and_reclaims_the_same_way() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("mounted").await;
    let client = fx.client.clone();
    let root = export1();
    let p = fx.start(
        "",
        &[
            ("BACKEND", "mounted"),
            ("MOUNT_ROOT", root.as_str()),
            ("NFS_SERVER", "127.0.0.1"),
            ("NFS_PATH", root.as_str()),
        ],
    );
    let ns = fx.namespace().await;
    // No server or share: the provisioner-wide NFS_SERVER / NFS_PATH, as nfs-subdir has it.
    let class = fx
        .class("defaults", json!({"onDelete": "delete", "mode": "0770"}))
        .await;
    let other = fx
        .class("other", json!({"server": "127.0.0.1", "share": export2()}))
        .await;
    fx.claim(&ns, "data", &class, json!({})).await;
    fx.claim(&ns, "elsewhere", &other, json!({})).await;
    wait_event(
        &client,
        &ns,
        "elsewhere",
        "ProvisioningFailed",
        "serves only",
        Duration::from_secs(30),
    )
    .await;
    let pv = fx.bound_pv(&ns, "data", Duration::from_secs(30)).await;
    let dir = on_disk(&pv);
    assert!(dir.starts_with(&root) && dir.is_dir(), "{dir:?}");
    assert_eq!(mode_of(&dir), 0o770);
    std::fs::create_dir_all(dir.join("a/b")).expect("write");
    std::fs::write(dir.join("a/b/f"), "x").expect("write");
    fx.reclaim_all(&ns, Duration::from_secs(30), &p).await;
    assert!(!dir.exists(), "deleted through the mounted backend");
}

/// `audit` run as an operator would, against the cluster and the real share: it counts
/// our volumes, and a directory removed behind the provisioner's back is reported missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_a_volume_whose_directory_is_gone() {
    let _shared = EXCLUSIVE.read().await;
    let (fx, p, ns, class) = scene("audit", delete_on(&export2()), json!({})).await;
    let (client, name) = (fx.client.clone(), fx.provisioner.clone());
    fx.claim(&ns, "kept", &class, json!({})).await;
    fx.claim(&ns, "lost", &class, json!({})).await;
    all_bound(&client, &ns, 2, Duration::from_secs(30), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    let lost = pv_of(&pvs, "lost");
    std::fs::remove_dir(on_disk(lost))
        .expect("remove a volume directory behind the provisioner's back");

    let (code, report) = run_audit(&name, &[]);
    assert_eq!(code, Some(1), "something is missing: exit 1; {report:#}");
    let share = report["shares"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["share"] == json!(export2())))
        .unwrap_or_else(|| panic!("the share is audited: {report:#}"));
    assert_eq!(share["volumes"], json!(2));
    let missing: Vec<&str> = share["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["pv"].as_str())
        .collect();
    assert_eq!(
        missing,
        [lost.metadata.name.as_deref().unwrap_or("")],
        "{share:#}"
    );

    // Deleting a directory that is already gone is a success, not a retry loop.
    fx.reclaim_all(&ns, Duration::from_secs(30), &p).await;
}

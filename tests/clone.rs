//! Cloning a claim end to end: the real provisioner binary against the shared control
//! plane and nfs-ganesha. A source volume is filled on the server's disk, a claim naming
//! it as its `dataSource` is bound to a copy compared entry by entry; a source deleted
//! during the copy and a provisioner killed during the copy leave no volume half
//! filled. The slow copies go through a TCP proxy that delays every NFS reply.

mod common;
#[allow(dead_code)] // this binary only delays replies
#[path = "common/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::*;
use common::conformance::clone_tree;
use common::fixture::Fixture;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use proxy::Proxy;
use serde_json::json;

const NFS_PORT: u16 = 12049;
const MOUNT_PORT: u16 = 12048;
const BIND: Duration = Duration::from_secs(90);

fn from(source: &str) -> serde_json::Value {
    json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": source}})
}

/// Where the copy for the claim with `uid` is staged on export1.
fn staging(uid: &str) -> PathBuf {
    common::nfs()
        .export1
        .join(".nfs3-provisioner/clones")
        .join(uid)
}

fn uid(pvc: &PersistentVolumeClaim) -> String {
    pvc.metadata.uid.clone().unwrap_or_default()
}

/// `n` files of 4 KiB in `dir`: enough calls for a delayed copy to take a while.
fn plant_many(dir: &Path, n: usize) {
    for i in 0..n {
        std::fs::write(dir.join(format!("f-{i:05}")), vec![b'x'; 4096]).unwrap();
    }
}

/// What the volume holds, compared entry by entry (the top itself is the new volume's:
/// the class's mode and the claim's stamp). nfs-ganesha does not set a symlink's own
/// times (see the backend test), so those are not compared.
fn compare_children(src: &Path, copy: &Path) {
    let mut names = 0;
    for entry in std::fs::read_dir(src).unwrap() {
        let n = entry.unwrap().file_name();
        if n != "deep" {
            clone_tree::compare(&src.join(&n), &copy.join(&n), true, false);
            names += 1;
        }
    }
    assert_eq!(
        entries(copy),
        names + usize::from(src.join("deep").exists())
    );
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A class on export1 whose NFS calls go through `proxy`.
fn through(proxy: &Proxy) -> serde_json::Value {
    let mut params = delete_on(&export1());
    params["port"] = json!(proxy.port().to_string());
    params["mountPort"] = json!(MOUNT_PORT.to_string());
    params
}

async fn metric_reaches(p: &Provisioner, series: &str, at_least: f64) -> f64 {
    wait_for(&format!("{series} >= {at_least}"), BIND, || async move {
        p.metric(series).filter(|v| *v >= at_least)
    })
    .await
}

#[tokio::test]
async fn a_clone_is_a_faithful_copy_and_foreign_sources_are_refused() {
    let fx = Fixture::new("clone-copy").await;
    let ns = fx.namespace().await;
    let class = fx.class("c", delete_on(&export1())).await;
    let other_class = fx.class("o", delete_on(&export1())).await;
    let p = fx.start("", &[]);
    let client = fx.client.clone();

    fx.claim(&ns, "src", &class, json!({})).await;
    let src_dir = on_disk(&fx.bound_pv(&ns, "src", BIND).await);
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_dir(&src_dir).unwrap();
    clone_tree::plant(&src_dir, outside.path());

    let copy = fx
        .claim_with(&ns, "copy", &class, json!({}), from("src"))
        .await;
    let copy_dir = on_disk(&fx.bound_pv(&ns, "copy", BIND).await);
    assert_ne!(copy_dir, src_dir);
    compare_children(&src_dir, &copy_dir);
    assert_eq!(
        clone_tree::chain_depth(&copy_dir.join("deep"), "d"),
        clone_tree::DEEP
    );
    assert_eq!(
        std::fs::read_link(copy_dir.join("sub/out")).unwrap(),
        outside.path()
    );
    assert!(!staging(&uid(&copy)).exists(), "no staging directory left");
    let done = wait_event(&client, &ns, "copy", "CloneCompleted", "files", BIND).await;
    assert!(
        done.contains(&format!("{} files", clone_tree::FILES)),
        "{done}"
    );
    wait_event(&client, &ns, "copy", "CloneStarted", "src", BIND).await;
    metric_reaches(&p, "nfs3_provisioner_clone_total{result=\"success\"}", 1.0).await;
    metric_reaches(&p, "nfs3_provisioner_clone_copied_bytes_total", 300_000.0).await;

    // Refused, with the reason, and nothing made: another class, a missing source.
    fx.claim_with(&ns, "cross", &other_class, json!({}), from("src"))
        .await;
    fx.claim_with(&ns, "ghost", &class, json!({}), from("nothing-here"))
        .await;
    wait_event(
        &client,
        &ns,
        "cross",
        "ProvisioningFailed",
        "a clone must use the same class",
        BIND,
    )
    .await;
    wait_event(
        &client,
        &ns,
        "ghost",
        "ProvisioningFailed",
        "does not exist",
        BIND,
    )
    .await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    for name in ["cross", "ghost"] {
        let c = claims.get(name).await.unwrap();
        assert_eq!(phase(&c), "Pending", "{name}");
    }
    fx.reclaim_all(&ns, BIND, &p).await;
}

#[tokio::test]
async fn a_source_deleted_during_the_copy_leaves_no_volume() {
    let fx = Fixture::new("clone-gone").await;
    let ns = fx.namespace().await;
    let proxy = Proxy::start(([127, 0, 0, 1], NFS_PORT).into()).await;
    let class = fx.class("c", through(&proxy)).await;
    let p = fx.start("", &[]);
    let client = fx.client.clone();

    fx.claim(&ns, "src", &class, json!({})).await;
    let src_pv = fx.bound_pv(&ns, "src", BIND).await;
    // Long enough through the delaying proxy (2000 files, several seconds) that the
    // deletion lands in the middle of the copy, not after it.
    plant_many(&on_disk(&src_pv), 2000);
    proxy.delay(Duration::from_millis(5));
    let copy = fx
        .claim_with(&ns, "copy", &class, json!({}), from("src"))
        .await;
    let stage = staging(&uid(&copy));
    fx.remove_later(&stage);
    wait_for("the copy to be under way", BIND, || async {
        (entries(&stage) >= 20).then_some(())
    })
    .await;
    // The copy holds no claim worker: another claim is provisioned meanwhile.
    fx.claim(&ns, "plain", &class, json!({})).await;
    fx.bound_pv(&ns, "plain", BIND).await;
    assert_eq!(
        p.metric("nfs3_provisioner_in_flight{kind=\"clone\"}"),
        Some(1.0),
        "the copy was still running"
    );
    delete_claim(&client, &ns, "src").await;

    wait_event(
        &client,
        &ns,
        "copy",
        "ProvisioningFailed",
        "cannot clone: source claim \"src\"",
        BIND,
    )
    .await;
    wait_for("the staging directory to go", BIND, || async {
        (!stage.exists()).then_some(())
    })
    .await;
    metric_reaches(&p, "nfs3_provisioner_clone_total{result=\"error\"}", 1.0).await;
    // Stopped by the watch, or failing on the source's files as reclaim removed them:
    // either way the copy ended unfinished.
    let log = p.log_tail(400);
    assert!(
        log.contains("clone copy failed") && !log.contains("clone copied"),
        "the running copy failed, not finished"
    );
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    assert_eq!(phase(&claims.get("copy").await.unwrap()), "Pending");
    assert!(
        pv_get(&client, &format!("pvc-{}", uid(&copy)))
            .await
            .is_none(),
        "no PV for the clone"
    );
    let made = find_dirs_named(&common::nfs().export1, &uid(&copy));
    assert!(made.is_empty(), "no directory for the clone: {made:?}");
    proxy.delay(Duration::ZERO);
    fx.reclaim_all(&ns, BIND, &p).await;
}

/// Directories directly in `root` whose name ends with `suffix` (volume directories
/// end with their PV name).
fn find_dirs_named(root: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_provisioner_killed_during_the_copy_starts_it_again() {
    let fx = Fixture::new("clone-kill").await;
    let ns = fx.namespace().await;
    let proxy = Proxy::start(([127, 0, 0, 1], NFS_PORT).into()).await;
    let class = fx.class("c", through(&proxy)).await;
    let mut p = fx.start("", &[]);

    fx.claim(&ns, "src", &class, json!({})).await;
    let src_dir = on_disk(&fx.bound_pv(&ns, "src", BIND).await);
    plant_many(&src_dir, 300);
    std::fs::create_dir(src_dir.join("sub")).unwrap();
    std::fs::write(src_dir.join("sub/last"), b"the end").unwrap();
    proxy.delay(Duration::from_millis(5));
    let copy = fx
        .claim_with(&ns, "copy", &class, json!({}), from("src"))
        .await;
    let stage = staging(&uid(&copy));
    fx.remove_later(&stage);
    wait_for("the copy to be under way", BIND, || async {
        (entries(&stage) >= 20).then_some(())
    })
    .await;
    p.kill9();
    let partial = entries(&stage);
    assert!(
        partial < 301,
        "killed before the copy finished ({partial} entries)"
    );
    proxy.delay(Duration::from_millis(1));
    p.restart();

    let copy_dir = on_disk(&fx.bound_pv(&ns, "copy", BIND).await);
    compare_children(&src_dir, &copy_dir);
    assert!(!stage.exists(), "no staging directory left");
    assert!(
        p.log_tail(400)
            .contains("removing an unfinished clone copy"),
        "the partial copy was removed and made again"
    );
    proxy.delay(Duration::ZERO);
    fx.reclaim_all(&ns, BIND, &p).await;
}

//! End to end: restoring a claim from an archive of its namespace, the refusals, and
//! archive retention, with the real provisioner binary, control plane and NFS server.
//! The archives, their records (in `.nfs3-provisioner/` at the share root) and the
//! restored directories are checked on disk.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::*;
use common::fixture::scene;
use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::json;

const ANN: &str = "nfs3-provisioner.io/restore-from";
const LIMIT: Duration = Duration::from_secs(60);

fn records_dir() -> PathBuf {
    common::nfs().export1.join(".nfs3-provisioner/archives")
}

fn claims_dir() -> PathBuf {
    common::nfs()
        .export1
        .join(".nfs3-provisioner/archive-claims")
}

fn record(name: &str) -> Option<serde_json::Value> {
    let bytes = std::fs::read(records_dir().join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The archive the PV's directory became once reclaimed, waited for on disk.
async fn archived(fx: &common::fixture::Fixture, pv: &PersistentVolume) -> (String, PathBuf) {
    let dir = on_disk(pv);
    let name = format!(
        "archived-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
    );
    fx.pv_gone(pv.metadata.name.as_deref().unwrap_or(""), LIMIT)
        .await;
    let archive = dir.with_file_name(&name);
    assert!(archive.is_dir(), "{archive:?} is the archive");
    assert!(!dir.exists());
    fx.remove_later(records_dir().join(&name));
    fx.remove_later(claims_dir().join(&name));
    (name, archive)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_comes_back_only_into_its_own_namespace() {
    let (fx, p, ns, class) = scene(
        "restore",
        json!({"server": "127.0.0.1", "share": export1(), "onDelete": "archive"}),
        json!({}),
    )
    .await;
    let client = fx.client.clone();
    fx.claim(&ns, "data", &class, json!({})).await;
    let pv = fx.bound_pv(&ns, "data", LIMIT).await;
    std::fs::create_dir(on_disk(&pv).join("sub")).expect("mkdir");
    std::fs::write(on_disk(&pv).join("sub/hello.txt"), "kept").expect("write");
    delete_claim(&client, &ns, "data").await;
    let (name, archive) = archived(&fx, &pv).await;

    // The owner is recorded where tenants cannot write, before the rename.
    let rec = record(&name).expect("a record of the archive");
    assert_eq!(rec["namespace"], ns.as_str());
    assert_eq!(rec["claim"], "data");
    assert_eq!(rec["volume"], pv.metadata.name.as_deref().unwrap_or(""));
    assert_eq!(rec["archive"], name.as_str());

    // `audit` lists it with its owner and the name a restore takes; an archive made by
    // hand has no record and says so.
    let unrecorded = format!("archived-{ns}-by-hand");
    std::fs::create_dir(common::nfs().export1.join(&unrecorded)).expect("mkdir");
    fx.remove_later(common::nfs().export1.join(&unrecorded));
    let (_, report) = run_audit(
        &fx.provisioner,
        &["--server", "127.0.0.1", "--share", &export1()],
    );
    let listed = |path: &str| {
        report["shares"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["archives"].as_array().into_iter().flatten())
            .find(|a| a["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} listed: {report:#}"))
    };
    let a = listed(&name);
    assert_eq!(
        (&a["namespace"], &a["claim"], &a["name"], &a["recorded"]),
        (&json!(ns), &json!("data"), &json!(name), &json!(true)),
        "{a:#}"
    );
    let b = listed(&unrecorded);
    assert_eq!(b["recorded"], json!(false), "{b:#}");
    assert!(b.get("namespace").is_none(), "{b:#}");

    // Another namespace names it: refused, nothing moves.
    let other = fx.namespace().await;
    fx.claim(
        &other,
        "steal",
        &class,
        json!({"annotations": {ANN: &name}}),
    )
    .await;
    wait_event(
        &client,
        &other,
        "steal",
        "ProvisioningFailed",
        &format!("no archive {name:?} of this namespace is recorded"),
        LIMIT,
    )
    .await;
    // An archive that does not exist, and a name that is a path.
    fx.claim(
        &ns,
        "missing",
        &class,
        json!({"annotations": {ANN: "archived-nothing-here"}}),
    )
    .await;
    wait_event(
        &client,
        &ns,
        "missing",
        "ProvisioningFailed",
        "no archive \"archived-nothing-here\" of this namespace is recorded",
        LIMIT,
    )
    .await;
    fx.claim(
        &ns,
        "dotdot",
        &class,
        json!({"annotations": {ANN: format!("../{name}")}}),
    )
    .await;
    wait_event(
        &client,
        &ns,
        "dotdot",
        "ProvisioningFailed",
        "is not a name",
        LIMIT,
    )
    .await;
    assert!(
        archive.join("sub/hello.txt").exists(),
        "a refused restore leaves the archive"
    );
    assert!(record(&name).is_some(), "and its record");
    for (n, c) in [(&other, "steal"), (&ns, "missing"), (&ns, "dotdot")] {
        let claims = claims(&client, n).await;
        let claim = claims
            .iter()
            .find(|x| x.metadata.name.as_deref() == Some(c))
            .expect("claim");
        assert_eq!(phase(claim), "Pending", "{c} stays Pending");
    }

    // Its own namespace gets it: renamed into the new volume, no longer an archive.
    // Two claims ask at once: exactly one gets it.
    let (back, twin) = tokio::join!(
        fx.claim(&ns, "back", &class, json!({"annotations": {ANN: &name}})),
        fx.claim(&ns, "twin", &class, json!({"annotations": {ANN: &name}})),
    );
    let winner = wait_for("one of the two to be Bound", LIMIT, || async {
        let all = claims(&client, &ns).await;
        all.iter()
            .filter(|c| phase(c) == "Bound")
            .find_map(|c| c.metadata.name.clone())
    })
    .await;
    let loser = if winner == "back" { &twin } else { &back };
    let loser = loser.metadata.name.clone().unwrap_or_default();
    let restored = fx.bound_pv(&ns, &winner, LIMIT).await;
    assert_eq!(
        std::fs::read_to_string(on_disk(&restored).join("sub/hello.txt")).ok(),
        Some("kept".to_string()),
        "the archive's data is in the new volume"
    );
    assert_ne!(on_disk(&restored), archive);
    assert!(!exists(&archive), "the archive is gone");
    wait_for("the record and claim to go", LIMIT, || async {
        (!exists(&records_dir().join(&name)) && !exists(&claims_dir().join(&name))).then_some(())
    })
    .await;
    // The refused claim of the other namespace still has nothing, nor has the one
    // that lost the race: it is told why.
    let steal = claims(&client, &other).await;
    assert_eq!(phase(&steal[0]), "Pending");
    let msg = wait_event(
        &client,
        &ns,
        &loser,
        "ProvisioningFailed",
        "cannot restore",
        LIMIT,
    )
    .await;
    assert!(
        msg.contains("is being restored by claim") || msg.contains("no archive"),
        "{msg}"
    );
    let all = claims(&client, &ns).await;
    let lost = all
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(loser.as_str()))
        .expect("the other claim");
    assert_eq!(phase(lost), "Pending", "only one claim gets the archive");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_past_their_retention_are_removed_and_younger_ones_kept() {
    let fx = common::fixture::Fixture::new("retention").await;
    let p = fx.start("", &[("ARCHIVE_RETENTION_INTERVAL", "1s")]);
    let ns = fx.namespace().await;
    let class = fx
        .class(
            "c",
            json!({"server": "127.0.0.1", "share": export1(), "onDelete": "archive", "archiveRetention": "1h"}),
        )
        .await;
    let client = fx.client.clone();
    for c in ["old", "young"] {
        fx.claim(&ns, c, &class, json!({})).await;
    }
    let old = fx.bound_pv(&ns, "old", LIMIT).await;
    let young = fx.bound_pv(&ns, "young", LIMIT).await;
    for pv in [&old, &young] {
        std::fs::write(on_disk(pv).join("f"), "x").expect("write");
    }
    // An archive nobody recorded: its age is unknown, it is never removed by itself.
    let unrecorded = common::nfs()
        .export1
        .join(format!("archived-{ns}-unrecorded"));
    std::fs::create_dir(&unrecorded).expect("mkdir");
    fx.remove_later(&unrecorded);
    delete_claim(&client, &ns, "old").await;
    delete_claim(&client, &ns, "young").await;
    let (old_name, old_archive) = archived(&fx, &old).await;
    let (young_name, young_archive) = archived(&fx, &young).await;
    assert!(record(&young_name).is_some() && record(&old_name).is_some());

    // Two hours ago, as far as the record says.
    let mut rec = record(&old_name).expect("record");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    rec["archivedAt"] = json!(now - 7200);
    std::fs::write(
        records_dir().join(&old_name),
        serde_json::to_vec(&rec).expect("json"),
    )
    .expect("age the record");

    let log = || p.log_tail(30);
    wait_explained("the old archive to be removed", LIMIT, log, || async {
        (!exists(&old_archive) && !exists(&records_dir().join(&old_name))).then_some(())
    })
    .await;
    assert!(
        p.metric("nfs3_provisioner_archives_expired_total")
            .is_some_and(|v| v >= 1.0),
        "the removal is counted"
    );
    // Two more whole passes: the younger archive and the unrecorded one were looked at
    // and kept.
    let passes = p
        .metric("nfs3_provisioner_archive_retention_passes_total")
        .unwrap_or(0.0);
    wait_explained("two more retention passes", LIMIT, log, || async {
        p.metric("nfs3_provisioner_archive_retention_passes_total")
            .filter(|v| *v >= passes + 2.0)
    })
    .await;
    assert!(young_archive.join("f").exists(), "a younger archive stays");
    assert!(record(&young_name).is_some(), "with its record");
    assert!(unrecorded.exists(), "an unrecorded archive stays");
    assert!(
        p.log_tail(200)
            .contains("archive past its retention removed"),
        "a log line per archive removed"
    );
    drop(p);
}

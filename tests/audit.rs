//! The audit core against the real NFS server (nfs-ganesha), without Kubernetes: PVs are
//! built here, the tree is planted on the exported directory, and the audit only looks
//! under this run's own base directory, so other tests writing to the export never show.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::conformance::RWX;
use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeSpec,
    PersistentVolumeStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use nfs3_provisioner::audit::{self, ArchiveAction, Orphan, Policy, ShareReport};
use nfs3_provisioner::backend::nfs3::{Nfs3Options, Nfs3Share};
use nfs3_provisioner::backend::{Share, Target};
use nfs3_provisioner::config::DEFAULT_PROVISIONER;
use nfs3_provisioner::path::RelPath;
use nfs3_provisioner::plan::{
    ANN_DIRECTORY, ANN_ON_DELETE, ANN_PROVISIONED_BY, ANN_SERVER, ANN_SHARE,
};

const DAY: u64 = 86400;

fn target() -> Target {
    let env = common::nfs();
    Target {
        server: env.server.clone(),
        share: env.export1.to_str().unwrap().to_string(),
        port: None,
        mount_port: None,
    }
}

/// A PV of ours, as provisioning records it.
fn ours(name: &str, dir: &str, phase: &str) -> PersistentVolume {
    let t = target();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(BTreeMap::from([
                (ANN_PROVISIONED_BY.into(), DEFAULT_PROVISIONER.into()),
                (ANN_SERVER.into(), t.server.clone()),
                (ANN_SHARE.into(), t.share.clone()),
                (ANN_DIRECTORY.into(), dir.into()),
                (ANN_ON_DELETE.into(), "archive".into()),
            ])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            nfs: Some(NFSVolumeSource {
                server: t.server.clone(),
                path: format!("{}/{dir}", t.share),
                read_only: None,
            }),
            claim_ref: Some(ObjectReference {
                namespace: Some("team-a".into()),
                name: Some(format!("claim-{phase}")),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

/// A static PV someone made by hand to read an archive back.
fn static_pv(name: &str, dir: &str) -> PersistentVolume {
    let t = target();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            nfs: Some(NFSVolumeSource {
                server: "another-name-for-the-server".into(),
                path: format!("{}/{dir}/", t.share),
                read_only: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

/// Ages a directory on disk. Done before the server first sees it, so no attribute
/// cache of the server can hide the change.
fn age(p: &Path, days: u64) {
    let then = SystemTime::now() - Duration::from_secs(days * DAY);
    fs::File::open(p).unwrap().set_modified(then).unwrap();
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn policy(apply: bool) -> Policy {
    policy_at(apply, now())
}

/// Archive ages count from the last change, and archiving itself is a change (ctime),
/// which no test can set in the past: the later audits are run "in the future" instead.
fn policy_at(apply: bool, now: i64) -> Policy {
    Policy {
        provisioner: DEFAULT_PROVISIONER.into(),
        prune_older_than: Some(Duration::from_secs(7 * DAY)),
        apply,
        now,
        adopt: None,
    }
}

fn actions(r: &ShareReport) -> Vec<(String, ArchiveAction)> {
    r.archives
        .iter()
        .map(|a| (a.path.clone(), a.action.clone()))
        .collect()
}

fn orphan(path: String, kind: &'static str, empty: Option<bool>) -> Orphan {
    Orphan { path, kind, empty }
}

#[tokio::test]
async fn audit_reports_and_prunes_on_a_real_share() {
    let env = common::nfs();
    let scratch = common::scratch(&env.export1, "audit");
    let base = scratch.name.clone();
    let id = &base["audit-".len()..];
    let disk = env.export1.join(&base);
    let at = |p: &str| disk.join(p);
    let b = |p: &str| format!("{base}/{p}");
    let pv = |suffix: &str| format!("pvc-{id}-{suffix}");

    // The tree, planted on disk first.
    mkdir(&at("ns/claim"));
    fs::write(at("ns/claim/data.txt"), b"the volume's own data").unwrap();
    mkdir(&at("ns/stray"));
    mkdir(&at("orphan-dir/inside"));
    mkdir(&at("empty-orphan"));
    fs::write(at("orphan-file"), b"x").unwrap();
    let old = [
        at(&format!("ns/archived-old-{}", pv("a"))),
        at(&format!("archived-old-{}", pv("b"))),
        at(&format!("gone-ns/archived-data-{}", pv("e"))),
        // Old, but its PV is still there (being deleted).
        at(&format!("archived-kept-dir-{}", pv("kept"))),
        // Old, but a static PV reads it back.
        at(&format!("archived-restored-{}", pv("d"))),
    ];
    for dir in &old {
        mkdir(&dir.join("sub/deeper"));
        fs::write(dir.join("sub/deeper/file"), b"archived data").unwrap();
        age(dir, 30);
    }
    let fresh = at(&format!("archived-new-{}", pv("c")));
    mkdir(&fresh.join("sub/deeper"));
    fs::write(fresh.join("sub/deeper/file"), b"archived data").unwrap();

    // A volume directory made over NFS, as provisioning does.
    let share = Nfs3Share::new(target(), Nfs3Options::default());
    share
        .create_dir(&RelPath::parse(&b("live")).unwrap(), RWX)
        .await
        .unwrap();

    let mut deleting = ours(&pv("kept"), &b("kept-dir"), "Released");
    deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
    let pvs = vec![
        ours(&pv("live"), &b("live"), "Bound"),
        ours(&pv("nested"), &b("ns/claim"), "Bound"),
        ours(&pv("missing"), &b("never-made"), "Bound"),
        deleting,
        static_pv("restore", &b(&format!("archived-restored-{}", pv("d")))),
    ];
    let under = RelPath::parse(&base).unwrap();

    // Dry run: everything is reported and nothing removed.
    let r = audit::audit_share(&share, &target(), &pvs, Some(&under), &policy(false))
        .await
        .unwrap();
    assert_eq!(r.volumes, 4);
    let missing: Vec<(&str, bool)> = r
        .missing
        .iter()
        .map(|m| (m.pv.as_str(), m.deleting))
        .collect();
    assert_eq!(missing, [(&*pv("kept"), true), (&*pv("missing"), false)]);
    assert_eq!(r.missing[1].claim.as_deref(), Some("team-a/claim-Bound"));
    assert_eq!(r.missing[1].phase.as_deref(), Some("Bound"));
    assert_eq!(r.missing[1].reason, "does not exist");
    assert_eq!(
        r.orphans,
        [
            orphan(b("empty-orphan"), "directory", Some(true)),
            orphan(b("ns/stray"), "directory", Some(true)),
            orphan(b("orphan-dir"), "directory", Some(false)),
            orphan(b("orphan-file"), "file", None),
        ]
    );
    // Old contents (mtime 30 days back) but archived just now: nothing is old enough.
    assert!(
        r.archives.iter().all(|a| a.age_seconds < DAY),
        "{:?}",
        r.archives
    );
    assert!(
        r.archives.iter().all(|a| matches!(
            a.action,
            ArchiveAction::Keep | ArchiveAction::Protected { .. }
        )),
        "{:?}",
        r.archives
    );

    // A month later.
    let later = now() + 30 * DAY as i64;
    let r = audit::audit_share(
        &share,
        &target(),
        &pvs,
        Some(&under),
        &policy_at(false, later),
    )
    .await
    .unwrap();
    let to_prune = [
        b(&format!("archived-new-{}", pv("c"))),
        b(&format!("archived-old-{}", pv("b"))),
        b(&format!("gone-ns/archived-data-{}", pv("e"))),
        b(&format!("ns/archived-old-{}", pv("a"))),
    ];
    let expected = |pruned: bool| {
        let gone = |p: &String| {
            (
                p.clone(),
                if pruned {
                    ArchiveAction::Pruned { entries: 4 }
                } else {
                    ArchiveAction::WouldPrune
                },
            )
        };
        vec![
            (
                b(&format!("archived-kept-dir-{}", pv("kept"))),
                ArchiveAction::Protected {
                    by: vec![pv("kept")],
                },
            ),
            gone(&to_prune[0]),
            gone(&to_prune[1]),
            gone(&to_prune[2]),
            gone(&to_prune[3]),
        ]
    };
    assert_eq!(actions(&r), expected(false));
    let old_age = r.archives[0].age_seconds;
    assert!(
        (30 * DAY - 600..=30 * DAY + 600).contains(&old_age),
        "{old_age}"
    );
    for dir in old.iter().chain([&fresh]) {
        assert!(dir.exists(), "a dry run removed {}", dir.display());
    }

    // Applied: only the old archives nobody needs go.
    let r = audit::audit_share(
        &share,
        &target(),
        &pvs,
        Some(&under),
        &policy_at(true, later),
    )
    .await
    .unwrap();
    assert_eq!(actions(&r), expected(true));
    for p in &to_prune {
        assert!(!env.export1.join(p).exists(), "{p} was not pruned");
    }
    for kept in [&old[3], &old[4], &at("gone-ns"), &at("ns/stray")] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert_eq!(
        fs::read(at("ns/claim/data.txt")).unwrap(),
        b"the volume's own data"
    );
    assert!(at("live").is_dir() && at("orphan-dir/inside").is_dir());

    // Once its archives are gone, their emptied parent is an orphan like any other.
    let r = audit::audit_share(
        &share,
        &target(),
        &pvs,
        Some(&under),
        &policy_at(true, later),
    )
    .await
    .unwrap();
    assert!(
        r.archives
            .iter()
            .all(|a| !matches!(a.action, ArchiveAction::Pruned { .. })),
        "{:?}",
        r.archives
    );
    assert!(
        r.orphans
            .contains(&orphan(b("gone-ns"), "directory", Some(true))),
        "{:?}",
        r.orphans
    );

    share.remove_tree(&under).await.unwrap();
    assert!(!disk.exists());
}

/// Without PVs, a share can still be audited; an unreachable one is an error, not a
/// clean bill.
#[tokio::test]
async fn audit_of_an_unreachable_share_fails() {
    let missing = Target {
        share: "/no/such/export".into(),
        ..target()
    };
    let share = Nfs3Share::new(missing.clone(), Nfs3Options::default());
    let err = audit::audit_share(&share, &missing, &[], None, &policy(false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/export"), "{err}");
}

/// Archives are listed with the owner their record names (or as unrecorded); one a
/// restore holds is never pruned, and a pruned one takes its record with it.
#[tokio::test]
async fn audit_reads_archive_records_and_prunes_them_with_their_archives() {
    let env = common::nfs();
    let scratch = common::scratch(&env.export1, "audit-rec");
    let base = scratch.name.clone();
    let disk = env.export1.join(&base);
    let meta = env.export1.join(".nfs3-provisioner");
    for a in ["archived-a", "archived-b", "archived-c"] {
        mkdir(&disk.join(a));
    }
    let key = |a: &str| format!("{base}%2F{a}");
    let t = target();
    mkdir(&meta.join("archives"));
    mkdir(&meta.join("archive-claims"));
    for a in ["archived-a", "archived-b"] {
        let record = serde_json::json!({
            "version": 1, "namespace": "team-a", "claim": format!("claim-{a}"),
            "claimUid": "u", "volume": "pvc-u", "class": "c", "server": t.server,
            "share": t.share, "directory": format!("{base}/data"),
            "archive": format!("{base}/{a}"), "archivedAt": 0,
        });
        fs::write(
            meta.join("archives").join(key(a)),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
    }
    // A restore holds archived-b.
    let held = serde_json::json!({
        "version": 1, "purpose": "restore", "archive": format!("{base}/archived-b"), "at": 0,
    });
    let held_path = meta.join("archive-claims").join(key("archived-b"));
    fs::write(&held_path, serde_json::to_vec(&held).unwrap()).unwrap();

    let share = Nfs3Share::new(target(), Nfs3Options::default());
    let under = RelPath::parse(&base).unwrap();
    let later = now() + 30 * DAY as i64;
    let r = audit::audit_share(
        &share,
        &target(),
        &[],
        Some(&under),
        &policy_at(true, later),
    )
    .await
    .unwrap();
    let by_path = |a: &str| {
        r.archives
            .iter()
            .find(|x| x.path == format!("{base}/{a}"))
            .unwrap_or_else(|| panic!("{a} listed: {:?}", r.archives))
    };
    let a = by_path("archived-a");
    assert_eq!(
        (a.recorded, a.namespace.as_deref(), a.claim.as_deref()),
        (true, Some("team-a"), Some("claim-archived-a"))
    );
    assert_eq!(a.name, key("archived-a"));
    assert!(matches!(a.action, ArchiveAction::Pruned { .. }), "{a:?}");
    assert!(!disk.join("archived-a").exists());
    assert!(!meta.join("archives").join(key("archived-a")).exists());
    assert!(!meta.join("archive-claims").join(key("archived-a")).exists());

    let b = by_path("archived-b");
    assert!(matches!(b.action, ArchiveAction::Changed { .. }), "{b:?}");
    assert!(disk.join("archived-b").exists(), "a held archive stays");
    assert!(held_path.exists(), "and so does its holder's claim");

    let c = by_path("archived-c");
    assert!(!c.recorded && c.namespace.is_none(), "{c:?}");

    for f in [held_path, meta.join("archives").join(key("archived-b"))] {
        let _ = fs::remove_file(f);
    }
}

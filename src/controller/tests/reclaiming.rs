//! The volume reconciler against a scripted API server: the order of its steps on the
//! share and in the API, and that nothing is deleted when anything is unclear.

use std::time::Duration;

use serde_json::json;

use super::harness::*;
use crate::controller::Error;

const PV_ITEM: &str = "/api/v1/persistentvolumes/pvc-0b5e7c2a-1d4f-4a6b-9c3e-8f2d1a0b9c7e";

/// The share of a released volume: its directory with data in it, and a neighbour.
fn populated(h: &Harness, dir: &str) {
    let d = h.share().join(dir);
    std::fs::create_dir_all(d.join("sub")).expect("mkdir");
    std::fs::write(d.join("sub/file"), b"data").expect("write");
    std::fs::create_dir_all(h.share().join("neighbour")).expect("mkdir");
}

/// The script of a reclaim that gets through: the claim is gone, the PV is deleted
/// (held by finalizers), our finalizer goes.
fn script_release(h: &Harness, pv: &k8s_openapi::api::core::v1::PersistentVolume) {
    let held = deleting(pv);
    let mut released = held.clone();
    released["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
    h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
    h.expect("DELETE", PV_ITEM, move |_| Reply::ok(held));
    h.expect("PATCH", PV_ITEM, move |_| Reply::ok(released));
}

fn release_calls() -> [String; 3] {
    [
        format!("GET {CLAIM_PATH}"),
        format!("DELETE {PV_ITEM}"),
        format!("PATCH {PV_ITEM}"),
    ]
}

#[tokio::test]
async fn delete_removes_the_directory_then_the_volume_then_the_finalizer() {
    let h = Harness::start();
    populated(&h, DIR);
    let pv = released_pv(DIR, "delete");
    script_release(&h, &pv);
    let action = h.reclaim(&pv).await.expect("reclaimed");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(h.calls(), release_calls());
    // The claim was looked for while the data was still there; gone before the PV was.
    assert!(h.call(0).share_then.contains(&DIR.to_string()));
    assert_eq!(h.call(1).share_then, ["neighbour"]);
    let patch = h.call(2);
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
    assert_eq!(
        patch.body,
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}})
    );
    assert_eq!(h.dirs(), ["neighbour"]);
    assert!(h.events().is_empty(), "{:?}", h.events());
}

#[tokio::test]
async fn archive_renames_the_directory_beside_itself() {
    let h = Harness::start();
    populated(&h, DIR);
    let pv = released_pv(DIR, "archive");
    script_release(&h, &pv);
    h.reclaim(&pv).await.expect("reclaimed");
    assert_eq!(h.calls(), release_calls());
    let archived = format!("archived-{DIR}");
    // The record of who owned it is written beside the share's volumes, before the rename.
    assert_eq!(
        h.call(1).share_then,
        [
            ".nfs3-provisioner".into(),
            ".nfs3-provisioner/archives".into(),
            archived.clone(),
            format!("{archived}/sub"),
            "neighbour".into()
        ]
    );
    let file = h.share().join(&archived).join("sub/file");
    assert_eq!(std::fs::read(file).expect("archived data"), b"data");
    let record = h.share().join(".nfs3-provisioner/archives").join(&archived);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).expect("record")).expect("json");
    assert_eq!(record["archive"], json!(archived));
    assert_eq!(record["directory"], json!(DIR));
}

/// onDelete retain: the PV goes, the directory stays as it is.
#[tokio::test]
async fn retain_leaves_the_directory_and_lets_the_volume_go() {
    let h = Harness::start();
    populated(&h, DIR);
    let before = h.dirs();
    let pv = released_pv(DIR, "retain");
    script_release(&h, &pv);
    h.reclaim(&pv).await.expect("reclaimed");
    assert_eq!(h.calls(), release_calls());
    assert_eq!(h.dirs(), before);
    assert_eq!(
        std::fs::read(h.share().join(DIR).join("sub/file")).expect("data"),
        b"data"
    );
}

/// Reclaim policy Retain: the provisioner does nothing at all.
#[tokio::test]
async fn a_retained_volume_is_not_touched() {
    let h = Harness::start();
    populated(&h, DIR);
    let before = h.dirs();
    let mut pv = released_pv(DIR, "delete");
    pv.spec
        .as_mut()
        .expect("spec")
        .persistent_volume_reclaim_policy = Some("Retain".into());
    let action = h.reclaim(&pv).await.expect("skipped");
    assert_eq!(requeue_after(&action), None);
    assert!(h.calls().is_empty());
    assert_eq!(h.dirs(), before);
}

/// The PV was deleted by someone else meanwhile: the delete's 404 is success.
#[tokio::test]
async fn a_volume_already_gone_is_fine() {
    let h = Harness::start();
    populated(&h, DIR);
    let pv = released_pv(DIR, "delete");
    h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
    h.expect("DELETE", PV_ITEM, |_| Reply::status(404, "NotFound"));
    let action = h.reclaim(&pv).await.expect("reclaimed");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(
        h.calls(),
        [format!("GET {CLAIM_PATH}"), format!("DELETE {PV_ITEM}")]
    );
    assert_eq!(h.dirs(), ["neighbour"]);
}

/// The finalizer's removal answered 409: a transient error, retried soon; the retry (the
/// PV's next event, now being deleted) only removes the finalizer, without asking for the
/// claim or touching the share again.
#[tokio::test]
async fn a_conflict_on_the_finalizer_is_retried_without_reclaiming_again() {
    let h = Harness::start();
    populated(&h, DIR);
    let pv = released_pv(DIR, "delete");
    let held = deleting(&pv);
    let answer = held.clone();
    h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
    h.expect("DELETE", PV_ITEM, move |_| Reply::ok(answer));
    h.expect("PATCH", PV_ITEM, |_| Reply::status(409, "Conflict"));
    let err = h.reclaim(&pv).await.expect_err("conflict");
    assert!(
        matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == 409),
        "{err}"
    );
    assert!(!err.is_permanent());
    let next = requeue_after(&h.after_error(&pv, &err)).expect("requeued");
    assert!(next < Duration::from_secs(2), "{next:?}");
    assert_eq!(h.dirs(), ["neighbour"]);

    // The event the delete brings: the PV with its deletion timestamp.
    let pv_now = serde_json::from_value(held.clone()).expect("a PV");
    let mut released = held;
    released["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
    h.expect("PATCH", PV_ITEM, move |_| Reply::ok(released));
    let action = h.reclaim(&pv_now).await.expect("finalizer released");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(
        h.calls(),
        [
            format!("GET {CLAIM_PATH}"),
            format!("DELETE {PV_ITEM}"),
            format!("PATCH {PV_ITEM}"),
            format!("PATCH {PV_ITEM}"),
        ]
    );
    assert!(h.events().is_empty(), "{:?}", h.events());
}

/// Released, but the claim with the recorded uid is still there (the cache is behind,
/// or the phase is wrong): nothing is deleted, looked at again in 30 s.
#[tokio::test]
async fn a_volume_whose_claim_still_exists_is_not_reclaimed() {
    let h = Harness::start();
    populated(&h, DIR);
    let before = h.dirs();
    let pv = released_pv(DIR, "delete");
    h.expect("GET", CLAIM_PATH, |_| {
        Reply::ok(serde_json::to_value(claim()).expect("claim"))
    });
    let action = h.reclaim(&pv).await.expect("waiting");
    assert_eq!(requeue_after(&action), Some(Duration::from_secs(30)));
    assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")]);
    assert_eq!(h.dirs(), before);
}

/// A PV whose annotations are missing, edited to leave the share, or that disagree
/// with its `spec.nfs.path`: nothing is deleted anywhere, a warning on the PV, and a
/// permanent error (an administrator must look).
#[tokio::test]
async fn an_ambiguous_volume_deletes_nothing() {
    let mut missing = released_pv(DIR, "delete");
    missing
        .metadata
        .annotations
        .as_mut()
        .expect("annotations")
        .remove(ANN_DIRECTORY);
    // Resolved against the share, this would be the directory beside it.
    let escaping = released_pv("../victim", "delete");
    let mut mismatched = released_pv(DIR, "delete");
    mismatched
        .spec
        .as_mut()
        .expect("spec")
        .nfs
        .as_mut()
        .expect("nfs")
        .path = format!("{SHARE}/neighbour");
    for (case, pv) in [
        ("missing", missing),
        ("escaping", escaping),
        ("mismatched", mismatched),
    ] {
        let h = Harness::start();
        populated(&h, DIR);
        std::fs::create_dir(h.outside().join("victim")).expect("mkdir");
        let before = (h.dirs(), tree(&h.outside()));
        h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
        let err = h.reclaim(&pv).await.expect_err(case);
        assert!(matches!(err, Error::Refused(_)), "{case}: {err}");
        assert!(err.is_permanent(), "{case}");
        assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")], "{case}");
        assert_eq!((h.dirs(), tree(&h.outside())), before, "{case}");
        assert_eq!(h.events(), ["Warning VolumeFailedDelete"], "{case}");
        let ev = h.event("VolumeFailedDelete");
        assert_eq!(ev.regarding, format!("PersistentVolume//{PV}"), "{case}");
        assert!(ev.note.contains("left in place"), "{case}: {}", ev.note);
    }
}

/// Without our `provisioned-by` annotation a PV is not ours: not even its claim is
/// looked up.
#[tokio::test]
async fn a_volume_not_provisioned_by_us_is_not_touched() {
    let h = Harness::start();
    populated(&h, DIR);
    let before = h.dirs();
    let mut pv = released_pv(DIR, "delete");
    pv.metadata.annotations = None;
    let action = h.reclaim(&pv).await.expect("skipped");
    assert_eq!(requeue_after(&action), None);
    assert!(h.calls().is_empty());
    assert!(h.events().is_empty());
    assert_eq!(h.dirs(), before);
}

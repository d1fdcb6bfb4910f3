//! The claim reconciler against a scripted API server: which requests it makes, what
//! it leaves on the share, and how it answers the API server's refusals and races.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use serde_json::json;

use super::harness::*;
use crate::controller::Error;

/// Answers a create with the object asked for, as the API server does.
fn echo(body: &serde_json::Value) -> Reply {
    Reply::created(body.clone())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn a_claim_gets_its_directory_then_its_volume() {
    let mut h = Harness::start();
    h.add_class(class(&[("onDelete", "delete")]));
    h.expect("POST", PV_PATH, echo);

    let action = h.provision(&claim()).await.expect("provisioned");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(h.calls(), [format!("POST {PV_PATH}")]);
    let create = h.call(0);
    // The directory was made before the PV that points at it was written.
    assert_eq!(create.share_then, [DIR]);
    assert_eq!(h.dirs(), [DIR]);
    let meta = std::fs::metadata(h.share().join(DIR)).expect("directory");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o777);
    // The claim's stamp, by which a retry recognises its own directory.
    let (secs, _) = crate::plan::ownership::stamp(CLAIM_UID);
    assert_eq!(meta.mtime(), i64::from(secs));

    let pv = &create.body;
    assert_eq!(pv["metadata"]["name"], PV);
    assert_eq!(pv["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(
        pv["metadata"]["annotations"],
        json!({
            ANN_PROVISIONED_BY: PROVISIONER,
            ANN_SERVER: SERVER,
            ANN_SHARE: SHARE,
            ANN_DIRECTORY: DIR,
            ANN_ON_DELETE: "delete",
        })
    );
    let spec = &pv["spec"];
    assert_eq!(
        spec["nfs"],
        json!({"server": SERVER, "path": format!("{SHARE}/{DIR}")})
    );
    assert_eq!(spec["capacity"], json!({"storage": "1Gi"}));
    assert_eq!(spec["accessModes"], json!(["ReadWriteMany"]));
    assert_eq!(spec["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(spec["storageClassName"], "nfs");
    assert_eq!(spec["mountOptions"], json!(["nfsvers=3"]));
    assert_eq!(spec["volumeMode"], "Filesystem");
    let cref = &spec["claimRef"];
    assert_eq!(
        (&cref["namespace"], &cref["name"], &cref["uid"]),
        (&json!(NS), &json!(CLAIM), &json!(CLAIM_UID))
    );

    // "Provisioning" goes out together with the work, the success after it returned.
    h.wait_events(2).await;
    assert_eq!(
        sorted(h.events()),
        ["Normal Provisioning", "Normal ProvisioningSucceeded"]
    );
    let ok = h.event("ProvisioningSucceeded");
    assert_eq!(ok.regarding, format!("PersistentVolumeClaim/{NS}/{CLAIM}"));
    assert_eq!(ok.note, format!("Successfully provisioned volume {PV}"));
}

/// A first attempt made the directory and its PV create failed on the way (here a 500;
/// an answer lost with the connection is the same); the retry's create finds the PV
/// made: accepted as is, without looking at it.
#[tokio::test]
async fn a_volume_an_earlier_attempt_created_is_accepted() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    h.expect("POST", PV_PATH, |_| Reply::status(500, "InternalError"));
    let err = h
        .provision(&claim())
        .await
        .expect_err("first attempt fails");
    assert!(
        matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == 500),
        "{err}"
    );
    assert!(!err.is_permanent());
    assert_eq!(h.dirs(), [DIR], "the directory stays for the retry");

    h.expect("POST", PV_PATH, |_| Reply::status(409, "AlreadyExists"));
    let action = h.provision(&claim()).await.expect("accepted");
    assert_eq!(requeue_after(&action), None, "no error loop");
    assert_eq!(
        h.calls(),
        [format!("POST {PV_PATH}"), format!("POST {PV_PATH}")]
    );
    assert_eq!(h.call(0).body, h.call(1).body, "the same PV both times");
    // One directory: the retry recognised its own by the claim's stamp.
    assert_eq!(h.dirs(), [DIR]);
    h.wait_events(4).await;
    assert_eq!(
        sorted(h.events()),
        [
            "Normal Provisioning",
            "Normal Provisioning",
            "Normal ProvisioningSucceeded",
            "Warning ProvisioningFailed",
        ]
    );
}

/// 403 (RBAC lacks `create` on PVs) and 422 (the API server rejects the PV) cannot pass
/// by themselves: a permanent error, retried every 5 minutes, told on the claim. The
/// directory made for the PV stays: the retry recognises it by its stamp.
#[tokio::test]
async fn a_refused_volume_is_a_permanent_failure_told_on_the_claim() {
    for (code, reason) in [(403, "Forbidden"), (422, "Invalid")] {
        let mut h = Harness::start();
        h.add_class(class(&[]));
        h.expect("POST", PV_PATH, move |_| Reply::status(code, reason));
        let err = h.provision(&claim()).await.expect_err("refused");
        assert!(
            matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == code),
            "{err}"
        );
        assert!(err.is_permanent(), "{code}");
        let next = h.after_error(&claim(), &err);
        assert_eq!(
            requeue_after(&next),
            Some(Duration::from_secs(300)),
            "{code}"
        );
        assert_eq!(h.calls(), [format!("POST {PV_PATH}")]);
        assert_eq!(h.dirs(), [DIR], "{code}: kept for the retry");
        h.wait_events(2).await;
        assert_eq!(
            sorted(h.events()),
            ["Normal Provisioning", "Warning ProvisioningFailed"]
        );
        let failed = h.event("ProvisioningFailed");
        assert_eq!(
            failed.regarding,
            format!("PersistentVolumeClaim/{NS}/{CLAIM}")
        );
        assert!(failed.note.contains("administrator"), "{}", failed.note);
        assert!(failed.note.contains(reason), "{}", failed.note);
    }
}

/// The control for the one above: a server error is retried soon.
#[tokio::test]
async fn a_server_error_is_retried_soon() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    h.expect("POST", PV_PATH, |_| {
        Reply::status(503, "ServiceUnavailable")
    });
    let err = h.provision(&claim()).await.expect_err("fails");
    assert!(!err.is_permanent());
    let next = requeue_after(&h.after_error(&claim(), &err)).expect("requeued");
    assert!(next < Duration::from_secs(2), "{next:?}");
    h.wait_events(2).await;
    let failed = h.event("ProvisioningFailed");
    assert!(failed.note.ends_with("will retry"), "{}", failed.note);
}

/// The binder got there first: the claim in the cache already names a volume, or the
/// claim's PV is already in the cache. Nothing is asked, nothing made.
#[tokio::test]
async fn a_claim_bound_or_provisioned_meanwhile_is_left_alone() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    let mut bound = claim();
    bound.spec.as_mut().expect("spec").volume_name = Some("pv-static".into());
    let action = h.provision(&bound).await.expect("skipped");
    assert_eq!(requeue_after(&action), None);

    let mut deleting = claim();
    deleting.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2026-11-30T21:00:00Z")).expect("a timestamp"));
    h.provision(&deleting).await.expect("skipped");

    h.add_volume(&released_pv(DIR, "delete"));
    let action = h.provision(&claim()).await.expect("skipped");
    assert_eq!(requeue_after(&action), None);

    assert!(h.calls().is_empty());
    assert!(h.events().is_empty());
    assert!(h.dirs().is_empty());
}

/// A claim cached stripped of the labels its class's template reads is read again
/// before anything is made; gone or replaced by a claim of the same name (another uid)
/// by then, nothing is made.
#[tokio::test]
async fn a_claim_deleted_or_replaced_before_the_write_gets_nothing() {
    let stripped = || {
        let mut c = claim();
        c.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANN_STRIPPED.into(), String::new());
        c
    };
    let replaced = || {
        let mut c = claim();
        c.metadata.uid = Some("another-uid".into());
        c.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        serde_json::to_value(c).expect("a claim serializes")
    };
    for gone in [true, false] {
        let mut h = Harness::start();
        h.add_class(class(&[(
            "pathPattern",
            "${.PVC.namespace}/${.PVC.labels.app}",
        )]));
        if gone {
            h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
        } else {
            h.expect("GET", CLAIM_PATH, move |_| Reply::ok(replaced()));
        }
        let action = h.provision(&stripped()).await.expect("nothing to do");
        assert_eq!(requeue_after(&action), None);
        assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")]);
        assert!(h.dirs().is_empty(), "gone: {gone}");
        assert!(h.events().is_empty());
    }
}

/// The same fresh read, answered by the claim now bound to a volume the binder found
/// (a static PV that matched): provisioning for it would make a directory and a PV that
/// nothing will use, so the decision is taken again on the fresh copy.
#[tokio::test]
async fn a_claim_found_bound_on_the_fresh_read_gets_nothing() {
    let mut h = Harness::start();
    h.add_class(class(&[(
        "pathPattern",
        "${.PVC.namespace}/${.PVC.labels.app}",
    )]));
    let mut cached = claim();
    cached
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(ANN_STRIPPED.into(), String::new());
    let mut now = claim();
    now.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    now.spec.as_mut().expect("spec").volume_name = Some("pv-static".into());
    now.status.as_mut().expect("status").phase = Some("Bound".into());
    let now = serde_json::to_value(now).expect("a claim serializes");
    h.expect("GET", CLAIM_PATH, move |_| Reply::ok(now));
    let action = h.provision(&cached).await.expect("nothing to do");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")]);
    assert!(h.dirs().is_empty());
}

/// Another tenant's volume has the directory this claim's template renders: refused
/// before anything is made, with an event that does not name the other volume or its
/// namespace, and looked at again within 30 s.
#[tokio::test]
async fn a_directory_of_another_volume_is_refused() {
    let mut h = Harness::start();
    h.add_class(class(&[("pathPattern", "shared")]));
    h.add_volume(&other_pv(
        "pvc-theirs",
        &format!("{SHARE}/shared"),
        "team-b",
        "Bound",
    ));
    let action = h.provision(&claim()).await.expect("refused, not failed");
    let again = requeue_after(&action).expect("looked at again");
    assert!(again <= Duration::from_secs(30) && again != Duration::from_secs(5));
    assert!(h.calls().is_empty());
    assert!(h.dirs().is_empty());
    assert_eq!(h.events(), ["Warning ProvisioningFailed"]);
    let note = h.event("ProvisioningFailed").note;
    assert!(note.contains("shared"), "{note}");
    assert!(
        !note.contains("pvc-theirs") && !note.contains("team-b"),
        "{note}"
    );

    // Nested inside it is refused the same way; a volume being reclaimed is waited for.
    let mut h = Harness::start();
    h.add_class(class(&[("pathPattern", "shared/${.PVC.name}")]));
    h.add_volume(&other_pv(
        "pvc-theirs",
        &format!("{SHARE}/shared"),
        "team-b",
        "Released",
    ));
    let action = h.provision(&claim()).await.expect("waiting");
    assert_eq!(requeue_after(&action), Some(Duration::from_secs(5)));
    assert!(h.calls().is_empty());
    assert!(h.dirs().is_empty());
    assert_eq!(h.events(), ["Warning ProvisioningFailed"]);
}

/// A directory that exists and that no PV records is someone's data: not handed over,
/// not chmod-ed, no PV written.
#[tokio::test]
async fn an_unrecorded_existing_directory_is_refused_and_left_as_it_is() {
    let mut h = Harness::start();
    h.add_class(class(&[]));
    let theirs = h.share().join(DIR);
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let action = h.provision(&claim()).await.expect("refused, not failed");
    assert!(requeue_after(&action).is_some());
    assert!(h.calls().is_empty());
    assert_eq!(h.dirs(), [DIR]);
    let mode = std::fs::metadata(&theirs)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700);
    h.wait_events(2).await;
    assert_eq!(
        sorted(h.events()),
        ["Normal Provisioning", "Warning ProvisioningFailed"]
    );
    assert!(
        h.event("ProvisioningFailed")
            .note
            .contains("already exists")
    );
}

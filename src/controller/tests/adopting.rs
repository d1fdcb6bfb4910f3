//! The volume reconciler on adopted volumes (another provisioner's, with none of our
//! annotations) against a scripted API server: the same steps as for ours, chosen by
//! the volume's class; refusals touch nothing.

use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::json;

use super::harness::*;
use crate::controller::Error;
use crate::plan::adopt::Adoption;

const INCUMBENT: &str = "k8s-sigs.io/nfs-subdir-external-provisioner";
const PV_ITEM: &str = "/api/v1/persistentvolumes/pvc-0b5e7c2a-1d4f-4a6b-9c3e-8f2d1a0b9c7e";

fn adopting(params: Option<&[(&str, &str)]>) -> Harness {
    let mut h = Harness::start();
    if let Some(params) = params {
        h.add_class(class(params));
    }
    h.adopt(Adoption {
        provisioners: vec![INCUMBENT.into()],
        server: SERVER.into(),
        share: SHARE.into(),
    });
    let d = h.share().join(DIR);
    std::fs::create_dir_all(d.join("sub")).expect("mkdir");
    std::fs::write(d.join("sub/file"), b"data").expect("write");
    std::fs::create_dir_all(h.share().join("neighbour")).expect("mkdir");
    h
}

/// A released PV as the incumbent writes it: its name, no finalizer of its own.
fn incumbent_pv(path: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {
            "name": PV, "uid": "pv-uid-1", "resourceVersion": "40",
            "finalizers": ["kubernetes.io/pv-protection"],
            "annotations": { "pv.kubernetes.io/provisioned-by": INCUMBENT },
        },
        "spec": {
            "capacity": { "storage": "1Gi" },
            "accessModes": ["ReadWriteMany"],
            "nfs": { "server": SERVER, "path": path },
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

fn full() -> String {
    format!("{SHARE}/{DIR}")
}

#[tokio::test]
async fn the_class_says_delete_archive_or_retain_then_the_pv_goes() {
    let archived = format!("archived-{DIR}");
    for (params, after) in [
        (
            &[("archiveOnDelete", "false")][..],
            vec!["neighbour".to_string()],
        ),
        (
            &[][..],
            // Archived like our own: its owner recorded first, where tenants cannot write.
            vec![
                ".nfs3-provisioner".to_string(),
                ".nfs3-provisioner/archives".to_string(),
                archived.clone(),
                format!("{archived}/sub"),
                "neighbour".into(),
            ],
        ),
        (
            &[("onDelete", "retain"), ("archiveOnDelete", "false")][..],
            vec!["neighbour".into(), DIR.to_string(), format!("{DIR}/sub")],
        ),
    ] {
        let h = adopting(Some(params));
        let pv = incumbent_pv(&full());
        let held = deleting(&pv);
        h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
        h.expect("DELETE", PV_ITEM, move |_| Reply::ok(held));
        h.reclaim(&pv).await.expect("reclaimed");
        // No finalizer of ours to remove: no PATCH.
        assert_eq!(
            h.calls(),
            [format!("GET {CLAIM_PATH}"), format!("DELETE {PV_ITEM}")],
            "{params:?}"
        );
        assert_eq!(h.call(1).share_then, after, "{params:?}");
        assert!(h.events().is_empty(), "{:?}", h.events());
    }
}

#[tokio::test]
async fn outside_the_export_or_without_its_class_nothing_is_touched() {
    let escaping = format!("{SHARE}/../victim");
    type Params<'a> = Option<&'a [(&'a str, &'a str)]>;
    let cases: [(&str, Params, String); 4] = [
        ("outside", Some(&[]), "/srv/other/x".to_string()),
        ("dotdot", Some(&[]), escaping),
        ("the export itself", Some(&[]), SHARE.to_string()),
        ("class gone", None, full()),
    ];
    for (case, params, path) in cases {
        let h = adopting(params);
        std::fs::create_dir(h.outside().join("victim")).expect("mkdir");
        let before = (h.dirs(), tree(&h.outside()));
        h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
        let err = h.reclaim(&incumbent_pv(&path)).await.expect_err(case);
        assert!(matches!(err, Error::Refused(_)), "{case}: {err}");
        assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")], "{case}");
        assert_eq!((h.dirs(), tree(&h.outside())), before, "{case}");
        assert_eq!(h.events(), ["Warning VolumeFailedDelete"], "{case}");
        let note = h.event("VolumeFailedDelete").note;
        assert!(note.contains("left in place"), "{case}: {note}");
    }
}

#[tokio::test]
async fn a_claim_still_there_or_another_name_stops_everything() {
    let h = adopting(Some(&[("onDelete", "delete")]));
    let before = h.dirs();
    let pv = incumbent_pv(&full());
    h.expect("GET", CLAIM_PATH, |_| {
        Reply::ok(serde_json::to_value(claim()).expect("claim"))
    });
    let action = h.reclaim(&pv).await.expect("waits");
    assert!(requeue_after(&action).is_some());
    assert_eq!(h.dirs(), before);

    let h = adopting(Some(&[("onDelete", "delete")]));
    let mut other = incumbent_pv(&full());
    other
        .metadata
        .annotations
        .as_mut()
        .expect("annotations")
        .insert(
            "pv.kubernetes.io/provisioned-by".into(),
            "someone-else".into(),
        );
    h.reclaim(&other).await.expect("skipped");
    assert!(h.calls().is_empty(), "{:?}", h.calls());
    assert_eq!(h.dirs(), before);
}

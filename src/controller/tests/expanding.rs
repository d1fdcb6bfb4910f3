//! Expansion of bound claims against a scripted API server: the requests in order, what
//! each writes, the events, and what is left alone.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::{Value, json};

use super::harness::*;
use crate::controller::Error;

const STATUS_PATH: &str = "/api/v1/namespaces/team-a/persistentvolumeclaims/data/status";
const PV_ITEM: &str = "/api/v1/persistentvolumes/pvc-0b5e7c2a-1d4f-4a6b-9c3e-8f2d1a0b9c7e";

/// The claim, bound to our PV, asking for `request` with `capacity` in its status.
fn bound_claim(request: &str, capacity: &str) -> PersistentVolumeClaim {
    let mut c = serde_json::to_value(claim()).expect("a claim serializes");
    c["spec"]["volumeName"] = json!(PV);
    c["spec"]["resources"]["requests"]["storage"] = json!(request);
    c["status"] = json!({
        "phase": "Bound",
        "capacity": {"storage": capacity},
        "conditions": [{"type": "ModifyingVolume", "status": "True"}],
    });
    serde_json::from_value(c).expect("a valid claim")
}

fn expandable(allow: bool) -> k8s_openapi::api::storage::v1::StorageClass {
    let mut c = class(&[]);
    c.allow_volume_expansion = Some(allow);
    c
}

/// Our PV for the claim, bound, of `capacity`.
fn bound_pv(capacity: &str) -> PersistentVolume {
    let mut pv = serde_json::to_value(released_pv(DIR, "delete")).expect("a PV serializes");
    pv["spec"]["capacity"]["storage"] = json!(capacity);
    pv["status"]["phase"] = json!("Bound");
    serde_json::from_value(pv).expect("a valid PV")
}

fn value(c: &PersistentVolumeClaim) -> Value {
    serde_json::to_value(c).expect("a claim serializes")
}

/// The API server applying a merge patch of the claim's status, with a new version.
fn applied(mut claim: Value, patch: &Value, version: &str) -> Reply {
    fn merge(into: &mut Value, patch: &Value) {
        if patch.is_object() && !into.is_object() {
            *into = json!({});
        }
        match (into, patch) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(k);
                    } else {
                        merge(a.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b.clone(),
        }
    }
    merge(&mut claim, patch);
    claim["metadata"]["resourceVersion"] = json!(version);
    Reply::ok(claim)
}

fn setup(pv: &PersistentVolume, allow: bool) -> Harness {
    let mut h = Harness::start();
    h.add_class(expandable(allow));
    h.add_volume(pv);
    h
}

#[tokio::test]
async fn a_grown_claim_gets_its_pv_then_its_status_grown() {
    let h = setup(&bound_pv("1Gi"), true);
    let c = bound_claim("2Gi", "1Gi");
    let fresh = value(&c);
    h.expect("GET", CLAIM_PATH, {
        let f = fresh.clone();
        move |_| Reply::ok(f)
    });
    h.expect("PATCH", STATUS_PATH, {
        let f = fresh.clone();
        move |p| applied(f, p, "8")
    });
    h.expect("PATCH", PV_ITEM, |_| Reply::ok(json!(bound_pv("2Gi"))));
    h.expect("PATCH", STATUS_PATH, move |p| applied(fresh, p, "9"));

    let action = h.provision(&c).await.expect("expanded");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(
        h.calls(),
        [
            format!("GET {CLAIM_PATH}"),
            format!("PATCH {STATUS_PATH}"),
            format!("PATCH {PV_ITEM}"),
            format!("PATCH {STATUS_PATH}"),
        ]
    );
    let start = h.call(1);
    assert_eq!(start.content_type, "application/merge-patch+json");
    assert_eq!(start.body["metadata"]["resourceVersion"], "7");
    let status = &start.body["status"];
    assert_eq!(status["allocatedResources"], json!({"storage": "2Gi"}));
    assert_eq!(
        status["allocatedResourceStatuses"],
        json!({"storage": "ControllerResizeInProgress"})
    );
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["ModifyingVolume", "Resizing"]);

    let pv = h.call(2);
    assert_eq!(pv.content_type, "application/merge-patch+json");
    assert_eq!(
        pv.body,
        json!({"metadata": {"resourceVersion": "40"}, "spec": {"capacity": {"storage": "2Gi"}}})
    );

    // The last write is made on the version the first one returned.
    let done = h.call(3);
    assert_eq!(done.body["metadata"]["resourceVersion"], "8");
    let status = &done.body["status"];
    assert_eq!(status["capacity"], json!({"storage": "2Gi"}));
    assert_eq!(
        status["allocatedResourceStatuses"],
        json!({"storage": null})
    );
    assert_eq!(
        status["conditions"],
        json!([{"type": "ModifyingVolume", "status": "True"}])
    );

    h.wait_events(2).await;
    assert_eq!(
        h.events(),
        ["Normal Resizing", "Normal VolumeResizeSuccessful"]
    );
    let ok = h.event("VolumeResizeSuccessful");
    assert_eq!(ok.regarding, format!("PersistentVolumeClaim/{NS}/{CLAIM}"));
    assert_eq!(
        h.event("Resizing").note,
        format!("External resizer is resizing volume {PV}")
    );
}

#[tokio::test]
async fn a_restart_after_the_pv_was_grown_only_finishes_the_claim() {
    // The PV says 2Gi, the claim's status says resizing to 2Gi: one write is left.
    let h = setup(&bound_pv("2Gi"), true);
    let c = bound_claim("2Gi", "1Gi");
    let mut fresh = value(&c);
    fresh["status"]["allocatedResources"] = json!({"storage": "2Gi"});
    fresh["status"]["allocatedResourceStatuses"] = json!({"storage": "ControllerResizeInProgress"});
    fresh["status"]["conditions"] = json!([{"type": "Resizing", "status": "True"}]);
    h.expect("GET", CLAIM_PATH, {
        let f = fresh.clone();
        move |_| Reply::ok(f)
    });
    h.expect("PATCH", STATUS_PATH, move |p| applied(fresh, p, "9"));
    h.provision(&c).await.expect("expanded");
    assert_eq!(
        h.calls(),
        [format!("GET {CLAIM_PATH}"), format!("PATCH {STATUS_PATH}")]
    );
    let done = h.call(1);
    assert_eq!(done.body["status"]["capacity"], json!({"storage": "2Gi"}));
    assert_eq!(done.body["status"]["conditions"], json!([]));
}

#[tokio::test]
async fn claims_not_to_grow_cost_no_request() {
    let ours = bound_pv("1Gi");
    let mut foreign = serde_json::to_value(&ours).expect("a PV serializes");
    foreign["metadata"]["annotations"][ANN_PROVISIONED_BY] = json!("other.io/nfs");
    let foreign: PersistentVolume = serde_json::from_value(foreign).expect("a valid PV");
    let mut elsewhere = serde_json::to_value(&ours).expect("a PV serializes");
    elsewhere["spec"]["claimRef"]["uid"] = json!("another-claim");
    let elsewhere: PersistentVolume = serde_json::from_value(elsewhere).expect("a valid PV");
    let mut unbound = value(&bound_claim("2Gi", "1Gi"));
    unbound["status"]["phase"] = json!("Pending");
    let unbound: PersistentVolumeClaim = serde_json::from_value(unbound).expect("a claim");
    for (what, pv, allow, c) in [
        ("not grown", &ours, true, bound_claim("1Gi", "1Gi")),
        (
            "same size written otherwise",
            &ours,
            true,
            bound_claim("1024Mi", "1Gi"),
        ),
        (
            "class forbids expansion",
            &ours,
            false,
            bound_claim("2Gi", "1Gi"),
        ),
        (
            "PV of another provisioner",
            &foreign,
            true,
            bound_claim("2Gi", "1Gi"),
        ),
        (
            "PV of another claim",
            &elsewhere,
            true,
            bound_claim("2Gi", "1Gi"),
        ),
        ("claim not bound", &ours, true, unbound),
    ] {
        let h = setup(pv, allow);
        let action = h.provision(&c).await.expect("nothing to do");
        assert_eq!(requeue_after(&action), None, "{what}");
        assert!(h.calls().is_empty(), "{what}");
        assert!(h.events().is_empty(), "{what}: {:?}", h.events());
    }
}

#[tokio::test]
async fn a_claim_grown_again_or_deleted_meanwhile_is_decided_again() {
    // Grown again between the first and the last write: the last is refused (409) and
    // the claim comes back soon, with no warning.
    let h = setup(&bound_pv("1Gi"), true);
    let c = bound_claim("2Gi", "1Gi");
    let fresh = value(&c);
    h.expect("GET", CLAIM_PATH, {
        let f = fresh.clone();
        move |_| Reply::ok(f)
    });
    h.expect("PATCH", STATUS_PATH, move |p| applied(fresh, p, "8"));
    h.expect("PATCH", PV_ITEM, |_| Reply::ok(json!(bound_pv("2Gi"))));
    h.expect("PATCH", STATUS_PATH, |_| Reply::status(409, "Conflict"));
    let action = h.provision(&c).await.expect("a conflict is no error");
    assert!(requeue_after(&action).is_some_and(|d| d.as_secs() <= 5));
    assert_eq!(h.calls().len(), 4);
    h.wait_events(1).await;
    assert_eq!(h.events(), ["Normal Resizing"]);

    // Deleted before it was read again: nothing is written.
    let h = setup(&bound_pv("1Gi"), true);
    h.expect("GET", CLAIM_PATH, |_| Reply::status(404, "NotFound"));
    let action = h.provision(&c).await.expect("gone");
    assert_eq!(requeue_after(&action), None);
    assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")]);
    assert!(h.events().is_empty());

    // Read again, it is being deleted: nothing is written.
    let h = setup(&bound_pv("1Gi"), true);
    let mut deleting = value(&c);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-30T21:00:00Z");
    h.expect("GET", CLAIM_PATH, move |_| Reply::ok(deleting));
    h.provision(&c).await.expect("being deleted");
    assert_eq!(h.calls(), [format!("GET {CLAIM_PATH}")]);
}

#[tokio::test]
async fn a_failed_write_is_a_warning_and_a_retry() {
    let h = setup(&bound_pv("1Gi"), true);
    let c = bound_claim("2Gi", "1Gi");
    let fresh = value(&c);
    h.expect("GET", CLAIM_PATH, {
        let f = fresh.clone();
        move |_| Reply::ok(f)
    });
    h.expect("PATCH", STATUS_PATH, move |p| applied(fresh, p, "8"));
    h.expect("PATCH", PV_ITEM, |_| Reply::status(500, "InternalError"));
    let err = h.provision(&c).await.expect_err("the PV write failed");
    assert!(matches!(err, Error::Kube(_)), "{err}");
    assert!(!err.is_permanent());
    h.wait_events(2).await;
    let warning = h.event("VolumeResizeFailed");
    assert_eq!(warning.type_, "Warning");
    assert!(
        warning.note.contains(PV) && warning.note.contains("2Gi"),
        "{}",
        warning.note
    );
    assert!(warning.note.contains("will retry"), "{}", warning.note);
    let again = h.after_error(&c, &err);
    assert!(requeue_after(&again).is_some());
}

#[tokio::test]
async fn a_size_beyond_accounting_is_refused_with_a_warning() {
    let h = setup(&bound_pv("1Gi"), true);
    let c = bound_claim("1e30", "1Gi");
    let action = h.provision(&c).await.expect("refused");
    assert_eq!(requeue_after(&action), None);
    assert!(h.calls().is_empty());
    let warning = h.event("VolumeResizeFailed");
    assert_eq!(warning.type_, "Warning");
    assert!(warning.note.contains("1e30"), "{}", warning.note);

    // 1Ei is a size like any other.
    let h = setup(&bound_pv("1Gi"), true);
    let c = bound_claim("1Ei", "1Gi");
    let fresh = value(&c);
    h.expect("GET", CLAIM_PATH, {
        let f = fresh.clone();
        move |_| Reply::ok(f)
    });
    h.expect("PATCH", STATUS_PATH, {
        let f = fresh.clone();
        move |p| applied(f, p, "8")
    });
    h.expect("PATCH", PV_ITEM, |_| Reply::ok(json!(bound_pv("1Ei"))));
    h.expect("PATCH", STATUS_PATH, move |p| applied(fresh, p, "9"));
    h.provision(&c).await.expect("expanded");
    assert_eq!(h.call(2).body["spec"]["capacity"]["storage"], "1Ei");
}

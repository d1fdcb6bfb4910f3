//! Expansion of a bound claim, decided: does it need it, may we, and what the PV and
//! the claim's status say before, during and after. kube-controller-manager leaves an
//! NFS volume's growing claim to "an external controller"; for the PVs this provisioner
//! made, that is us. NFSv3 has no quota, so the size is bookkeeping: growing it is
//! writing the new number where the control plane and the kubelet read it, the way
//! the CSI external-resizer does for a volume that needs no node-side expansion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::quantity::{QuantityError, Size};
use super::record;

/// Resize conditions the external-resizer and the kubelet write; a finished expansion
/// leaves none of them.
const RESIZE_CONDITIONS: &[&str] = &[
    "Resizing",
    "FileSystemResizePending",
    "ControllerResizeError",
    "NodeResizeError",
];

/// `status.allocatedResourceStatuses.storage` while the control plane's part is under way
/// (Kubernetes' RecoverVolumeExpansionFailure, on by default since 1.32).
pub const CONTROLLER_RESIZE_IN_PROGRESS: &str = "ControllerResizeInProgress";

#[derive(Debug, PartialEq, Eq)]
pub enum ExpandDecision {
    /// Nothing to do, or not ours to do.
    Skip(&'static str),
    /// Ours, but the volume is not in the cache yet: look again shortly.
    Wait(&'static str),
    /// Ours and impossible as asked: tell the claim's owner.
    Refuse(QuantityError),
    Expand(ExpandPlan),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandPlan {
    pub pv: String,
    /// The claim's request, verbatim: what the PV and the claim's status will say.
    pub size: String,
    /// False when an earlier attempt already grew the PV (or it was made bigger).
    pub grow_pv: bool,
}

fn storage(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<&str> {
    map?.get("storage").map(|q| q.0.as_str())
}

pub fn requested(pvc: &PersistentVolumeClaim) -> Option<&str> {
    storage(pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref())
}

pub fn status_capacity(pvc: &PersistentVolumeClaim) -> Option<&str> {
    storage(pvc.status.as_ref()?.capacity.as_ref())
}

pub fn pv_capacity(pv: &PersistentVolume) -> Option<&str> {
    storage(pv.spec.as_ref()?.capacity.as_ref())
}

/// Whether a claim with this request and capacity may need expanding: unless both read
/// and the request is no more than the capacity. The claim cache keeps the sizes of a
/// bound claim only then, so the thousands of bound claims that ask for nothing more
/// cost no more memory than before.
pub fn may_grow(request: Option<&str>, capacity: Option<&str>) -> bool {
    match (request, capacity) {
        (Some(r), Some(c)) => match (Size::parse(r), Size::parse(c)) {
            (Ok(r), Ok(c)) => r > c,
            _ => true,
        },
        _ => false,
    }
}

/// Whether this claim is a bound one, the only kind expansion looks at. Unbound claims
/// are for provisioning; this is the fork between the two.
pub fn is_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
}

/// The whole decision, on the claim, its class and its volume as they are known. The
/// checks on the claim alone come first: for nearly every bound claim they end it
/// without looking anything up.
pub fn decide_expansion(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    pv: Option<&PersistentVolume>,
    provisioner: &str,
) -> ExpandDecision {
    use ExpandDecision::{Expand, Refuse, Skip, Wait};
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
    else {
        return Skip("claim names no volume");
    };
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Skip("claim is not bound");
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return Skip("claim is being deleted");
    }
    let (Some(request), Some(capacity)) = (requested(pvc), status_capacity(pvc)) else {
        return Skip("claim has no requested size or no capacity yet");
    };
    // The claim's status was written by the binder or by us; a value we cannot read
    // means it is not a claim of ours to grow.
    let Ok(capacity) = Size::parse(capacity) else {
        return Skip("claim's capacity is not a quantity");
    };
    // A request we cannot read is refused, but only once the claim is known to be ours.
    let request_size = Size::parse(request);
    if request_size.as_ref().is_ok_and(|r| *r <= capacity) {
        return Skip("claim does not ask for more than it has");
    }
    let Some(class) = class else {
        return Skip("no StorageClass (or not one of ours)");
    };
    if class.provisioner != provisioner {
        return Skip("StorageClass names another provisioner");
    }
    if class.allow_volume_expansion != Some(true) {
        return Skip("StorageClass does not allow volume expansion");
    }
    let Some(pv) = pv else {
        return Wait("the claim's volume is not in the cache yet");
    };
    if record::provisioned_by(&pv.metadata) != Some(provisioner) {
        return Skip("volume was not provisioned by this provisioner");
    }
    let bound_here = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.uid == pvc.metadata.uid
                && r.namespace == pvc.metadata.namespace
                && pvc.metadata.uid.is_some()
        });
    if !bound_here {
        return Skip("volume is bound to another claim");
    }
    if pv.metadata.deletion_timestamp.is_some() {
        return Skip("volume is being deleted");
    }
    let request_size = match request_size {
        Ok(s) => s,
        Err(e) => return Refuse(e),
    };
    // A PV capacity we cannot read is grown over: the claim's request is what it means.
    let grow_pv = pv_capacity(pv)
        .and_then(|c| Size::parse(c).ok())
        .is_none_or(|c| c < request_size);
    Expand(ExpandPlan {
        pv: pv_name.to_string(),
        size: request.to_string(),
        grow_pv,
    })
}

/// The PV's merge patch: the new capacity, only if the PV is still the one decided on
/// (its resourceVersion), so a stale copy can never shrink it.
pub fn pv_patch(plan: &ExpandPlan, resource_version: &str) -> Value {
    json!({
        "metadata": { "resourceVersion": resource_version },
        "spec": { "capacity": { "storage": plan.size } },
    })
}

/// Whether the claim's status already says the control plane's part is under way for
/// this size: a retry need not say it again.
pub fn in_progress(pvc: &PersistentVolumeClaim, size: &str) -> bool {
    let Some(status) = pvc.status.as_ref() else {
        return false;
    };
    let allocated = storage(status.allocated_resources.as_ref());
    let state = status
        .allocated_resource_statuses
        .as_ref()
        .and_then(|m| m.get("storage"))
        .map(String::as_str);
    let resizing = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Resizing" && c.status == "True");
    allocated == Some(size) && state == Some(CONTROLLER_RESIZE_IN_PROGRESS) && resizing
}

/// The claim's status merge patch as resizing starts: condition `Resizing`, the size
/// allocated, the controller's part in progress. Carries the claim's resourceVersion: a
/// claim changed meanwhile (grown again, deleted) is refused with 409 and decided again.
pub fn status_resizing(pvc: &PersistentVolumeClaim, size: &str, now: Time) -> Value {
    let mut conditions = other_conditions(pvc);
    let since = pvc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Resizing" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    conditions.push(PersistentVolumeClaimCondition {
        type_: "Resizing".into(),
        status: "True".into(),
        last_transition_time: Some(since),
        ..Default::default()
    });
    json!({
        "metadata": { "resourceVersion": pvc.metadata.resource_version },
        "status": {
            "conditions": conditions,
            "allocatedResources": { "storage": size },
            "allocatedResourceStatuses": { "storage": CONTROLLER_RESIZE_IN_PROGRESS },
        },
    })
}

/// The claim's status merge patch once the PV says `size`: the new capacity, no resize
/// condition, nothing pending (no node expansion: nothing on a node to grow).
pub fn status_resized(pvc: &PersistentVolumeClaim, size: &str) -> Value {
    json!({
        "metadata": { "resourceVersion": pvc.metadata.resource_version },
        "status": {
            "capacity": { "storage": size },
            "conditions": other_conditions(pvc),
            "allocatedResources": { "storage": size },
            "allocatedResourceStatuses": { "storage": null },
        },
    })
}

fn other_conditions(pvc: &PersistentVolumeClaim) -> Vec<PersistentVolumeClaimCondition> {
    pvc.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !RESIZE_CONDITIONS.contains(&c.type_.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROV: &str = "nfs3-provisioner.io/nfs";

    fn claim(request: &str, capacity: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": "cu", "resourceVersion": "9"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": request}},
                "storageClassName": "nfs",
                "volumeName": "pvc-cu"
            },
            "status": {"phase": "Bound", "capacity": {"storage": capacity}}
        }))
        .unwrap()
    }

    fn class(allow: Option<bool>) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "nfs"}, "provisioner": PROV, "allowVolumeExpansion": allow
        }))
        .unwrap()
    }

    fn pv(by: &str, claim_uid: &str, capacity: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-cu", "resourceVersion": "40",
                "annotations": {record::ANN_PROVISIONED_BY: by}},
            "spec": {
                "capacity": {"storage": capacity},
                "claimRef": {"namespace": "ns", "name": "c", "uid": claim_uid},
                "nfs": {"server": "s", "path": "/x"}
            }
        }))
        .unwrap()
    }

    /// What, claim, class, volume, and the decision wanted.
    type Case = (
        &'static str,
        PersistentVolumeClaim,
        Option<StorageClass>,
        Option<PersistentVolume>,
        ExpandDecision,
    );

    fn expand(size: &str, grow_pv: bool) -> ExpandDecision {
        ExpandDecision::Expand(ExpandPlan {
            pv: "pvc-cu".into(),
            size: size.into(),
            grow_pv,
        })
    }

    #[test]
    fn who_is_grown_and_who_is_left_alone() {
        use ExpandDecision::*;
        let yes = class(Some(true));
        let ours = pv(PROV, "cu", "1Gi");
        let mut unbound = claim("2Gi", "1Gi");
        unbound.spec.as_mut().unwrap().volume_name = None;
        let mut pending = claim("2Gi", "1Gi");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut deleting = claim("2Gi", "1Gi");
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut foreign_class = class(Some(true));
        foreign_class.provisioner = "other.io/nfs".into();
        let mut pv_deleting = ours.clone();
        pv_deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut no_capacity = claim("2Gi", "1Gi");
        no_capacity.status.as_mut().unwrap().capacity = None;
        let cases: Vec<Case> = vec![
            (
                "grows",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                Some(ours.clone()),
                expand("2Gi", true),
            ),
            (
                "huge",
                claim("1Ei", "1Gi"),
                Some(yes.clone()),
                Some(ours.clone()),
                expand("1Ei", true),
            ),
            (
                "exponent form",
                claim("2e9", "1Gi"),
                Some(yes.clone()),
                Some(ours.clone()),
                expand("2e9", true),
            ),
            // A restart after the PV was grown: only the claim's status is left.
            (
                "PV already grown",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                Some(pv(PROV, "cu", "2Gi")),
                expand("2Gi", false),
            ),
            (
                "PV bigger still",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                Some(pv(PROV, "cu", "3Gi")),
                expand("2Gi", false),
            ),
            (
                "same size other form",
                claim("1024Mi", "1Gi"),
                Some(yes.clone()),
                Some(ours.clone()),
                Skip("claim does not ask for more than it has"),
            ),
            (
                "smaller (recovering from a failure)",
                claim("1Gi", "2Gi"),
                Some(yes.clone()),
                Some(ours.clone()),
                Skip("claim does not ask for more than it has"),
            ),
            (
                "unbound",
                unbound,
                Some(yes.clone()),
                Some(ours.clone()),
                Skip("claim names no volume"),
            ),
            (
                "pending",
                pending,
                Some(yes.clone()),
                Some(ours.clone()),
                Skip("claim is not bound"),
            ),
            (
                "deleting",
                deleting,
                Some(yes.clone()),
                Some(ours.clone()),
                Skip("claim is being deleted"),
            ),
            (
                "no capacity",
                no_capacity,
                Some(yes.clone()),
                Some(ours.clone()),
                Skip("claim has no requested size or no capacity yet"),
            ),
            (
                "class forbids",
                claim("2Gi", "1Gi"),
                Some(class(Some(false))),
                Some(ours.clone()),
                Skip("StorageClass does not allow volume expansion"),
            ),
            (
                "class silent",
                claim("2Gi", "1Gi"),
                Some(class(None)),
                Some(ours.clone()),
                Skip("StorageClass does not allow volume expansion"),
            ),
            (
                "class gone",
                claim("2Gi", "1Gi"),
                None,
                Some(ours.clone()),
                Skip("no StorageClass (or not one of ours)"),
            ),
            (
                "class not ours",
                claim("2Gi", "1Gi"),
                Some(foreign_class.clone()),
                Some(ours.clone()),
                Skip("StorageClass names another provisioner"),
            ),
            (
                "PV not cached",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                None,
                Wait("the claim's volume is not in the cache yet"),
            ),
            (
                "PV not ours",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                Some(pv("other.io/nfs", "cu", "1Gi")),
                Skip("volume was not provisioned by this provisioner"),
            ),
            (
                "PV of another claim",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                Some(pv(PROV, "other", "1Gi")),
                Skip("volume is bound to another claim"),
            ),
            (
                "PV deleting",
                claim("2Gi", "1Gi"),
                Some(yes.clone()),
                Some(pv_deleting),
                Skip("volume is being deleted"),
            ),
            (
                "too large",
                claim("1e30", "1Gi"),
                Some(yes.clone()),
                Some(ours.clone()),
                Refuse(QuantityError::TooLarge("1e30".into())),
            ),
            // Refused only when ours: others' claims get no word from us.
            (
                "too large, class not ours",
                claim("1e30", "1Gi"),
                Some(foreign_class.clone()),
                Some(ours.clone()),
                Skip("StorageClass names another provisioner"),
            ),
            (
                "too large, class forbids",
                claim("1e30", "1Gi"),
                Some(class(Some(false))),
                Some(ours.clone()),
                Skip("StorageClass does not allow volume expansion"),
            ),
            (
                "too large, PV not ours",
                claim("1e30", "1Gi"),
                Some(yes.clone()),
                Some(pv("other.io/nfs", "cu", "1Gi")),
                Skip("volume was not provisioned by this provisioner"),
            ),
            (
                "too large, PV not cached",
                claim("1e30", "1Gi"),
                Some(yes.clone()),
                None,
                Wait("the claim's volume is not in the cache yet"),
            ),
        ];
        for (what, c, cl, p, want) in cases {
            assert_eq!(
                decide_expansion(&c, cl.as_ref(), p.as_ref(), PROV),
                want,
                "{what}"
            );
        }
        // A PV without the provisioned-by annotation is not ours.
        let mut bare = ours.clone();
        bare.metadata.annotations = None;
        assert_eq!(
            decide_expansion(&claim("2Gi", "1Gi"), Some(&yes), Some(&bare), PROV),
            Skip("volume was not provisioned by this provisioner")
        );
        // Same uid, other namespace: not this claim's.
        let mut elsewhere = ours.clone();
        elsewhere
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .namespace = Some("x".into());
        assert_eq!(
            decide_expansion(&claim("2Gi", "1Gi"), Some(&yes), Some(&elsewhere), PROV),
            Skip("volume is bound to another claim")
        );
    }

    #[test]
    fn what_may_grow() {
        for (r, c, want) in [
            (Some("2Gi"), Some("1Gi"), true),
            (Some("1Gi"), Some("1Gi"), false),
            (Some("1024Mi"), Some("1Gi"), false),
            (Some("1Gi"), Some("2Gi"), false),
            (Some("1e30"), Some("1Gi"), true),
            (Some("junk"), Some("1Gi"), true),
            (Some("2Gi"), None, false),
            (None, Some("1Gi"), false),
        ] {
            assert_eq!(may_grow(r, c), want, "{r:?} {c:?}");
        }
    }

    #[test]
    fn status_patches_say_what_the_external_resizer_says() {
        let mut c = claim("2Gi", "1Gi");
        c.status.as_mut().unwrap().conditions = Some(vec![PersistentVolumeClaimCondition {
            type_: "ModifyingVolume".into(),
            status: "True".into(),
            ..Default::default()
        }]);
        let now = Time(Default::default());
        let start = status_resizing(&c, "2Gi", now.clone());
        assert_eq!(start["metadata"]["resourceVersion"], "9");
        assert_eq!(
            start["status"]["allocatedResources"],
            json!({"storage": "2Gi"})
        );
        assert_eq!(
            start["status"]["allocatedResourceStatuses"],
            json!({"storage": CONTROLLER_RESIZE_IN_PROGRESS})
        );
        let types: Vec<_> = start["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ModifyingVolume", "Resizing"]);
        assert!(start["status"].get("capacity").is_none());

        // Applied, it reads as in progress; a retry does not write it again.
        let mut during = c.clone();
        let st = during.status.as_mut().unwrap();
        st.conditions = serde_json::from_value(start["status"]["conditions"].clone()).unwrap();
        st.allocated_resources = serde_json::from_value(json!({"storage": "2Gi"})).unwrap();
        st.allocated_resource_statuses = Some(BTreeMap::from([(
            "storage".to_string(),
            CONTROLLER_RESIZE_IN_PROGRESS.to_string(),
        )]));
        assert!(in_progress(&during, "2Gi"));
        assert!(!in_progress(&during, "3Gi"));
        assert!(!in_progress(&c, "2Gi"));

        let done = status_resized(&during, "2Gi");
        assert_eq!(done["status"]["capacity"], json!({"storage": "2Gi"}));
        assert_eq!(
            done["status"]["allocatedResourceStatuses"],
            json!({"storage": null})
        );
        let types: Vec<_> = done["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ModifyingVolume"]);

        let p = pv_patch(
            &ExpandPlan {
                pv: "pvc-cu".into(),
                size: "2Gi".into(),
                grow_pv: true,
            },
            "40",
        );
        assert_eq!(
            p,
            json!({"metadata": {"resourceVersion": "40"}, "spec": {"capacity": {"storage": "2Gi"}}})
        );
    }
}

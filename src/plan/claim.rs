//! Is this claim ours, is it time, and can it ever be provisioned: the first decision
//! on every claim event, before anything is read or written.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;

use super::PlanError;

pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";

/// What to do with a claim, before any I/O.
#[derive(Debug)]
pub enum ClaimDecision {
    /// Not ours, or nothing to do; a later change of the claim will bring it back.
    Skip(&'static str),
    /// Ours, but not yet: waiting on the control plane (annotation, selected node).
    Wait(&'static str),
    /// Ours and never provisionable as it stands: tell the user.
    Refuse(PlanError),
    Provision,
}

pub fn class_name(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            pvc.metadata
                .annotations
                .as_ref()?
                .get(ANN_CLASS_BETA)
                .map(String::as_str)
        })
        .filter(|n| !n.is_empty())
}

/// The PV name is a function of the claim's uid alone: a crash between mkdir and PV
/// create comes back to the same name, never a second volume.
pub fn volume_name(pvc: &PersistentVolumeClaim) -> Result<String, PlanError> {
    pvc.metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| format!("pvc-{u}"))
        .ok_or(PlanError::NoUid)
}

pub fn decide_claim(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    provisioner: &str,
) -> ClaimDecision {
    let Some(class) = class else {
        return ClaimDecision::Skip("no StorageClass (or not one of ours)");
    };
    if class.provisioner != provisioner {
        return ClaimDecision::Skip("StorageClass names another provisioner");
    }
    if pvc.metadata.deletion_timestamp.is_some() {
        return ClaimDecision::Skip("claim is being deleted");
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return ClaimDecision::Skip("claim already names a volume");
    }
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
        return ClaimDecision::Skip("claim is bound");
    }
    let ann = pvc.metadata.annotations.clone().unwrap_or_default();
    let asked = ann
        .get(ANN_STORAGE_PROVISIONER)
        .or_else(|| ann.get(ANN_STORAGE_PROVISIONER_BETA));
    if asked.map(String::as_str) != Some(provisioner) {
        return ClaimDecision::Wait(
            "the control plane has not yet handed the claim to this provisioner",
        );
    }
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && !ann.contains_key(ANN_SELECTED_NODE)
    {
        return ClaimDecision::Wait("WaitForFirstConsumer: no node selected yet");
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return ClaimDecision::Refuse(PlanError::BlockMode);
    }
    if spec.selector.is_some() {
        return ClaimDecision::Refuse(PlanError::Selector);
    }
    if let Err(e) = super::clone::requested(pvc) {
        return ClaimDecision::Refuse(e);
    }
    ClaimDecision::Provision
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::plan::fixtures::{PROV, claim, class};

    #[test]
    fn claim_decisions() {
        let c = class(&[]);
        assert!(matches!(
            decide_claim(&claim(), Some(&c), PROV),
            ClaimDecision::Provision
        ));
        assert!(matches!(
            decide_claim(&claim(), None, PROV),
            ClaimDecision::Skip(_)
        ));
        assert!(matches!(
            decide_claim(&claim(), Some(&c), "other.io/nfs"),
            ClaimDecision::Skip(_)
        ));

        let mut beta = claim();
        beta.metadata.annotations = Some(BTreeMap::from([(
            ANN_STORAGE_PROVISIONER_BETA.into(),
            PROV.into(),
        )]));
        assert!(matches!(
            decide_claim(&beta, Some(&c), PROV),
            ClaimDecision::Provision
        ));

        let mut unannotated = claim();
        unannotated.metadata.annotations = None;
        assert!(matches!(
            decide_claim(&unannotated, Some(&c), PROV),
            ClaimDecision::Wait(_)
        ));

        let mut bound = claim();
        bound.spec.as_mut().unwrap().volume_name = Some("pv-x".into());
        assert!(matches!(
            decide_claim(&bound, Some(&c), PROV),
            ClaimDecision::Skip(_)
        ));

        let mut wffc = c.clone();
        wffc.volume_binding_mode = Some("WaitForFirstConsumer".into());
        assert!(matches!(
            decide_claim(&claim(), Some(&wffc), PROV),
            ClaimDecision::Wait(_)
        ));
        let mut selected = claim();
        selected
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_SELECTED_NODE.into(), "node-1".into());
        assert!(matches!(
            decide_claim(&selected, Some(&wffc), PROV),
            ClaimDecision::Provision
        ));

        let mut block = claim();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(matches!(
            decide_claim(&block, Some(&c), PROV),
            ClaimDecision::Refuse(PlanError::BlockMode)
        ));

        let mut sel = claim();
        sel.spec.as_mut().unwrap().selector = Some(Default::default());
        assert!(matches!(
            decide_claim(&sel, Some(&c), PROV),
            ClaimDecision::Refuse(PlanError::Selector)
        ));

        let mut deleting = claim();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(matches!(
            decide_claim(&deleting, Some(&c), PROV),
            ClaimDecision::Skip(_)
        ));
    }
}

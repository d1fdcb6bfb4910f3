//! Cloning: whether a claim asks to start as a copy of another claim's volume, and
//! whether that source may be copied. Only a claim of the same namespace and the same
//! class, bound to a volume this provisioner made on the same share, is a source: the
//! API server already keeps `dataSource` to the claim's namespace, and this checks it
//! again, because a copy hands one claim's data to another.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use thiserror::Error;

use super::PlanError;
use super::claim::class_name;
use super::record::{Recorded, provisioned_by};
use crate::backend::Target;
use crate::path::RelPath;

pub const CLONE_KIND: &str = "PersistentVolumeClaim";

/// Why a clone's source cannot be copied; the text reaches the new claim's events and
/// says no more than its owner can read in their own namespace.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CloneRefusal {
    #[error("dataSource and dataSourceRef name different claims ({0:?} and {1:?})")]
    Ambiguous(String, String),
    #[error("the source claim must be in the claim's own namespace, not {0:?}")]
    OtherNamespace(String),
    #[error("source claim {0:?} does not exist")]
    Missing(String),
    #[error("source claim {0:?} is being deleted")]
    Deleting(String),
    #[error(
        "source claim {claim:?} has StorageClass {source_class:?}; a clone must use the same class"
    )]
    OtherClass { claim: String, source_class: String },
    #[error("source claim {0:?} is not bound to a volume yet")]
    Unbound(String),
    #[error("source claim {0:?} is bound to a volume this provisioner did not make")]
    NotOurs(String),
    #[error("the volume of source claim {0:?} does not record its directory validly")]
    Unrecorded(String),
    #[error(
        "source claim {0:?} is on another share than the class now names; cloning across shares is not supported"
    )]
    OtherShare(String),
}

/// Where the copy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneSource {
    pub claim: String,
    pub claim_uid: String,
    pub volume: String,
    pub target: Target,
    pub directory: RelPath,
}

/// The source claim a claim names, if it asks for a clone; an error for any other kind
/// of data source (snapshots, populators) and for a source outside its namespace.
pub fn requested(pvc: &PersistentVolumeClaim) -> Result<Option<String>, PlanError> {
    let Some(spec) = pvc.spec.as_ref() else {
        return Ok(None);
    };
    let own_ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let plain = spec.data_source.as_ref().map(|d| {
        (
            d.api_group.as_deref(),
            d.kind.as_str(),
            d.name.as_str(),
            None,
        )
    });
    let by_ref = spec.data_source_ref.as_ref().map(|d| {
        (
            d.api_group.as_deref(),
            d.kind.as_str(),
            d.name.as_str(),
            d.namespace.as_deref(),
        )
    });
    let mut found: Option<&str> = None;
    for (group, kind, name, ns) in plain.into_iter().chain(by_ref) {
        if group.is_some_and(|g| !g.is_empty()) || kind != CLONE_KIND {
            return Err(PlanError::DataSource);
        }
        if let Some(ns) = ns.filter(|ns| *ns != own_ns) {
            return Err(CloneRefusal::OtherNamespace(ns.to_string()).into());
        }
        match found {
            Some(other) if other != name => {
                return Err(CloneRefusal::Ambiguous(other.into(), name.into()).into());
            }
            _ => found = Some(name),
        }
    }
    Ok(found.map(str::to_string))
}

/// Whether `source` (the claim named, as the API server has it now) and `volume` (the PV
/// it is bound to) may be copied into `pvc`'s new volume on `target`.
pub fn check_source(
    pvc: &PersistentVolumeClaim,
    name: &str,
    source: Option<&PersistentVolumeClaim>,
    volume: Option<&PersistentVolume>,
    target: &Target,
    provisioner: &str,
) -> Result<CloneSource, CloneRefusal> {
    let refuse = |f: fn(String) -> CloneRefusal| f(name.to_string());
    let source = source.ok_or_else(|| refuse(CloneRefusal::Missing))?;
    if source.metadata.namespace != pvc.metadata.namespace {
        return Err(CloneRefusal::OtherNamespace(
            source.metadata.namespace.clone().unwrap_or_default(),
        ));
    }
    if source.metadata.deletion_timestamp.is_some() {
        return Err(refuse(CloneRefusal::Deleting));
    }
    if class_name(source) != class_name(pvc) {
        return Err(CloneRefusal::OtherClass {
            claim: name.to_string(),
            source_class: class_name(source).unwrap_or_default().to_string(),
        });
    }
    let bound_to = source
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    let phase = source.status.as_ref().and_then(|s| s.phase.as_deref());
    let (Some(bound_to), Some("Bound")) = (bound_to, phase) else {
        return Err(refuse(CloneRefusal::Unbound));
    };
    let volume = volume
        .filter(|v| v.metadata.name.as_deref() == Some(bound_to))
        .ok_or_else(|| refuse(CloneRefusal::Unbound))?;
    if volume.metadata.deletion_timestamp.is_some() {
        return Err(refuse(CloneRefusal::Deleting));
    }
    let claim_ref = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    if claim_ref.and_then(|r| r.uid.as_deref()) != source.metadata.uid.as_deref() {
        return Err(refuse(CloneRefusal::Unbound));
    }
    if provisioned_by(&volume.metadata) != Some(provisioner) {
        return Err(refuse(CloneRefusal::NotOurs));
    }
    let recorded = Recorded::from_pv(volume).map_err(|_| refuse(CloneRefusal::Unrecorded))?;
    let there = recorded.target();
    if (there.server.as_str(), there.share.as_str())
        != (target.server.as_str(), target.share.as_str())
    {
        return Err(refuse(CloneRefusal::OtherShare));
    }
    Ok(CloneSource {
        claim: name.to_string(),
        claim_uid: source.metadata.uid.clone().unwrap_or_default(),
        volume: bound_to.to_string(),
        target: there,
        directory: recorded.directory,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ObjectReference, TypedLocalObjectReference, TypedObjectReference,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::plan::fixtures::{PROV, claim, class, defaults, pv};
    use crate::plan::{ClaimDecision, decide_claim, plan_volume};

    fn asking(kind: &str, group: Option<&str>, name: &str) -> PersistentVolumeClaim {
        let mut c = claim();
        c.metadata.uid = Some("c10e".into());
        c.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            api_group: group.map(str::to_string),
            kind: kind.into(),
            name: name.into(),
        });
        c
    }

    /// The source: the fixture claim, bound to the fixture PV.
    fn source() -> (PersistentVolumeClaim, PersistentVolume) {
        let mut volume = pv("Bound", "Delete", false, true);
        let mut src = claim();
        src.spec.as_mut().unwrap().volume_name = volume.metadata.name.clone();
        src.status.as_mut().unwrap().phase = Some("Bound".into());
        volume.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            uid: src.metadata.uid.clone(),
            ..Default::default()
        });
        (src, volume)
    }

    fn target() -> Target {
        plan_volume(&claim(), &class(&[]), &defaults(), PROV)
            .unwrap()
            .target
    }

    fn check(
        src: Option<&PersistentVolumeClaim>,
        volume: Option<&PersistentVolume>,
    ) -> Result<CloneSource, CloneRefusal> {
        check_source(
            &asking(CLONE_KIND, None, "data"),
            "data",
            src,
            volume,
            &target(),
            PROV,
        )
    }

    #[test]
    fn only_claims_of_the_own_namespace_are_sources() {
        assert_eq!(requested(&claim()).unwrap(), None);
        assert_eq!(
            requested(&asking(CLONE_KIND, None, "data")).unwrap(),
            Some("data".into())
        );
        assert_eq!(
            requested(&asking(CLONE_KIND, Some(""), "data")).unwrap(),
            Some("data".into())
        );
        for (kind, group) in [
            ("VolumeSnapshot", Some("snapshot.storage.k8s.io")),
            (CLONE_KIND, Some("example.com")),
            ("ConfigMap", None),
        ] {
            assert!(
                matches!(
                    requested(&asking(kind, group, "x")),
                    Err(PlanError::DataSource)
                ),
                "{kind} {group:?}"
            );
        }
        let mut other_ns = claim();
        other_ns.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
            kind: CLONE_KIND.into(),
            name: "data".into(),
            namespace: Some("team-b".into()),
            ..Default::default()
        });
        assert!(matches!(
            requested(&other_ns),
            Err(PlanError::Clone(CloneRefusal::OtherNamespace(ns))) if ns == "team-b"
        ));
        let mut both = asking(CLONE_KIND, None, "one");
        both.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
            kind: CLONE_KIND.into(),
            name: "two".into(),
            ..Default::default()
        });
        assert!(matches!(
            requested(&both),
            Err(PlanError::Clone(CloneRefusal::Ambiguous(..)))
        ));
        // What decide_claim makes of them: a clone is provisioned, the rest refused.
        let c = class(&[]);
        assert!(matches!(
            decide_claim(&asking(CLONE_KIND, None, "data"), Some(&c), PROV),
            ClaimDecision::Provision
        ));
        assert!(matches!(
            decide_claim(
                &asking("VolumeSnapshot", Some("snapshot.storage.k8s.io"), "s"),
                Some(&c),
                PROV
            ),
            ClaimDecision::Refuse(PlanError::DataSource)
        ));
        assert!(matches!(
            decide_claim(&other_ns, Some(&c), PROV),
            ClaimDecision::Refuse(PlanError::Clone(_))
        ));
    }

    #[test]
    fn a_source_is_a_bound_claim_of_ours_in_the_same_class() {
        let (src, volume) = source();
        let ok = check(Some(&src), Some(&volume)).unwrap();
        assert_eq!(ok.target, target());
        assert_eq!(Some(ok.volume.as_str()), volume.metadata.name.as_deref());
        assert_eq!(ok.directory.to_string(), "team-a-data-pvc-0b5e");

        assert_eq!(check(None, None), Err(CloneRefusal::Missing("data".into())));
        let mut elsewhere = src.clone();
        elsewhere.metadata.namespace = Some("team-b".into());
        assert!(matches!(
            check(Some(&elsewhere), Some(&volume)),
            Err(CloneRefusal::OtherNamespace(_))
        ));
        let mut deleting = src.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            check(Some(&deleting), Some(&volume)),
            Err(CloneRefusal::Deleting("data".into()))
        );
        let mut other_class = src.clone();
        other_class.spec.as_mut().unwrap().storage_class_name = Some("fast".into());
        assert!(matches!(
            check(Some(&other_class), Some(&volume)),
            Err(CloneRefusal::OtherClass { source_class, .. }) if source_class == "fast"
        ));
        let mut pending = src.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(
            check(Some(&pending), Some(&volume)),
            Err(CloneRefusal::Unbound("data".into()))
        );
        assert_eq!(
            check(Some(&src), None),
            Err(CloneRefusal::Unbound("data".into()))
        );
        let mut rebound = volume.clone();
        rebound
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .uid = Some("else".into());
        assert_eq!(
            check(Some(&src), Some(&rebound)),
            Err(CloneRefusal::Unbound("data".into()))
        );
        let mut going = volume.clone();
        going.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            check(Some(&src), Some(&going)),
            Err(CloneRefusal::Deleting("data".into()))
        );
        let foreign = crate::plan::fixtures::with_annotation(
            volume.clone(),
            crate::plan::ANN_PROVISIONED_BY,
            "other.io/nfs",
        );
        assert_eq!(
            check(Some(&src), Some(&foreign)),
            Err(CloneRefusal::NotOurs("data".into()))
        );
        let tampered = crate::plan::fixtures::with_annotation(
            volume.clone(),
            crate::plan::ANN_DIRECTORY,
            "../other",
        );
        assert_eq!(
            check(Some(&src), Some(&tampered)),
            Err(CloneRefusal::Unrecorded("data".into()))
        );
        let moved = check_source(
            &asking(CLONE_KIND, None, "data"),
            "data",
            Some(&src),
            Some(&volume),
            &Target {
                share: "/srv/other".into(),
                ..target()
            },
            PROV,
        );
        assert_eq!(moved, Err(CloneRefusal::OtherShare("data".into())));
    }
}

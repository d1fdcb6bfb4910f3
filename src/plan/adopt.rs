//! Adoption: reclaiming the volumes another provisioner made (nfs-subdir-external-provisioner,
//! "the incumbent") as it would have, so users can switch without moving data.
//!
//! Owns: which PVs are adopted ([`Adoption::adopts`]), when one is reclaimed
//! ([`Adoption::decide`]), where its directory is, strictly inside the adopted export
//! ([`Adoption::locate`]), what its class asks for, read as the incumbent v4.0.2 reads it
//! ([`incumbent_wish`]), and the resulting plan ([`plan_adopted`]), which goes through the
//! same reclaim steps as our own volumes. The incumbent writes none of our annotations:
//! everything here comes from `spec.nfs`, the class and the operator's flags.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use thiserror::Error;

use super::reclaim::{PvDecision, ReclaimPlan, ReclaimRefusal, plan_recorded};
use super::record::{Recorded, has_record, provisioned_by};
use super::release::CoUser;
use crate::backend::Target;
use crate::params::OnDelete;
use crate::path::{self, PathError, RelPath};

/// The PV annotation that names the class before `spec.storageClassName` existed; the
/// incumbent's class lookup (`GetPersistentVolumeClass`) reads it first.
const ANN_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";

/// What the operator said to adopt: the incumbent's provisioner names and its
/// `NFS_SERVER`/`NFS_PATH`, the one export all of its volumes live on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adoption {
    pub provisioners: Vec<String>,
    pub server: String,
    /// Normalised (`/srv/nfs`, no trailing slash).
    pub share: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdoptConfigError {
    #[error(
        "--adopt-provisioned-by needs --adopt-nfs-server and --adopt-nfs-path (the incumbent's NFS_SERVER and NFS_PATH)"
    )]
    Incomplete,
    #[error(
        "--adopt-nfs-server and --adopt-nfs-path are only meaningful with --adopt-provisioned-by"
    )]
    NothingToAdopt,
    #[error("--adopt-nfs-path {path:?}: {source}")]
    Share { path: String, source: PathError },
}

impl Adoption {
    /// `None` when nothing is to be adopted. Empty names (a trailing comma) are dropped.
    /// This provisioner's own name may be among them: it then serves the old classes
    /// under the old name, and the PVs of that name without our record are adopted.
    pub fn new(
        names: &[String],
        server: Option<&str>,
        share: Option<&str>,
    ) -> Result<Option<Self>, AdoptConfigError> {
        let provisioners: Vec<String> = names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let server = server.map(str::trim).filter(|s| !s.is_empty());
        let share = share.map(str::trim).filter(|s| !s.is_empty());
        if provisioners.is_empty() {
            return match (server, share) {
                (None, None) => Ok(None),
                _ => Err(AdoptConfigError::NothingToAdopt),
            };
        }
        let (Some(server), Some(share)) = (server, share) else {
            return Err(AdoptConfigError::Incomplete);
        };
        let share = path::normalize_share(share).map_err(|source| AdoptConfigError::Share {
            path: share.to_string(),
            source,
        })?;
        Ok(Some(Self {
            provisioners,
            server: server.to_string(),
            share,
        }))
    }

    /// Whether the PV's `pv.kubernetes.io/provisioned-by` is one of the adopted names and
    /// it carries none of our record (a PV we made under an adopted name is ours).
    pub fn adopts(&self, meta: &ObjectMeta) -> bool {
        provisioned_by(meta).is_some_and(|p| self.provisioners.iter().any(|a| a == p))
            && !has_record(meta)
    }

    /// The share the adopted volumes live on: the incumbent's PVs record no port, so the
    /// portmapper finds it, as the nodes' mounts do.
    pub fn target(&self) -> Target {
        Target {
            server: self.server.clone(),
            share: self.share.clone(),
            port: None,
            mount_port: None,
        }
    }

    /// When the incumbent's controller would delete: Released (not Failed), reclaim
    /// policy Delete, not already being deleted. The incumbent adds no finalizer, and none
    /// is added here: an adopted PV deleted by hand was never reclaimed by the incumbent
    /// either, and a finalizer written now could outlive a rollback to the incumbent.
    pub fn decide(&self, pv: &PersistentVolume) -> PvDecision {
        if !self.adopts(&pv.metadata) {
            return PvDecision::Skip("not adopted");
        }
        if pv.metadata.deletion_timestamp.is_some() {
            return PvDecision::Skip("adopted volume being deleted");
        }
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        let policy = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
        if phase == Some("Released") && policy == Some("Delete") {
            PvDecision::Reclaim
        } else {
            PvDecision::Skip("adopted volume not released with reclaim policy Delete")
        }
    }

    /// The PV's directory relative to the adopted export, if its server is the adopted
    /// one and its path lies strictly inside the export, spelled as the incumbent spells
    /// it (`filepath.Join`: no `.`, `..`, empty segment or trailing slash).
    pub fn locate(&self, pv: &PersistentVolume) -> Result<RelPath, AdoptRefusal> {
        let nfs = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .ok_or(AdoptRefusal::NotNfs)?;
        if nfs.server != self.server {
            return Err(AdoptRefusal::OtherServer {
                server: nfs.server.clone(),
                adopted: self.server.clone(),
            });
        }
        let outside = || AdoptRefusal::Outside {
            path: nfs.path.clone(),
            share: self.share.clone(),
        };
        let rest = if self.share == "/" {
            nfs.path.strip_prefix('/')
        } else {
            nfs.path
                .strip_prefix(self.share.as_str())
                .and_then(|r| r.strip_prefix('/'))
        }
        .ok_or_else(outside)?;
        RelPath::parse(rest).map_err(|source| AdoptRefusal::BadPath {
            path: nfs.path.clone(),
            source,
        })
    }
}

/// Why an adopted volume is left as it is (an event on the PV says so).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdoptRefusal {
    #[error("adopted volume has no spec.nfs")]
    NotNfs,
    #[error(
        "adopted volume is on server {server:?}, not the adopted {adopted:?}; the data was left in place"
    )]
    OtherServer { server: String, adopted: String },
    #[error(
        "adopted volume's path {path:?} is not inside the adopted export {share:?}; the data was left in place"
    )]
    Outside { path: String, share: String },
    #[error(
        "adopted volume's path {path:?} is not a plain path inside the export ({source}); the data was left in place"
    )]
    BadPath { path: String, source: PathError },
    #[error(
        "adopted volume names no StorageClass, so its onDelete/archiveOnDelete is unknown; the data was left in place"
    )]
    NoClass,
    #[error(
        "StorageClass {0} of the adopted volume is gone, so its onDelete/archiveOnDelete is unknown (the incumbent fails the same way); the data was left in place"
    )]
    ClassGone(String),
    #[error(
        "StorageClass {class}: archiveOnDelete {value:?} is not a boolean (the incumbent fails the same way); the data was left in place"
    )]
    BadArchiveOnDelete { class: String, value: String },
}

/// An adopted volume's reclaim could not be planned.
#[derive(Debug, Error)]
pub enum AdoptError {
    #[error("refusing to reclaim: {0}")]
    Refused(#[from] AdoptRefusal),
    #[error(transparent)]
    Reclaim(#[from] ReclaimRefusal),
}

/// The class the incumbent would look up for `pv`: the beta annotation, else
/// `spec.storageClassName`.
pub fn class_name(pv: &PersistentVolume) -> Option<&str> {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_CLASS_BETA))
        .map(String::as_str)
        .or_else(|| pv.spec.as_ref()?.storage_class_name.as_deref())
        .filter(|c| !c.is_empty())
}

/// What the incumbent's `Delete` does for a class with these parameters: `onDelete`
/// exactly `delete` or `retain` wins; otherwise `archiveOnDelete`, a Go boolean, false
/// deletes; anything else (unset, `archive`, an unknown onDelete) archives.
pub fn incumbent_wish(
    class: &str,
    params: Option<&BTreeMap<String, String>>,
) -> Result<OnDelete, AdoptRefusal> {
    let get = |k: &str| params.and_then(|p| p.get(k)).map(String::as_str);
    match get("onDelete") {
        Some("delete") => return Ok(OnDelete::Delete),
        Some("retain") => return Ok(OnDelete::Retain),
        _ => {}
    }
    match get("archiveOnDelete") {
        None => Ok(OnDelete::Archive),
        Some(v) => match go_parse_bool(v) {
            Some(false) => Ok(OnDelete::Delete),
            Some(true) => Ok(OnDelete::Archive),
            None => Err(AdoptRefusal::BadArchiveOnDelete {
                class: class.to_string(),
                value: v.to_string(),
            }),
        },
    }
}

/// Go's `strconv.ParseBool`: exactly these spellings.
fn go_parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Where an adopted volume's directory is and what its release does to it, given its
/// class (`None`: the class is not there). A directory nested below the export (a
/// `pathPattern` with `/`) is kept whatever the class says: the incumbent looks for the
/// last segment at the export's root instead, finds nothing there (or, worse, another
/// volume's directory), and in effect never touches such a directory.
pub fn adopted_wish(
    adoption: &Adoption,
    pv: &PersistentVolume,
    class: Option<&StorageClass>,
) -> Result<(RelPath, OnDelete), AdoptRefusal> {
    let directory = adoption.locate(pv)?;
    let name = class_name(pv).ok_or(AdoptRefusal::NoClass)?;
    let class = class.ok_or_else(|| AdoptRefusal::ClassGone(name.to_string()))?;
    let wish = incumbent_wish(name, class.parameters.as_ref())?;
    if directory.segments().len() > 1 {
        return Ok((directory, OnDelete::Retain));
    }
    Ok((directory, wish))
}

/// Plans the reclaim of the released adopted PV `pv` whose class is `class` (`None`
/// when gone), through the same steps as our own volumes'.
pub fn plan_adopted<'a>(
    pv: &PersistentVolume,
    class: Option<&StorageClass>,
    adoption: &Adoption,
    others: impl FnOnce() -> Vec<CoUser<'a>>,
) -> Result<ReclaimPlan, AdoptError> {
    let (directory, on_delete) = adopted_wish(adoption, pv, class)?;
    let target = adoption.target();
    let rec = Recorded {
        server: target.server,
        share: target.share,
        directory,
        on_delete,
        port: None,
        mount_port: None,
    };
    let pv_name = pv.metadata.name.as_deref().unwrap_or_default();
    Ok(plan_recorded(rec, pv_name, others)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ReclaimStep;
    use k8s_openapi::api::core::v1::{
        NFSVolumeSource, PersistentVolumeSpec, PersistentVolumeStatus,
    };

    const INCUMBENT: &str = "k8s-sigs.io/nfs-subdir-external-provisioner";

    fn adoption() -> Adoption {
        Adoption::new(
            &[INCUMBENT.to_string()],
            Some("10.0.0.9"),
            Some("/srv/nfs/"),
        )
        .unwrap()
        .unwrap()
    }

    /// A PV as the incumbent writes it (no finalizer, none of our annotations).
    fn incumbent_pv(path: &str, phase: &str, policy: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1234".into()),
                annotations: Some(BTreeMap::from([(
                    "pv.kubernetes.io/provisioned-by".to_string(),
                    INCUMBENT.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: "10.0.0.9".into(),
                    path: path.into(),
                    read_only: Some(false),
                }),
                persistent_volume_reclaim_policy: Some(policy.into()),
                storage_class_name: Some("managed-nfs".into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn class(params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("managed-nfs".into()),
                ..Default::default()
            },
            provisioner: INCUMBENT.into(),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    const DIR: &str = "/srv/nfs/team-a-data-pvc-1234";

    #[test]
    fn configuration() {
        let a = adoption();
        assert_eq!(a.share, "/srv/nfs");
        assert_eq!(Adoption::new(&[], None, None), Ok(None));
        assert_eq!(
            Adoption::new(&[" ".into()], Some("s"), None),
            Err(AdoptConfigError::NothingToAdopt)
        );
        assert_eq!(
            Adoption::new(&["x".into()], Some("s"), None),
            Err(AdoptConfigError::Incomplete)
        );
        assert!(matches!(
            Adoption::new(&["x".into()], Some("s"), Some("srv")),
            Err(AdoptConfigError::Share { .. })
        ));
    }

    #[test]
    fn only_released_with_policy_delete_and_not_deleting() {
        use PvDecision::*;
        let a = adoption();
        assert_eq!(a.decide(&incumbent_pv(DIR, "Released", "Delete")), Reclaim);
        for (phase, policy) in [
            ("Bound", "Delete"),
            ("Failed", "Delete"),
            ("Released", "Retain"),
            ("Available", "Delete"),
        ] {
            assert!(
                matches!(a.decide(&incumbent_pv(DIR, phase, policy)), Skip(_)),
                "{phase} {policy}"
            );
        }
        let mut deleting = incumbent_pv(DIR, "Released", "Delete");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert!(matches!(a.decide(&deleting), Skip(_)));
        let mut other = incumbent_pv(DIR, "Released", "Delete");
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("pv.kubernetes.io/provisioned-by".into(), "someone".into());
        assert_eq!(a.decide(&other), Skip("not adopted"));

        // Under an adopted name (ours too, when both are kept), a PV that carries our
        // record is ours: reclaimed from the record, never adopted.
        use crate::plan::fixtures::{PROV, pv as our_pv};
        let both = Adoption {
            provisioners: vec![INCUMBENT.into(), PROV.into()],
            ..adoption()
        };
        assert!(!both.adopts(&our_pv("Released", "Delete", false, true).metadata));
        let mut old = incumbent_pv(DIR, "Released", "Delete");
        old.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("pv.kubernetes.io/provisioned-by".into(), PROV.into());
        assert_eq!(both.decide(&old), Reclaim);
        let mut damaged = our_pv("Released", "Delete", false, true);
        damaged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(crate::plan::ANN_SERVER);
        assert!(
            !both.adopts(&damaged.metadata),
            "a damaged record is refused"
        );
    }

    #[test]
    fn the_path_must_lie_strictly_inside_the_adopted_export() {
        let a = adoption();
        let at = |p: &str| a.locate(&incumbent_pv(p, "Released", "Delete"));
        assert_eq!(at(DIR).unwrap().to_string(), "team-a-data-pvc-1234");
        assert_eq!(at("/srv/nfs/ns/claim").unwrap().to_string(), "ns/claim");
        // The export itself, however spelled, is never a volume's directory.
        assert!(matches!(at("/srv/nfs/"), Err(AdoptRefusal::BadPath { .. })));
        for bad in [
            "/srv/nfs",
            "/srv/nfsx/a",
            "/srv/other/a",
            "/srv",
            "srv/nfs/a",
        ] {
            assert!(
                matches!(at(bad), Err(AdoptRefusal::Outside { .. })),
                "{bad}: {:?}",
                at(bad)
            );
        }
        for bad in [
            "/srv/nfs/../etc",
            "/srv/nfs/a/../../b",
            "/srv/nfs/./a",
            "/srv/nfs//a",
            "/srv/nfs/a/",
            "/srv/nfs/a\nb",
        ] {
            assert!(
                matches!(at(bad), Err(AdoptRefusal::BadPath { .. })),
                "{bad}: {:?}",
                at(bad)
            );
        }
        let mut elsewhere = incumbent_pv(DIR, "Released", "Delete");
        elsewhere
            .spec
            .as_mut()
            .unwrap()
            .nfs
            .as_mut()
            .unwrap()
            .server = "10.0.0.10".into();
        assert!(matches!(
            a.locate(&elsewhere),
            Err(AdoptRefusal::OtherServer { .. })
        ));
        let mut not_nfs = incumbent_pv(DIR, "Released", "Delete");
        not_nfs.spec.as_mut().unwrap().nfs = None;
        assert_eq!(a.locate(&not_nfs), Err(AdoptRefusal::NotNfs));
        // An export of "/" adopts everything below the root, never the root.
        let root = Adoption {
            share: "/".into(),
            ..adoption()
        };
        let pv = incumbent_pv("/x", "Released", "Delete");
        assert_eq!(root.locate(&pv).unwrap().to_string(), "x");
        let pv = incumbent_pv("/", "Released", "Delete");
        assert!(root.locate(&pv).is_err());
    }

    #[test]
    fn the_class_is_read_as_the_incumbent_reads_it() {
        use OnDelete::*;
        type Params<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Params, Result<OnDelete, ()>)] = &[
            (&[], Ok(Archive)),
            (&[("archiveOnDelete", "false")], Ok(Delete)),
            (&[("archiveOnDelete", "F")], Ok(Delete)),
            (&[("archiveOnDelete", "0")], Ok(Delete)),
            (&[("archiveOnDelete", "true")], Ok(Archive)),
            (&[("archiveOnDelete", "no")], Err(())),
            (&[("archiveOnDelete", "")], Err(())),
            (&[("onDelete", "delete")], Ok(Delete)),
            (&[("onDelete", "retain")], Ok(Retain)),
            (&[("onDelete", "archive")], Ok(Archive)),
            // onDelete wins over archiveOnDelete; an unknown onDelete falls through.
            (
                &[("onDelete", "retain"), ("archiveOnDelete", "false")],
                Ok(Retain),
            ),
            (
                &[("onDelete", "Delete"), ("archiveOnDelete", "false")],
                Ok(Delete),
            ),
            (&[("onDelete", "Delete")], Ok(Archive)),
            (
                &[("onDelete", "delete"), ("archiveOnDelete", "bogus")],
                Ok(Delete),
            ),
        ];
        for (params, want) in cases {
            let got = incumbent_wish("c", class(params).parameters.as_ref()).map_err(|_| ());
            assert_eq!(&got, want, "{params:?}");
        }
        assert_eq!(incumbent_wish("c", None), Ok(Archive));
    }

    #[test]
    fn plans_go_through_the_reclaim_steps() {
        let a = adoption();
        let pv = incumbent_pv(DIR, "Released", "Delete");
        let plan = |params: &[(&str, &str)]| {
            plan_adopted(&pv, Some(&class(params)), &a, Vec::new)
                .unwrap()
                .step
        };
        assert_eq!(plan(&[("archiveOnDelete", "false")]), ReclaimStep::Delete);
        assert_eq!(plan(&[("onDelete", "retain")]), ReclaimStep::Retain);
        // The incumbent's archive name for its default directory names.
        assert_eq!(
            plan(&[]),
            ReclaimStep::Archive {
                to: RelPath::parse("archived-team-a-data-pvc-1234").unwrap()
            }
        );
        let full = plan_adopted(&pv, Some(&class(&[])), &a, Vec::new).unwrap();
        assert_eq!(full.target, a.target());
        assert_eq!(full.full_path(), DIR);

        // Nested: kept, whatever the class says.
        let nested = incumbent_pv("/srv/nfs/team-a/data", "Released", "Delete");
        let p = plan_adopted(
            &nested,
            Some(&class(&[("onDelete", "delete")])),
            &a,
            Vec::new,
        )
        .unwrap();
        assert_eq!(p.step, ReclaimStep::Retain);

        // A live volume on the same directory keeps it.
        let live = plan_adopted(&pv, Some(&class(&[("onDelete", "delete")])), &a, || {
            vec![CoUser {
                name: "pvc-live",
                path: DIR,
                releasing: false,
                on_delete: None,
            }]
        })
        .unwrap();
        assert_eq!(live.step, ReclaimStep::LeaveToLive(vec!["pvc-live".into()]));
    }

    #[test]
    fn refusals_touch_nothing() {
        let a = adoption();
        let pv = incumbent_pv(DIR, "Released", "Delete");
        let err = plan_adopted(&pv, None, &a, || panic!("not read")).unwrap_err();
        assert!(
            matches!(err, AdoptError::Refused(AdoptRefusal::ClassGone(ref c)) if c == "managed-nfs"),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("refusing to reclaim: "),
            "{err}"
        );
        let bad = class(&[("archiveOnDelete", "maybe")]);
        assert!(matches!(
            plan_adopted(&pv, Some(&bad), &a, Vec::new),
            Err(AdoptError::Refused(AdoptRefusal::BadArchiveOnDelete { .. }))
        ));
        let mut classless = pv.clone();
        classless.spec.as_mut().unwrap().storage_class_name = None;
        assert!(matches!(
            plan_adopted(&classless, Some(&class(&[])), &a, Vec::new),
            Err(AdoptError::Refused(AdoptRefusal::NoClass))
        ));
        // The beta annotation names the class first, as in the incumbent.
        let mut beta = pv.clone();
        beta.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_CLASS_BETA.into(), "old-name".into());
        assert_eq!(class_name(&beta), Some("old-name"));
        let outside = incumbent_pv("/srv/other/x", "Released", "Delete");
        assert!(matches!(
            plan_adopted(&outside, Some(&class(&[])), &a, || panic!("not read")),
            Err(AdoptError::Refused(AdoptRefusal::Outside { .. }))
        ));
    }
}

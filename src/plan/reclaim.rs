//! What to do with one of our PVs ([`decide_pv`]), and when its data is to be dealt
//! with, the complete reclaim plan ([`plan_reclaim`]): retain, delete, archive under its
//! final name, leave to the live volumes sharing the directory, wait for released ones,
//! or refuse, each with its reason. The reclaim reconciler only carries it out.

use k8s_openapi::api::core::v1::PersistentVolume;
use thiserror::Error;

use super::record::{RecordError, Recorded, has_finalizer, provisioned_by};
use super::release::{CoUser, SharedRelease, archive_target, shared_release};
use crate::backend::Target;
use crate::params::OnDelete;
use crate::path::{PathError, RelPath};

/// What to do with one of our PVs.
#[derive(Debug, PartialEq, Eq)]
pub enum PvDecision {
    Skip(&'static str),
    /// Released with policy Delete: reclaim the directory, then delete the PV object.
    Reclaim,
    /// Being deleted and its data has been dealt with or must be kept: drop our finalizer.
    /// `reclaim_first` says whether the (idempotent) reclaim must run before.
    ReleaseFinalizer {
        reclaim_first: bool,
    },
}

pub fn decide_pv(pv: &PersistentVolume, provisioner: &str) -> PvDecision {
    if provisioned_by(&pv.metadata) != Some(provisioner) {
        return PvDecision::Skip("not provisioned by us");
    }
    let has_finalizer = has_finalizer(&pv.metadata);
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let phase = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Delete");
    // Failed is where a volume lands when an earlier reclaim gave up (another
    // provisioner, or a recycler): the claim is gone all the same.
    let released = phase == "Released" || phase == "Failed";
    match (deleting, policy) {
        (false, "Delete") if released => PvDecision::Reclaim,
        (false, _) => PvDecision::Skip("not released with reclaim policy Delete"),
        (true, _) if !has_finalizer => {
            PvDecision::Skip("being deleted, our finalizer already gone")
        }
        (true, "Delete") if released => PvDecision::ReleaseFinalizer {
            reclaim_first: true,
        },
        // Bound or Pending while deleted: pv-protection holds it until the claim lets go.
        (true, "Delete") if phase == "Bound" || phase == "Pending" => {
            PvDecision::Skip("deleted while still bound")
        }
        (true, "Delete") if phase == "Available" => PvDecision::ReleaseFinalizer {
            reclaim_first: true,
        },
        (true, "Delete") => {
            PvDecision::Skip("deleted in an unexpected phase; leaving the data alone")
        }
        (true, _) => PvDecision::ReleaseFinalizer {
            reclaim_first: false,
        },
    }
}

/// Being deleted, or released (or failed) with reclaim policy Delete: its directory is
/// about to be dealt with. A volume released under policy Retain stays as it is until an
/// admin acts, so it holds its directory like a live one.
pub fn releasing(deleting: bool, phase: Option<&str>, reclaim_policy: Option<&str>) -> bool {
    deleting
        || (reclaim_policy.unwrap_or("Delete") == "Delete"
            && matches!(phase, Some("Released" | "Failed")))
}

/// Why a released volume's data is left in place.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReclaimRefusal {
    #[error("refusing to reclaim: {0}; the data was left in place")]
    Record(#[from] RecordError),
    #[error("cannot name the archive: {0}")]
    ArchiveName(PathError),
}

/// What reclaim does with a released volume's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReclaimStep {
    /// The recorded wish, or the most careful one of a shared directory: touch nothing.
    Retain,
    Delete,
    /// Rename the directory to `to`, beside it.
    Archive {
        to: RelPath,
    },
    /// Live volumes still use the directory: finish without touching it; the last of
    /// them to be released reclaims it.
    LeaveToLive(Vec<String>),
    /// Released volumes sharing the directory (or nested in it) go first.
    WaitFor(Vec<String>),
}

/// Everything the reclaim of one volume needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimPlan {
    pub target: Target,
    pub directory: RelPath,
    /// What the PV recorded, whatever the step: the metrics' `action`.
    pub on_delete: OnDelete,
    pub step: ReclaimStep,
}

impl ReclaimPlan {
    pub fn full_path(&self) -> String {
        super::join_share(&self.target.share, &self.directory)
    }
}

/// Plans the reclaim of the released PV `pv` from what it recorded, given the other PVs
/// (`others`, read only when the recorded wish is not Retain). Refused when the record
/// is missing, invalid or ambiguous, or the archive cannot be named.
pub fn plan_reclaim<'a>(
    pv: &PersistentVolume,
    others: impl FnOnce() -> Vec<CoUser<'a>>,
) -> Result<ReclaimPlan, ReclaimRefusal> {
    let rec = Recorded::from_pv(pv)?;
    plan_recorded(rec, pv.metadata.name.as_deref().unwrap_or_default(), others)
}

/// The reclaim plan of the released PV `pv_name` whose data is described by `rec`: from
/// its annotations ([`plan_reclaim`]) or, for an adopted volume, from its class
/// (`plan::adopt`).
pub(crate) fn plan_recorded<'a>(
    rec: Recorded,
    pv_name: &str,
    others: impl FnOnce() -> Vec<CoUser<'a>>,
) -> Result<ReclaimPlan, ReclaimRefusal> {
    let full = rec.full_path();
    let step = if rec.on_delete == OnDelete::Retain {
        // Nothing will be touched: whoever else uses the directory does not matter.
        ReclaimStep::Retain
    } else {
        match shared_release(pv_name, &full, rec.on_delete, others()) {
            SharedRelease::LeaveToLive(users) => ReclaimStep::LeaveToLive(users),
            SharedRelease::WaitFor(first) => ReclaimStep::WaitFor(first),
            SharedRelease::Act(OnDelete::Retain) => ReclaimStep::Retain,
            SharedRelease::Act(OnDelete::Delete) => ReclaimStep::Delete,
            SharedRelease::Act(OnDelete::Archive) => ReclaimStep::Archive {
                to: archive_target(&rec.directory, pv_name).map_err(ReclaimRefusal::ArchiveName)?,
            },
        }
    };
    Ok(ReclaimPlan {
        target: rec.target(),
        directory: rec.directory,
        on_delete: rec.on_delete,
        step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{PROV, claim, class, defaults, pv, with_annotation};
    use crate::plan::{ANN_DIRECTORY, ANN_PROVISIONED_BY, plan_volume};

    #[test]
    fn pv_decisions() {
        use PvDecision::*;
        let cases = [
            (("Released", "Delete", false, true), Reclaim),
            (
                ("Bound", "Delete", false, true),
                Skip("not released with reclaim policy Delete"),
            ),
            (
                ("Released", "Retain", false, true),
                Skip("not released with reclaim policy Delete"),
            ),
            (
                ("Released", "Delete", true, true),
                ReleaseFinalizer {
                    reclaim_first: true,
                },
            ),
            (
                ("Bound", "Delete", true, true),
                Skip("deleted while still bound"),
            ),
            (
                ("Released", "Retain", true, true),
                ReleaseFinalizer {
                    reclaim_first: false,
                },
            ),
            (
                ("Released", "Delete", true, false),
                Skip("being deleted, our finalizer already gone"),
            ),
            (
                ("Failed", "Delete", true, true),
                ReleaseFinalizer {
                    reclaim_first: true,
                },
            ),
            (("Failed", "Delete", false, true), Reclaim),
            (
                ("", "Delete", true, true),
                Skip("deleted in an unexpected phase; leaving the data alone"),
            ),
        ];
        for ((phase, policy, deleting, fin), want) in cases {
            assert_eq!(
                decide_pv(&pv(phase, policy, deleting, fin), PROV),
                want,
                "{phase} {policy} {deleting} {fin}"
            );
        }
        let foreign = with_annotation(
            pv("Released", "Delete", false, true),
            ANN_PROVISIONED_BY,
            "other",
        );
        assert_eq!(decide_pv(&foreign, PROV), Skip("not provisioned by us"));
    }

    fn released(on_delete: &str) -> PersistentVolume {
        plan_volume(
            &claim(),
            &class(&[("onDelete", on_delete)]),
            &defaults(),
            PROV,
        )
        .unwrap()
        .pv
    }

    fn user<'a>(name: &'a str, path: &'a str, releasing: bool, on: OnDelete) -> CoUser<'a> {
        CoUser {
            name,
            path,
            releasing,
            on_delete: Some(on),
        }
    }

    #[test]
    fn retain_is_decided_without_looking_at_other_volumes() {
        let plan = plan_reclaim(&released("retain"), || {
            panic!("other volumes are not read for a retained directory")
        })
        .unwrap();
        assert_eq!(plan.step, ReclaimStep::Retain);
        assert_eq!(plan.on_delete, OnDelete::Retain);
        assert_eq!(plan.full_path(), "/srv/k8s/team-a-data-pvc-0b5e");
    }

    #[test]
    fn delete_and_archive_with_its_final_name() {
        let plan = plan_reclaim(&released("delete"), Vec::new).unwrap();
        assert_eq!(plan.step, ReclaimStep::Delete);
        let plan = plan_reclaim(&released("archive"), Vec::new).unwrap();
        assert_eq!(
            plan.step,
            ReclaimStep::Archive {
                to: RelPath::parse("archived-team-a-data-pvc-0b5e").unwrap()
            }
        );
        assert_eq!(plan.target.server, "10.0.0.5");
    }

    #[test]
    fn shared_directories_wait_leave_or_merge() {
        let path = "/srv/k8s/team-a-data-pvc-0b5e";
        let live = plan_reclaim(&released("delete"), || {
            vec![user("pvc-live", path, false, OnDelete::Delete)]
        })
        .unwrap();
        assert_eq!(live.step, ReclaimStep::LeaveToLive(vec!["pvc-live".into()]));
        let first = plan_reclaim(&released("delete"), || {
            vec![user("pvc-0000", path, true, OnDelete::Delete)]
        })
        .unwrap();
        assert_eq!(first.step, ReclaimStep::WaitFor(vec!["pvc-0000".into()]));
        // This one acts for both, with the more careful wish of the two.
        let merged = plan_reclaim(&released("delete"), || {
            vec![user("pvc-zzzz", path, true, OnDelete::Retain)]
        })
        .unwrap();
        assert_eq!(merged.step, ReclaimStep::Retain);
        assert_eq!(merged.on_delete, OnDelete::Delete);
    }

    #[test]
    fn a_bad_record_or_archive_name_is_refused() {
        let tampered = with_annotation(released("delete"), ANN_DIRECTORY, "../x");
        let err = plan_reclaim(&tampered, Vec::new).unwrap_err();
        assert!(
            matches!(err, ReclaimRefusal::Record(RecordError::Path(_))),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("refusing to reclaim: "),
            "{err}"
        );
        // An archive name that cannot be a path (a control character in the PV name).
        let mut odd = released("archive");
        odd.metadata.name = Some("bad\u{7}name".into());
        let err = plan_reclaim(&odd, Vec::new).unwrap_err();
        assert!(matches!(err, ReclaimRefusal::ArchiveName(_)), "{err}");
    }
}

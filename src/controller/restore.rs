//! A claim that names an archive (`plan::restore`) gets it renamed into its new
//! directory instead of an empty one: the record is read and judged, the archive taken
//! with an exclusive claim file (of two claims asking at once, one wins), renamed, and,
//! once the PV exists, its record and claim removed. Every step can be repeated after a
//! crash: the claim file tells a retry that the archive is already this claim's.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use tracing::{info, warn};

use super::{Error, archives};
use crate::backend::{AnyShare, DirAttrs, PARENT_MODE, Renamed, Share};
use crate::path::RelPath;
use crate::plan::ProvisionPlan;
use crate::plan::archive::{ArchiveClaim, Purpose, RestoreTo};
use crate::plan::restore::{self, Found, RestoreRefusal, RestoreStep, Want};

/// A restore under way: finished by [`finish`] once the PV exists.
pub(super) struct Restoring {
    key: String,
}

fn refused(r: RestoreRefusal) -> Error {
    let msg = format!("cannot restore from an archive: {r}");
    if r.may_change() {
        Error::Waiting(msg)
    } else {
        Error::Refused(msg)
    }
}

/// `None` when the claim asks for no archive: the caller makes a new directory. Else
/// the archive is in the volume's directory when this returns Ok.
pub(super) async fn take(
    share: &AnyShare,
    pvc: &PersistentVolumeClaim,
    volume: &ProvisionPlan,
) -> Result<Option<Restoring>, Error> {
    let Some(name) = restore::requested(pvc) else {
        return Ok(None);
    };
    restore::check_name(name).map_err(refused)?;
    let claim_uid = pvc.metadata.uid.as_deref().unwrap_or_default();
    let want = Want {
        name,
        namespace: &volume.namespace,
        claim_uid,
        target: &volume.target,
        directory: &volume.directory,
    };
    // Twice at most: a second time when another taker got the claim file between our
    // reading and our writing it.
    for _ in 0..2 {
        let claim = archives::read_claim(share, name).await?;
        let record = archives::read_record(share, name).await?;
        let named = match (&claim, &record) {
            (Some(Ok(c)), _) => RelPath::parse(&c.archive).ok(),
            (_, Some(Ok(r))) => RelPath::parse(&r.archive).ok(),
            _ => None,
        };
        let archive_exists = match &named {
            Some(a) => archives::is_dir(share, a).await?,
            None => false,
        };
        let target_exists = share.stat(&volume.directory).await?.is_some();
        let found = Found {
            claim: claim.as_ref().map(|c| c.as_ref()),
            record: record.as_ref().map(|r| r.as_ref()),
            archive_exists,
            target_exists,
        };
        let archive = match restore::decide(&want, &found).map_err(refused)? {
            RestoreStep::Done { .. } => return Ok(Some(Restoring { key: name.into() })),
            RestoreStep::Rename { archive } => archive,
            RestoreStep::Take { archive } => {
                let mine = ArchiveClaim::new(
                    Purpose::Restore,
                    &archive,
                    Some(RestoreTo {
                        namespace: volume.namespace.clone(),
                        claim: pvc.metadata.name.clone().unwrap_or_default(),
                        claim_uid: claim_uid.to_string(),
                        volume: volume.pv_name.clone(),
                        directory: volume.directory.to_string(),
                    }),
                    archives::now_secs(),
                );
                if !archives::take(share, name, &mine).await? {
                    continue;
                }
                archive
            }
        };
        move_into(share, &archive, &volume.directory).await?;
        info!(archive = %archive, directory = %volume.directory, "archive restored into the new volume");
        return Ok(Some(Restoring { key: name.into() }));
    }
    Err(Error::Waiting(format!(
        "cannot restore from an archive: archive {name:?} changed hands while being read; will retry"
    )))
}

async fn move_into(share: &AnyShare, archive: &RelPath, dir: &RelPath) -> Result<(), Error> {
    if !dir.parent_segments().is_empty() {
        let parent = RelPath::parse(&dir.parent_segments().join("/"))
            .map_err(|e| Error::Refused(e.to_string()))?;
        let attrs = DirAttrs {
            mode: PARENT_MODE,
            uid: None,
            gid: None,
            stamp: None,
        };
        share.create_dir(&parent, attrs).await?;
    }
    match share.rename(archive, dir).await? {
        Renamed::Done | Renamed::AlreadyDone => Ok(()),
        Renamed::SourceMissing => Err(refused(RestoreRefusal::Vanished {
            name: archive.to_string(),
        })),
    }
}

/// The PV exists: the archive is a volume now, its record and claim go. A failure here
/// leaves only those two small files (the volume is fine); `audit` shows them.
pub(super) async fn finish(share: &AnyShare, r: Restoring) {
    if let Err(e) = archives::forget(share, &r.key).await {
        warn!(archive = r.key, error = %e, "restored, but its record could not be removed");
    }
}

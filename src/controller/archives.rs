//! Archive records on a share (`plan::archive`): written by reclaim just before it
//! renames a released volume's directory to its archive, read by restore and retention,
//! and the exclusive claim either of those takes on an archive before acting on it.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::PersistentVolume;
use tracing::{debug, warn};

use super::Error;
use crate::backend::metadata::{RECORD_MODE, metadata_dir};
use crate::backend::{AnyShare, BackendError, Kind, Share, Written};
use crate::path::RelPath;
use crate::plan::archive::{
    self, ArchiveClaim, ArchiveRecord, CLAIMS, MAX_RECORD_BYTES, RECORDS, RecordError, archive_key,
};
use crate::plan::{ReclaimPlan, ReclaimStep};

/// A record or claim as found: absent, unreadable, or parsed.
pub(super) type Read<T> = Option<Result<T, RecordError>>;

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn path_error(e: crate::path::PathError) -> Error {
    Error::Refused(format!("cannot name an archive record: {e}"))
}

/// Before an archive step: records who owned the directory, so the archive can be
/// restored into the same namespace only, and expired by age. Written first, so a
/// crash leaves at most a record without an archive, never an archive without an owner.
/// A directory already gone (archived by an earlier attempt, which wrote the record)
/// gets none.
pub(super) async fn before_reclaim(
    pv: &PersistentVolume,
    plan: &ReclaimPlan,
    ctx: &super::Context,
) -> Result<(), Error> {
    let ReclaimStep::Archive { to } = &plan.step else {
        return Ok(());
    };
    let share = ctx.shares.get(&plan.target)?;
    if share.stat(&plan.directory).await?.is_none() {
        return Ok(());
    }
    let spec = pv.spec.as_ref();
    let cref = spec.and_then(|s| s.claim_ref.as_ref());
    let record = ArchiveRecord {
        version: archive::VERSION,
        namespace: cref.and_then(|c| c.namespace.clone()).unwrap_or_default(),
        claim: cref.and_then(|c| c.name.clone()).unwrap_or_default(),
        claim_uid: cref.and_then(|c| c.uid.clone()).unwrap_or_default(),
        volume: pv.metadata.name.clone().unwrap_or_default(),
        class: spec
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default(),
        server: plan.target.server.clone(),
        share: plan.target.share.clone(),
        directory: plan.directory.to_string(),
        archive: to.to_string(),
        archived_at: now_secs(),
    };
    write_record(&share, &record, to).await
}

async fn write_record(share: &AnyShare, record: &ArchiveRecord, to: &RelPath) -> Result<(), Error> {
    metadata_dir(share, RECORDS).await?;
    let key = archive_key(to);
    let path = archive::record_path(&key).map_err(path_error)?;
    // Twice at most: the second time after removing a record cut short by a crash
    // between its CREATE and its WRITE.
    for _ in 0..2 {
        if share
            .write_file(&path, &record.to_bytes(), RECORD_MODE)
            .await?
            == Written::Created
        {
            return Ok(());
        }
        match read_record(share, &key).await? {
            // A retry of the same reclaim: the first record (and its time) stays.
            Some(Ok(found)) if found.volume == record.volume => return Ok(()),
            Some(Ok(found)) => {
                return Err(Error::Refused(format!(
                    "archive {to} already has a record, of volume {}; refusing to archive over it",
                    found.volume
                )));
            }
            Some(Err(RecordError::Syntax(why))) => {
                warn!(record = %path, why, "replacing an incomplete archive record");
                share.remove_tree(&path).await?;
            }
            Some(Err(e)) => {
                return Err(Error::Refused(format!("archive record {path}: {e}")));
            }
            None => {}
        }
    }
    Err(Error::Waiting(format!(
        "archive record {path} keeps changing; will retry"
    )))
}

pub(super) async fn read_record(share: &AnyShare, key: &str) -> Result<Read<ArchiveRecord>, Error> {
    let path = archive::record_path(key).map_err(path_error)?;
    Ok(read_small(share, &path)
        .await?
        .map(|bytes| ArchiveRecord::parse(&bytes, key)))
}

pub(super) async fn read_claim(share: &AnyShare, key: &str) -> Result<Read<ArchiveClaim>, Error> {
    let path = archive::claim_path(key).map_err(path_error)?;
    Ok(read_small(share, &path)
        .await?
        .map(|bytes| ArchiveClaim::parse(&bytes)))
}

async fn read_small(share: &AnyShare, path: &RelPath) -> Result<Option<Vec<u8>>, BackendError> {
    share.read_file(path, MAX_RECORD_BYTES).await
}

/// Takes the archive `key` for `claim`: true when this call made the claim file, false
/// when one was there (the caller reads it again and decides).
pub(super) async fn take(share: &AnyShare, key: &str, claim: &ArchiveClaim) -> Result<bool, Error> {
    metadata_dir(share, CLAIMS).await?;
    let path = archive::claim_path(key).map_err(path_error)?;
    Ok(share
        .write_file(&path, &claim.to_bytes(), RECORD_MODE)
        .await?
        == Written::Created)
}

/// Removes the record, then the claim: the claim last, so an attempt that stops in
/// between still finds the archive held.
pub(super) async fn forget(share: &AnyShare, key: &str) -> Result<(), Error> {
    for path in [archive::record_path(key), archive::claim_path(key)] {
        let path = path.map_err(path_error)?;
        share.remove_tree(&path).await?;
        debug!(path = %path, "removed");
    }
    Ok(())
}

/// Releases a claim taken on an archive without acting on it.
pub(super) async fn forget_claim(share: &AnyShare, key: &str) -> Result<(), Error> {
    let path = archive::claim_path(key).map_err(path_error)?;
    share.remove_tree(&path).await?;
    Ok(())
}

/// Whether `path` is a directory (an archive is never anything else).
pub(super) async fn is_dir(share: &AnyShare, path: &RelPath) -> Result<bool, Error> {
    Ok(share
        .stat(path)
        .await?
        .is_some_and(|st| st.kind == Kind::Dir))
}

/// Keys of the records on a share.
pub(super) async fn record_keys(share: &AnyShare) -> Result<Vec<String>, Error> {
    let dir = RelPath::metadata(&[RECORDS]).map_err(path_error)?;
    Ok(share.list(Some(&dir)).await?)
}

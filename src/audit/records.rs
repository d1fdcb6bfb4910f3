//! Who each archive was made from: its record in the share's metadata directory
//! (`plan::archive`), read for the report. An archive without one is shown as such.

use super::ShareReport;
use crate::backend::Share;
use crate::plan::archive::{ArchiveRecord, MAX_RECORD_BYTES, record_path};

pub(super) async fn read_owners<S: Share>(share: &S, report: &mut ShareReport) {
    for a in &mut report.archives {
        let Ok(path) = record_path(&a.name) else {
            continue;
        };
        match share.read_file(&path, MAX_RECORD_BYTES).await {
            Ok(None) => {}
            Ok(Some(bytes)) => match ArchiveRecord::parse(&bytes, &a.name) {
                Ok(r) => {
                    a.recorded = true;
                    a.namespace = Some(r.namespace);
                    a.claim = Some(r.claim);
                }
                Err(e) => a.record_error = Some(e.to_string()),
            },
            Err(e) => a.record_error = Some(e.to_string()),
        }
    }
}

/// Takes the archive `name` for removal, the way retention does, so a restore under way
/// is never pruned under it: false when someone holds it already.
pub(super) async fn hold<S: Share>(
    share: &S,
    name: &str,
    archive: &crate::path::RelPath,
) -> Result<bool, crate::backend::BackendError> {
    use crate::backend::Written;
    use crate::backend::metadata::{RECORD_MODE, metadata_dir};
    use crate::plan::archive::{ArchiveClaim, CLAIMS, Purpose, claim_path};
    let Ok(path) = claim_path(name) else {
        return Ok(false);
    };
    metadata_dir(share, CLAIMS).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claim = ArchiveClaim::new(Purpose::Expire, archive, None, now);
    Ok(share
        .write_file(&path, &claim.to_bytes(), RECORD_MODE)
        .await?
        == Written::Created)
}

/// Lets go of an archive taken with [`hold`]; with `removed`, its record goes first.
pub(super) async fn release<S: Share>(
    share: &S,
    name: &str,
    removed: bool,
) -> Result<(), crate::backend::BackendError> {
    use crate::plan::archive::claim_path;
    if removed && let Ok(path) = record_path(name) {
        share.remove_tree(&path).await?;
    }
    if let Ok(path) = claim_path(name) {
        share.remove_tree(&path).await?;
    }
    Ok(())
}

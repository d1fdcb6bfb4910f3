//! The provisioner's own directory at a share's root (`path::METADATA_DIR`): made on
//! first use, readable and writable by the provisioner's identity only, so tenants, who
//! only ever get paths to their own volumes, can neither read nor forge what it keeps.
//! Features that keep state on the share (archive records, staging) call
//! [`metadata_dir`] for their subdirectory.

use super::{BackendError, DirAttrs, Share};
use crate::path::RelPath;

/// Mode of the metadata directory and its subdirectories.
pub const METADATA_MODE: u32 = 0o700;
/// Mode of the files kept there.
pub const RECORD_MODE: u32 = 0o600;

const ATTRS: DirAttrs = DirAttrs {
    mode: METADATA_MODE,
    uid: None,
    gid: None,
    stamp: None,
};

/// `METADATA_DIR/<sub>`, made (with `METADATA_DIR` itself) if missing. Idempotent; an
/// existing directory is left as it is. A symlink or file in its place is refused.
pub async fn metadata_dir<S: Share>(share: &S, sub: &str) -> Result<RelPath, BackendError> {
    let bad = |e: crate::path::PathError| BackendError::NotADirectory {
        path: format!("{}/{sub}: {e}", crate::path::METADATA_DIR),
    };
    let top = RelPath::metadata(&[]).map_err(bad)?;
    let dir = RelPath::metadata(&[sub]).map_err(bad)?;
    // The top first, so it gets this mode rather than the parents' 0755.
    share.create_dir(&top, ATTRS).await?;
    share.create_dir(&dir, ATTRS).await?;
    Ok(dir)
}

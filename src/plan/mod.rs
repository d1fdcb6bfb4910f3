//! Pure decisions, free of I/O: everything destructive is decided here, so it can be
//! tested table by table, and the reconcilers only carry plans out.
//!
//! - [`claim`]: is this claim ours, is it time, can it ever be provisioned;
//! - [`volume`]: the complete provisioning plan (directory, attributes, sharing, PV);
//! - [`ownership`]: whose directory is it;
//! - [`record`]: the PV annotations written at provisioning and read back at reclaim;
//! - [`reclaim`]: what to do with one of our PVs, and the complete reclaim plan;
//! - [`release`]: directories shared by several released volumes, archive names;
//! - [`placement`]: which of a class's exports a new volume goes to, and when none has room.
//! - [`expand`]: growing a bound claim's volume, and [`quantity`], the sizes it compares.
//! - [`adopt`]: the volumes of another provisioner reclaimed as it would have.
//! - [`clone`]: whether a claim asks for a copy of another claim, and may have it.
//! - [`archive`]: who owned an archive (its record), and who holds it now;
//! - [`restore`]: whether a claim may start from an archive.
//! - [`usage`]: which volumes a usage scan looks at, and when one is over its size.

use thiserror::Error;

use crate::params::ParamError;
use crate::path::{PathError, TemplateError};

pub mod adopt;
pub mod archive;
pub mod claim;
pub mod clone;
pub mod expand;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod ownership;
pub mod placement;
pub mod quantity;
pub mod reclaim;
pub mod record;
pub mod release;
pub mod restore;
pub mod usage;
pub mod volume;

pub use claim::{
    ANN_CLASS_BETA, ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER, ANN_STORAGE_PROVISIONER_BETA,
    ClaimDecision, class_name, decide_claim, volume_name,
};
pub use reclaim::{
    PvDecision, ReclaimPlan, ReclaimRefusal, ReclaimStep, decide_pv, plan_reclaim, releasing,
};
pub use record::{
    ANN_DIRECTORY, ANN_MOUNT_PORT, ANN_ON_DELETE, ANN_PORT, ANN_PROVISIONED_BY, ANN_SERVER,
    ANN_SHARE, FINALIZER, RecordError, Recorded, join_share,
};
pub use release::archive_target;
pub use volume::{ProvisionPlan, plan_volume};

/// FNV-1a, 64 bits: stable across builds and versions (unlike std's hasher), for names
/// and stamps that must come out the same on every retry and after an upgrade.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Prefix of archived directories, as nfs-subdir-external-provisioner names them.
pub const ARCHIVE_PREFIX: &str = "archived-";

/// Why a claim cannot be provisioned as it stands; the text reaches the claim's events.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error("StorageClass {class}: {source}")]
    Params { class: String, source: ParamError },
    #[error("cannot render the directory name: {0}")]
    Template(#[from] TemplateError),
    #[error("refusing directory {rendered:?}: {source}")]
    Path { rendered: String, source: PathError },
    #[error("claims with volumeMode Block are not supported: an NFS directory is a filesystem")]
    BlockMode,
    #[error(
        "claims with a selector are not supported: a dynamically provisioned volume has no labels to match"
    )]
    Selector,
    #[error(
        "claims with a dataSource other than a PersistentVolumeClaim are not supported: this provisioner clones only claims"
    )]
    DataSource,
    #[error("cannot clone: {0}")]
    Clone(#[from] clone::CloneRefusal),
    #[error("the claim requests no storage size (spec.resources.requests.storage)")]
    NoSize,
    #[error("the claim's requested storage size cannot be read: {0}")]
    Size(String),
    #[error("the claim has no access modes")]
    NoAccessModes,
    #[error("the claim has no uid yet")]
    NoUid,
    #[error(
        "directory {path} already exists and no PersistentVolume records it (left by a retained or deleted volume, or made by someone else); it is not handed to a new claim unless the StorageClass sets existingDirectory: adopt"
    )]
    ExistingDirectory { path: String },
}

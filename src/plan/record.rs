//! The PV's annotations this provisioner writes and reads back: which provisioner made
//! it, and where its data lives and what its release does, recorded so reclaim works the
//! same after the class is changed or deleted. Written and read here only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use thiserror::Error;

use crate::backend::Target;
use crate::params::{ClassParams, OnDelete};
use crate::path::{self, PathError, RelPath};

pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The finalizer external provisioners put on their PVs, so the object outlives its data.
pub const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";

/// What reclaim needs, recorded on the PV so it works after the class is changed or gone.
pub const ANN_SERVER: &str = "nfs3-provisioner.io/server";
pub const ANN_SHARE: &str = "nfs3-provisioner.io/share";
pub const ANN_DIRECTORY: &str = "nfs3-provisioner.io/directory";
pub const ANN_ON_DELETE: &str = "nfs3-provisioner.io/on-delete";
pub const ANN_PORT: &str = "nfs3-provisioner.io/port";
pub const ANN_MOUNT_PORT: &str = "nfs3-provisioner.io/mount-port";

pub fn join_share(share: &str, dir: &RelPath) -> String {
    if share == "/" {
        format!("/{dir}")
    } else {
        format!("{share}/{dir}")
    }
}

/// The annotations a new PV carries: who made it, and everything reclaim reads back
/// with [`Recorded::from_pv`].
pub fn annotations(
    provisioner: &str,
    params: &ClassParams,
    directory: &RelPath,
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([
        (ANN_PROVISIONED_BY.to_string(), provisioner.to_string()),
        (ANN_SERVER.to_string(), params.server.clone()),
        (ANN_SHARE.to_string(), params.share.clone()),
        (ANN_DIRECTORY.to_string(), directory.to_string()),
        (ANN_ON_DELETE.to_string(), params.on_delete.to_string()),
    ]);
    if let Some(p) = params.port {
        annotations.insert(ANN_PORT.to_string(), p.to_string());
    }
    if let Some(p) = params.mount_port {
        annotations.insert(ANN_MOUNT_PORT.to_string(), p.to_string());
    }
    annotations
}

/// The provisioner that made this PV, as its annotation says.
pub fn provisioned_by(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(ANN_PROVISIONED_BY)
        .map(String::as_str)
}

/// What a PV recorded for its release, if it says so validly; other provisioners' PVs
/// and ones with a bad value give `None`.
pub fn recorded_on_delete(meta: &ObjectMeta) -> Option<OnDelete> {
    meta.annotations.as_ref()?.get(ANN_ON_DELETE)?.parse().ok()
}

/// Whether the PV carries any of our record's annotations (valid or not): such a PV is
/// reclaimed from its record or refused, never adopted.
pub fn has_record(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().is_some_and(|a| {
        [ANN_SERVER, ANN_SHARE, ANN_DIRECTORY, ANN_ON_DELETE]
            .iter()
            .any(|k| a.contains_key(*k))
    })
}

/// Whether our finalizer is on the object.
pub fn has_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Where a volume's data lives, read back from the PV's own annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub server: String,
    pub share: String,
    pub directory: RelPath,
    pub on_delete: OnDelete,
    pub port: Option<u16>,
    pub mount_port: Option<u16>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("annotation {0} is missing, so the directory to reclaim is unknown")]
    Missing(&'static str),
    #[error("annotation {key} has an invalid value {value:?}")]
    Invalid { key: &'static str, value: String },
    #[error("annotation {ANN_DIRECTORY} is not a safe path: {0}")]
    Path(PathError),
    #[error(
        "spec.nfs.path {actual:?} does not match the recorded share and directory {recorded:?}"
    )]
    Mismatch { actual: String, recorded: String },
}

impl Recorded {
    pub fn from_pv(pv: &PersistentVolume) -> Result<Self, RecordError> {
        let empty = BTreeMap::new();
        let ann = pv.metadata.annotations.as_ref().unwrap_or(&empty);
        let get = |k: &'static str| {
            ann.get(k)
                .map(String::as_str)
                .ok_or(RecordError::Missing(k))
        };
        let invalid = |key: &'static str, value: &str| RecordError::Invalid {
            key,
            value: value.to_string(),
        };
        let server = get(ANN_SERVER)?.to_string();
        let raw_share = get(ANN_SHARE)?;
        let share = path::normalize_share(raw_share).map_err(|_| invalid(ANN_SHARE, raw_share))?;
        let directory = RelPath::parse(get(ANN_DIRECTORY)?).map_err(RecordError::Path)?;
        let raw_on_delete = get(ANN_ON_DELETE)?;
        let on_delete = raw_on_delete
            .parse()
            .map_err(|_| invalid(ANN_ON_DELETE, raw_on_delete))?;
        let port_of = |k: &'static str| -> Result<Option<u16>, RecordError> {
            ann.get(k)
                .map(|v| v.parse::<u16>().map_err(|_| invalid(k, v)))
                .transpose()
        };
        let recorded = Self {
            server,
            share,
            directory,
            on_delete,
            port: port_of(ANN_PORT)?,
            mount_port: port_of(ANN_MOUNT_PORT)?,
        };
        // An edited PV whose spec points elsewhere than its annotations is ambiguous:
        // deleting either place could destroy data someone still uses.
        let actual = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .map(|n| n.path.clone())
            .unwrap_or_default();
        let expected = recorded.full_path();
        if path::normalize_share(&actual).ok().as_deref() != Some(expected.as_str()) {
            return Err(RecordError::Mismatch {
                actual,
                recorded: expected,
            });
        }
        Ok(recorded)
    }

    /// `spec.nfs.path` of the volume: the share joined with the directory.
    pub fn full_path(&self) -> String {
        join_share(&self.share, &self.directory)
    }

    /// The share to reach, as recorded: not the class's present parameters.
    pub fn target(&self) -> Target {
        Target {
            server: self.server.clone(),
            share: self.share.clone(),
            port: self.port,
            mount_port: self.mount_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{PROV, claim, class, defaults, with_annotation};
    use crate::plan::plan_volume;

    #[test]
    fn what_is_written_reads_back() {
        let plan = plan_volume(
            &claim(),
            &class(&[
                ("port", "2049"),
                ("mountPort", "20048"),
                ("onDelete", "delete"),
            ]),
            &defaults(),
            PROV,
        )
        .unwrap();
        let rec = Recorded::from_pv(&plan.pv).unwrap();
        assert_eq!(rec.target(), plan.target);
        assert_eq!(rec.directory, plan.directory);
        assert_eq!(rec.on_delete, OnDelete::Delete);
        assert_eq!(rec.full_path(), plan.full_path());
        assert_eq!(provisioned_by(&plan.pv.metadata), Some(PROV));
        assert_eq!(
            recorded_on_delete(&plan.pv.metadata),
            Some(OnDelete::Delete)
        );
        assert!(has_finalizer(&plan.pv.metadata));
    }

    #[test]
    fn recorded_refuses_ambiguity() {
        let plan = plan_volume(&claim(), &class(&[]), &defaults(), PROV).unwrap();
        let mut edited = plan.pv.clone();
        edited.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/srv/k8s".into();
        assert!(matches!(
            Recorded::from_pv(&edited),
            Err(RecordError::Mismatch { .. })
        ));
        let tampered = with_annotation(plan.pv.clone(), ANN_DIRECTORY, "../x");
        assert!(matches!(
            Recorded::from_pv(&tampered),
            Err(RecordError::Path(_))
        ));
        let mut missing = plan.pv.clone();
        missing
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_ON_DELETE);
        assert_eq!(
            Recorded::from_pv(&missing),
            Err(RecordError::Missing(ANN_ON_DELETE))
        );
    }
}

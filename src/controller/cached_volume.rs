//! The PersistentVolume as the cache keeps it: only what the controllers read.
//!
//! k8s-openapi's `PersistentVolumeSpec` holds every in-tree volume source inline, so
//! each cached PV costs several KiB even when all of them are empty, and the cache
//! holds every PV of the cluster, not only ours. This type keeps the metadata, the
//! three spec fields reclaim reads and the status; a reconcile turns it back into a
//! `PersistentVolume` with [`CachedVolume::to_volume`].
//!
//! Metadata is read without `managedFields` (skipped while parsing, never built: they
//! are most of a listed PV's size), and [`CachedVolume::strip_foreign`] cuts the PVs of
//! other provisioners, usually nearly all of a big cluster's, to what the directory
//! checks read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeSpec,
    PersistentVolumeStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};

use crate::plan;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedVolume {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<CachedVolumeSpec>,
    #[serde(default)]
    pub status: Option<PersistentVolumeStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedVolumeSpec {
    #[serde(default)]
    pub claim_ref: Option<ObjectReference>,
    #[serde(default)]
    pub nfs: Option<NFSVolumeSource>,
    #[serde(default)]
    pub persistent_volume_reclaim_policy: Option<String>,
    /// Read by the usage scan: the size a volume warns past, and its class's percent.
    #[serde(default)]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    #[serde(default)]
    pub storage_class_name: Option<String>,
}

/// The metadata fields anything here reads. Unknown fields, `managedFields` among them,
/// are skipped by the parser without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    finalizers: Option<Vec<String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        labels: m.labels,
        annotations: m.annotations,
        finalizers: m.finalizers,
        owner_references: m.owner_references,
        ..Default::default()
    })
}

impl CachedVolume {
    /// Whether `provisioner` made this volume: only those are reclaimed.
    pub fn provisioned_by(&self, provisioner: &str) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(plan::ANN_PROVISIONED_BY))
            .is_some_and(|p| p == provisioner)
    }

    /// Cuts a volume another provisioner made to what the directory checks read (name,
    /// deletion, NFS path, the claim's namespace, reclaim policy, phase): reclaim skips it
    /// for its missing provisioned-by annotation, as it would have with the annotation.
    /// An update that makes it ours arrives whole and is kept whole.
    pub fn strip_foreign(&mut self, provisioner: &str) {
        if self.provisioned_by(provisioner) {
            return;
        }
        let meta = &mut self.metadata;
        meta.annotations = None;
        meta.labels = None;
        meta.finalizers = None;
        meta.owner_references = None;
        meta.creation_timestamp = None;
        if let Some(spec) = self.spec.as_mut() {
            spec.capacity = None;
            spec.storage_class_name = None;
            spec.claim_ref = spec.claim_ref.take().map(|r| ObjectReference {
                namespace: r.namespace,
                ..Default::default()
            });
        }
        self.status = self.status.take().map(|s| PersistentVolumeStatus {
            phase: s.phase,
            ..Default::default()
        });
    }

    pub fn to_volume(&self) -> PersistentVolume {
        PersistentVolume {
            metadata: self.metadata.clone(),
            spec: self.spec.as_ref().map(|s| PersistentVolumeSpec {
                claim_ref: s.claim_ref.clone(),
                nfs: s.nfs.clone(),
                persistent_volume_reclaim_policy: s.persistent_volume_reclaim_policy.clone(),
                capacity: s.capacity.clone(),
                storage_class_name: s.storage_class_name.clone(),
                ..Default::default()
            }),
            status: self.status.clone(),
        }
    }

    pub fn nfs_path(&self) -> Option<&str> {
        Some(self.spec.as_ref()?.nfs.as_ref()?.path.as_str())
    }
}

impl k8s_openapi::Resource for CachedVolume {
    const API_VERSION: &'static str = <PersistentVolume as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <PersistentVolume as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <PersistentVolume as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <PersistentVolume as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <PersistentVolume as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for CachedVolume {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_reclaim_reads_from_the_api_form() {
        let json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": "pvc-1",
                "uid": "u-1",
                "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"],
                "annotations": {"pv.kubernetes.io/provisioned-by": "p"}
            },
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "nfs": {"server": "10.0.0.1", "path": "/srv/a/dir"},
                "claimRef": {"namespace": "ns", "name": "c", "uid": "cu"},
                "persistentVolumeReclaimPolicy": "Delete",
                "mountOptions": ["nfsvers=3"]
            },
            "status": {"phase": "Released"}
        });
        let cached: CachedVolume = serde_json::from_value(json.clone()).unwrap();
        let full: PersistentVolume = serde_json::from_value(json).unwrap();
        let back = cached.to_volume();
        assert_eq!(back.metadata, full.metadata);
        assert_eq!(back.status, full.status);
        let (b, f) = (back.spec.unwrap(), full.spec.unwrap());
        assert_eq!(b.claim_ref, f.claim_ref);
        assert_eq!(b.nfs, f.nfs);
        assert_eq!(
            b.persistent_volume_reclaim_policy,
            f.persistent_volume_reclaim_policy
        );
        assert_eq!(cached.nfs_path(), Some("/srv/a/dir"));
        // What the slim form is for.
        assert!(std::mem::size_of::<CachedVolume>() * 4 < std::mem::size_of::<PersistentVolume>());
    }

    #[test]
    fn managed_fields_are_not_kept_and_foreign_volumes_keep_what_directory_checks_read() {
        let json = |by: &str| {
            serde_json::json!({
                "metadata": {
                    "name": "pv-1", "uid": "u", "resourceVersion": "7",
                    "labels": {"team": "a"},
                    "annotations": {"pv.kubernetes.io/provisioned-by": by},
                    "finalizers": ["kubernetes.io/pv-protection"],
                    "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]
                },
                "spec": {
                    "nfs": {"server": "s", "path": "/srv/x"},
                    "claimRef": {"namespace": "ns", "name": "c", "uid": "cu"},
                    "persistentVolumeReclaimPolicy": "Delete"
                },
                "status": {"phase": "Released", "message": "m"}
            })
        };
        let mut foreign: CachedVolume = serde_json::from_value(json("other")).unwrap();
        assert!(foreign.metadata.managed_fields.is_none());
        assert_eq!(foreign.metadata.resource_version.as_deref(), Some("7"));
        foreign.strip_foreign("ours");
        assert!(foreign.metadata.annotations.is_none() && foreign.metadata.labels.is_none());
        assert!(foreign.metadata.finalizers.is_none());
        assert_eq!(foreign.metadata.name.as_deref(), Some("pv-1"));
        assert_eq!(foreign.nfs_path(), Some("/srv/x"));
        let spec = foreign.spec.as_ref().unwrap();
        let cref = spec.claim_ref.as_ref().unwrap();
        assert_eq!(cref.namespace.as_deref(), Some("ns"));
        assert!(cref.name.is_none() && cref.uid.is_none());
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        let status = foreign.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Released"));
        assert!(status.message.is_none());
        assert!(crate::controller::directories::releasing(&foreign));

        // Ours stays whole: reclaim reads its annotations, finalizers and claim.
        let mut ours: CachedVolume = serde_json::from_value(json("ours")).unwrap();
        ours.strip_foreign("ours");
        let whole: CachedVolume = serde_json::from_value(json("ours")).unwrap();
        assert_eq!(ours.to_volume(), whole.to_volume());
        assert!(ours.metadata.finalizers.is_some());
    }

    #[test]
    fn a_volume_without_spec_or_status_is_accepted() {
        let cached: CachedVolume =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert!(cached.to_volume().spec.is_none());
        assert_eq!(cached.nfs_path(), None);
    }
}

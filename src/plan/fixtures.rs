//! Test fixtures of the plan's table tests: a class, a claim waiting for a volume, the
//! provisioner's defaults, and a PV of ours in a given phase.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeStatus, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::ANN_STORAGE_PROVISIONER;
use super::volume::plan_volume;
use crate::params::Defaults;

pub const PROV: &str = "nfs3-provisioner.io/nfs";

pub fn class(params: &[(&str, &str)]) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some("nfs".into()),
            ..Default::default()
        },
        provisioner: PROV.into(),
        parameters: Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        mount_options: Some(vec!["nfsvers=3".into(), "hard".into()]),
        reclaim_policy: None,
        ..Default::default()
    }
}

pub fn claim() -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            namespace: Some("team-a".into()),
            uid: Some("0b5e".into()),
            resource_version: Some("7".into()),
            annotations: Some(BTreeMap::from([(
                ANN_STORAGE_PROVISIONER.to_string(),
                PROV.to_string(),
            )])),
            labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some("nfs".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity("1Gi".into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

pub fn defaults() -> Defaults {
    Defaults {
        server: Some("10.0.0.5".into()),
        share: Some("/srv/k8s".into()),
    }
}

pub fn pv(phase: &str, policy: &str, deleting: bool, finalizer: bool) -> PersistentVolume {
    let mut pv = plan_volume(&claim(), &class(&[]), &defaults(), PROV)
        .unwrap()
        .pv;
    pv.status = Some(PersistentVolumeStatus {
        phase: Some(phase.into()),
        ..Default::default()
    });
    pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some(policy.into());
    if deleting {
        pv.metadata.deletion_timestamp = Some(Time(Default::default()));
    }
    if !finalizer {
        pv.metadata.finalizers = None;
    }
    pv
}

/// `pv` with annotation `key` set to `value`: a PV edited by hand.
pub fn with_annotation(mut pv: PersistentVolume, key: &str, value: &str) -> PersistentVolume {
    pv.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    pv
}

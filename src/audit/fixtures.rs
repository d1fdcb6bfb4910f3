//! Fixtures of the audit's table tests: a target share, PVs of ours and of others,
//! stats, snapshots and a policy.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeSpec,
    PersistentVolumeStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ArchiveAction, Entry, Policy, ShareReport, Snapshot};
use crate::backend::{Kind, Stat, Target};
use crate::plan::{ANN_DIRECTORY, ANN_ON_DELETE, ANN_PROVISIONED_BY, ANN_SERVER, ANN_SHARE};

pub(crate) const PROV: &str = "nfs3-provisioner.io/nfs";
pub(crate) const NOW: i64 = 1_000_000_000;
pub(crate) const DAY: i64 = 86400;

pub(crate) fn target() -> Target {
    Target {
        server: "10.0.0.5".into(),
        share: "/srv/k8s".into(),
        port: None,
        mount_port: None,
    }
}

/// A PV of ours on the test share, bound to `ns/claim`.
pub(crate) fn ours(name: &str, dir: &str, phase: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(BTreeMap::from([
                (ANN_PROVISIONED_BY.into(), PROV.into()),
                (ANN_SERVER.into(), "10.0.0.5".into()),
                (ANN_SHARE.into(), "/srv/k8s".into()),
                (ANN_DIRECTORY.into(), dir.into()),
                (ANN_ON_DELETE.into(), "archive".into()),
            ])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            nfs: Some(NFSVolumeSource {
                server: "10.0.0.5".into(),
                path: format!("/srv/k8s/{dir}"),
                read_only: None,
            }),
            claim_ref: Some(ObjectReference {
                namespace: Some("ns".into()),
                name: Some("claim".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

/// A PV of someone else's (a static PV, say) at an NFS path.
pub(crate) fn foreign(name: &str, server: &str, path: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            nfs: Some(NFSVolumeSource {
                server: server.into(),
                path: path.into(),
                read_only: None,
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub(crate) fn stat(kind: Kind, changed: i64) -> Entry {
    Entry::Stat(Stat {
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        changed,
        mtime: (0, 0),
    })
}
pub(crate) fn dir(age_days: i64) -> Entry {
    stat(Kind::Dir, NOW - age_days * DAY)
}

pub(crate) fn snapshot(dirs: &[(&str, &[(&str, Entry)])]) -> Snapshot {
    Snapshot {
        dirs: dirs
            .iter()
            .map(|(d, entries)| {
                let entries = entries
                    .iter()
                    .map(|(n, e)| (n.to_string(), e.clone()))
                    .collect();
                (d.to_string(), entries)
            })
            .collect(),
    }
}

pub(crate) fn policy(prune_days: Option<u64>) -> Policy {
    Policy {
        provisioner: PROV.into(),
        prune_older_than: prune_days.map(|d| Duration::from_secs(d * 86400)),
        apply: false,
        now: NOW,
        adopt: None,
    }
}

pub(crate) fn paths<T>(items: &[T], f: impl Fn(&T) -> &str) -> Vec<&str> {
    items.iter().map(f).collect()
}

pub(crate) fn actions(r: &ShareReport) -> Vec<(&str, ArchiveAction)> {
    r.archives
        .iter()
        .map(|a| (a.path.as_str(), a.action.clone()))
        .collect()
}

//! `audit --usage`: what each of our volumes on a share holds, counted the way the
//! usage scan of `run` counts it (`Share::usage`), against the size its PV was given.
//! Volumes are counted one after another, without a pace: the operator asked for it now.

use k8s_openapi::api::core::v1::PersistentVolume;
use serde::Serialize;

use crate::backend::{Pace, Share, Target};
use crate::plan::Recorded;
use crate::plan::record::provisioned_by;
use crate::plan::usage::parse_quantity;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VolumeUsage {
    pub pv: String,
    /// `namespace/name` of the claim the PV is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    pub directory: String,
    /// The PV's capacity, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    pub used_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    /// Directories that could not be read, whose contents are not counted.
    pub unreadable_dirs: u64,
    /// Why it could not be counted (its directory is gone, or the server refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VolumeUsage {
    /// Used bytes as a whole percentage of capacity, when there is one.
    pub fn percent(&self) -> Option<u64> {
        let cap = self.capacity_bytes.filter(|c| *c > 0)?;
        u64::try_from(u128::from(self.used_bytes) * 100 / u128::from(cap)).ok()
    }
}

/// Counts our volumes whose record names `target`, in PV name order.
pub(super) async fn usage_of<S: Share>(
    share: &S,
    target: &Target,
    pvs: &[PersistentVolume],
    provisioner: &str,
) -> Vec<VolumeUsage> {
    let mut ours: Vec<(&PersistentVolume, Recorded)> = pvs
        .iter()
        .filter(|pv| provisioned_by(&pv.metadata) == Some(provisioner))
        .filter_map(|pv| Recorded::from_pv(pv).ok().map(|r| (pv, r)))
        .filter(|(_, r)| r.server == target.server && r.share == target.share)
        .collect();
    ours.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
    let pace = Pace::unlimited();
    let mut rows = Vec::new();
    for (pv, r) in ours {
        let spec = pv.spec.as_ref();
        let claim = spec.and_then(|s| s.claim_ref.as_ref()).map(|c| {
            format!(
                "{}/{}",
                c.namespace.as_deref().unwrap_or(""),
                c.name.as_deref().unwrap_or("")
            )
        });
        let capacity_bytes = spec
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .and_then(|q| parse_quantity(&q.0));
        let mut row = VolumeUsage {
            pv: pv.metadata.name.clone().unwrap_or_default(),
            claim,
            directory: r.directory.to_string(),
            capacity_bytes,
            used_bytes: 0,
            files: 0,
            dirs: 0,
            unreadable_dirs: 0,
            error: None,
        };
        match share.usage(&r.directory, &pace).await {
            Ok(Some(u)) => {
                row.used_bytes = u.bytes;
                row.files = u.files;
                row.dirs = u.dirs;
                row.unreadable_dirs = u.unreadable;
            }
            Ok(None) => row.error = Some("directory not found".into()),
            Err(e) => row.error = Some(e.to_string()),
        }
        rows.push(row);
    }
    rows
}

//! The `audit` command: compare the PVs this provisioner made with what is on their shares.
//!
//! It lists the PVs provisioned by this provisioner name, groups them by the server and
//! share their annotations record (plus any `--server`/`--share` pair given, and the
//! adopted share with `--adopt-provisioned-by`, whose PVs count as ours), walks each
//! share and reports:
//!
//! - **missing**: PVs of ours whose directory is not there (or is not a directory);
//! - **orphans**: entries no PV points at that are neither archives nor parents of a PV
//!   directory: top-level entries, and the other children of PV directories' parents;
//! - **archives**: `archived-*` directories with their age, from their last change (a rename counts),
//!   the namespace and claim their record names (and the name a restore takes), and with
//!   `--prune-archives-older-than` the ones old enough to prune. Pruning is a dry run
//!   unless `--apply` is given.
//!
//! What the walk looks at: the share root, the parents of PV directories (so nested
//! templates like `ns/name` are followed), and one level into each orphan directory, so a
//! parent that holds nothing but archives (`ns/archived-…` once every claim of `ns` is gone)
//! counts as a home of archives rather than an orphan. It never lists the inside of a
//! volume except to reach a volume nested in it, and never reports what it finds there.
//!
//! Every PV in the cluster, ours or not and in any phase, protects what it points at: a
//! directory a PV points at is never an orphan nor an archive, and an archive is never
//! pruned while a PV points at it, inside it or above it, or while a PV whose name the
//! archive carries (`archived-…-pvc-<uid>`) still exists. As in reclaim, PV paths are
//! compared without the server, since one export can be reached under several names.
//!
//! The decisions ([`compare`]) are pure and work on a [`Snapshot`] of the share; the I/O
//! is in [`audit_share`] (scan, compare, then prune with `apply`) and [`audit`] (the
//!
//! With `--usage`, each of our volumes is also counted ([`usage`]: bytes, files,
//! directories, against the PV's capacity).
//!
//! Files: [`compare`] (the pure decisions), [`scan`] (the walk), [`prune`] (removal
//! with `--apply`), [`report`] (output and exit code), [`usage`]; this one holds the
//! command.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Client;
use kube::api::{Api, ListParams};
use thiserror::Error;

use crate::backend::{BackendConfig, BackendError, Share, Shares, Target};
use crate::config::AuditArgs;
use crate::error::BoxError;
use crate::path::{PathError, RelPath, normalize_share};
use crate::plan::Recorded;
use crate::plan::adopt::{AdoptConfigError, Adoption};
use crate::plan::record::provisioned_by;

mod compare;
#[cfg(test)]
mod fixtures;
mod prune;
mod records;
mod report;
mod scan;
mod usage;

use compare::Pointers;
pub use compare::{Entry, Snapshot, compare};
pub use report::{Archive, ArchiveAction, Missing, Orphan, Report, ShareReport, Unreadable};
pub use usage::VolumeUsage;

/// Exit code when the audit itself failed (and clap's for a bad command line).
pub const EXIT_ERROR: u8 = 2;
/// Exit code when the audit found missing directories or orphans.
pub const EXIT_FINDINGS: u8 = 1;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot list PersistentVolumes: {0}")]
    ListVolumes(#[source] kube::Error),
    #[error("--server and --share go in pairs; got {servers} --server and {shares} --share")]
    Unpaired { servers: usize, shares: usize },
    #[error("--share {share:?}: {source}")]
    Share { share: String, source: PathError },
    #[error("path {path:?} on the share: {source}")]
    Path { path: String, source: PathError },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the report as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error(transparent)]
    Adopt(AdoptConfigError),
}

/// Settings of one audit.
#[derive(Clone, Debug)]
pub struct Policy {
    pub provisioner: String,
    /// Archives older than this are pruned (with `apply`) or listed as to prune.
    pub prune_older_than: Option<Duration>,
    /// Actually remove what would be pruned.
    pub apply: bool,
    /// Seconds since the epoch that ages are measured from.
    pub now: i64,
    /// Another provisioner's PVs audited as ours on its share (`--adopt-provisioned-by`).
    pub adopt: Option<Adoption>,
}

/// Audits one share: scans it (only under `under` when given), compares it with `pvs`
/// (all the cluster's PVs) and, with `policy.apply`, prunes the archives old enough.
/// Each archive is looked up again just before its removal, and left alone if it is no
/// longer an old directory.
pub async fn audit_share<S: Share>(
    share: &S,
    target: &Target,
    pvs: &[PersistentVolume],
    under: Option<&RelPath>,
    policy: &Policy,
) -> Result<ShareReport, AuditError> {
    let ptrs = Pointers::new(&target.share, pvs);
    let root: Vec<String> = under.map(|u| u.segments().to_vec()).unwrap_or_default();
    let snapshot = scan::scan(share, &ptrs, &root).await?;
    let mut report = compare(target, pvs, under, &snapshot, policy);
    records::read_owners(share, &mut report).await;
    if !policy.apply {
        return Ok(report);
    }
    prune::prune(share, &mut report, policy).await?;
    Ok(report)
}

/// The shares to audit: those our PVs record, and the `explicit` ones. PVs of ours whose
/// annotations cannot be read come back apart.
pub fn targets(
    pvs: &[PersistentVolume],
    provisioner: &str,
    explicit: &[Target],
) -> (Vec<Target>, Vec<Unreadable>) {
    let mut by_share: BTreeMap<(String, String), Target> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for pv in pvs
        .iter()
        .filter(|pv| provisioned_by(&pv.metadata) == Some(provisioner))
    {
        match Recorded::from_pv(pv) {
            Ok(r) => {
                let t = by_share
                    .entry((r.server.clone(), r.share.clone()))
                    .or_insert_with(|| Target {
                        server: r.server.clone(),
                        share: r.share.clone(),
                        port: None,
                        mount_port: None,
                    });
                t.port = t.port.or(r.port);
                t.mount_port = t.mount_port.or(r.mount_port);
            }
            Err(e) => unreadable.push(Unreadable {
                pv: pv.metadata.name.clone().unwrap_or_default(),
                error: e.to_string(),
            }),
        }
    }
    for t in explicit {
        by_share
            .entry((t.server.clone(), t.share.clone()))
            .or_insert_with(|| t.clone());
    }
    unreadable.sort_by(|a, b| a.pv.cmp(&b.pv));
    (by_share.into_values().collect(), unreadable)
}

fn explicit_targets(args: &AuditArgs) -> Result<Vec<Target>, AuditError> {
    if args.servers.len() != args.shares.len() {
        return Err(AuditError::Unpaired {
            servers: args.servers.len(),
            shares: args.shares.len(),
        });
    }
    args.servers
        .iter()
        .zip(&args.shares)
        .map(|(server, share)| {
            Ok(Target {
                server: server.clone(),
                share: normalize_share(share).map_err(|source| AuditError::Share {
                    share: share.clone(),
                    source,
                })?,
                port: None,
                mount_port: None,
            })
        })
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Adopted PVs whose directory cannot be placed on the adopted share (another server, a
/// path outside it): reported apart, like our PVs whose annotations cannot be read.
fn unplaced(pvs: &[PersistentVolume], adoption: &Adoption) -> Vec<Unreadable> {
    pvs.iter()
        .filter(|pv| adoption.adopts(&pv.metadata))
        .filter_map(|pv| {
            adoption.locate(pv).err().map(|e| Unreadable {
                pv: pv.metadata.name.clone().unwrap_or_default(),
                error: e.to_string(),
            })
        })
        .collect()
}

async fn run_audit(args: &AuditArgs) -> Result<Report, AuditError> {
    let mut explicit = explicit_targets(args)?;
    let adoption = args.adopt.adoption().map_err(AuditError::Adopt)?;
    explicit.extend(adoption.as_ref().map(Adoption::target));
    let client = Client::try_default().await.map_err(AuditError::Client)?;
    let pvs = Api::<PersistentVolume>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(AuditError::ListVolumes)?
        .items;
    let policy = Policy {
        provisioner: args.provisioner_name.clone(),
        prune_older_than: args.prune_archives_older_than,
        apply: args.apply,
        now: now(),
        adopt: adoption,
    };
    let (targets, mut unreadable) = targets(&pvs, &policy.provisioner, &explicit);
    if let Some(a) = &policy.adopt {
        // Under a name both provisioners use, the old PVs have no record of ours: they
        // are adopted, not unreadable.
        unreadable.retain(|u| {
            !pvs.iter().any(|pv| {
                pv.metadata.name.as_deref() == Some(u.pv.as_str()) && a.adopts(&pv.metadata)
            })
        });
        unreadable.extend(unplaced(&pvs, a));
        unreadable.sort_by(|a, b| a.pv.cmp(&b.pv));
    }
    let shares = Shares::new(BackendConfig::Nfs3(args.nfs.options()));
    let mut reports = Vec::new();
    for target in &targets {
        let result = match shares.get(target) {
            Ok(share) => match audit_share(&share, target, &pvs, None, &policy).await {
                Ok(mut report) if args.usage => {
                    report.usage = usage::usage_of(&share, target, &pvs, &policy.provisioner).await;
                    Ok(report)
                }
                other => other,
            },
            Err(e) => Err(e.into()),
        };
        reports.push(result.unwrap_or_else(|e| ShareReport::failed(target, None, e.to_string())));
    }
    Ok(Report {
        provisioner: policy.provisioner,
        prune_older_than_seconds: policy.prune_older_than.map(|d| d.as_secs()),
        apply: policy.apply,
        shares: reports,
        unreadable,
    })
}

/// The `audit` command. Its own errors end in exit code 2, like a bad command line.
pub async fn audit(args: AuditArgs) -> Result<ExitCode, BoxError> {
    let rendered = match run_audit(&args).await {
        Ok(report) => report
            .render(args.output)
            .map(|text| (text, report.exit_code())),
        Err(e) => Err(e),
    };
    match rendered {
        Ok((text, code)) => {
            print!("{text}");
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            tracing::error!(error = %e, "audit failed");
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::fixtures::*;
    use crate::plan::ANN_DIRECTORY;

    #[test]
    fn shares_come_from_pvs_and_flags() {
        let mut broken = ours("pvc-9", "x", "Bound");
        broken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_DIRECTORY);
        let mut ported = ours("pvc-2", "y", "Bound");
        ported
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(crate::plan::ANN_PORT.into(), "2049".into());
        let pvs = [
            ours("pvc-1", "x", "Bound"),
            ported,
            broken,
            foreign("static", "other", "/x"),
        ];
        let explicit = [
            Target {
                server: "10.0.0.5".into(),
                share: "/srv/k8s".into(),
                port: None,
                mount_port: None,
            },
            Target {
                server: "10.0.0.6".into(),
                share: "/empty".into(),
                port: None,
                mount_port: None,
            },
        ];
        let (targets, unreadable) = targets(&pvs, PROV, &explicit);
        let names: Vec<String> = targets.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["10.0.0.5:/srv/k8s", "10.0.0.6:/empty"]);
        assert_eq!(targets[0].port, Some(2049));
        assert_eq!(paths(&unreadable, |u| &u.pv), ["pvc-9"]);
    }
}

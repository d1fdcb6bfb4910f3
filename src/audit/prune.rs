//! Pruning old archives, with `--apply`: each one the comparison marked is looked up
//! again just before its removal and left alone if it is no longer an old directory,
//! or if a restore or archive retention holds it; its record goes with it.

use super::compare::kind_name;
use super::{ArchiveAction, AuditError, Policy, ShareReport};
use crate::backend::{Kind, Removed, Share};
use crate::path::RelPath;

/// Removes the archives `report` marks [`ArchiveAction::WouldPrune`], recording for each
/// what became of it.
pub(super) async fn prune<S: Share>(
    share: &S,
    report: &mut ShareReport,
    policy: &Policy,
) -> Result<(), AuditError> {
    let limit = policy.prune_older_than.map(|d| d.as_secs());
    for archive in &mut report.archives {
        if archive.action != ArchiveAction::WouldPrune {
            continue;
        }
        let path = RelPath::parse(&archive.path).map_err(|source| AuditError::Path {
            path: archive.path.clone(),
            source,
        })?;
        archive.action = match share.stat(&path).await {
            Err(e) => ArchiveAction::PruneFailed {
                error: e.to_string(),
            },
            Ok(None) => ArchiveAction::Changed {
                reason: "gone since the scan".into(),
            },
            Ok(Some(st)) if st.kind != Kind::Dir => ArchiveAction::Changed {
                reason: format!("now a {}", kind_name(st.kind)),
            },
            Ok(Some(st))
                if !limit.is_some_and(|l| {
                    u64::try_from(policy.now.saturating_sub(st.changed)).unwrap_or(0) > l
                }) =>
            {
                ArchiveAction::Changed {
                    reason: "modified since the scan".into(),
                }
            }
            Ok(Some(_)) => match super::records::hold(share, &archive.name, &path).await {
                Err(e) => ArchiveAction::PruneFailed {
                    error: e.to_string(),
                },
                Ok(false) => ArchiveAction::Changed {
                    reason: "held by a restore or by archive retention".into(),
                },
                Ok(true) => {
                    let action = match share.remove_tree(&path).await {
                        Ok(Removed::Removed { entries }) => ArchiveAction::Pruned { entries },
                        Ok(Removed::AlreadyGone) => ArchiveAction::Pruned { entries: 0 },
                        Err(e) => ArchiveAction::PruneFailed {
                            error: e.to_string(),
                        },
                    };
                    let removed = matches!(action, ArchiveAction::Pruned { .. });
                    match super::records::release(share, &archive.name, removed).await {
                        Ok(()) => action,
                        Err(e) if removed => ArchiveAction::PruneFailed {
                            error: format!("pruned, but its record stays: {e}"),
                        },
                        Err(_) => action,
                    }
                }
            },
        };
    }
    Ok(())
}

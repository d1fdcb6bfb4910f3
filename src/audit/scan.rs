//! The walk of a share: lists the directories [`super::compare`] reads, looks entries
//! up a few at a time, and never lists the inside of a volume except to reach one
//! nested in it.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::AuditError;
use super::compare::{
    Class, Entry, Pointers, Snapshot, child_of, class_of, descend, is_archive_name, key, peeks,
};
use crate::backend::{BackendError, NfsStatus, Share};
use crate::path::RelPath;

/// Lookups in flight at once while scanning one directory.
const LOOKUPS_IN_FLIGHT: usize = 8;

fn rel(p: &[String]) -> Result<RelPath, AuditError> {
    RelPath::parse(&key(p)).map_err(|source| AuditError::Path {
        path: key(p),
        source,
    })
}

async fn list<S: Share>(share: &S, dir: &[String]) -> Result<Vec<String>, AuditError> {
    Ok(if dir.is_empty() {
        share.list(None).await?
    } else {
        share.list(Some(&rel(dir)?)).await?
    })
}

async fn lookup_all<S: Share>(
    share: &S,
    paths: &[Vec<String>],
) -> Result<Vec<Entry>, BackendError> {
    stream::iter(paths)
        .map(|p| async move {
            // A name that cannot be a path (a control character, too deep) is reported,
            // never looked up.
            let Ok(path) = RelPath::parse(&key(p)) else {
                return Ok(Entry::Unknown);
            };
            Ok(match share.stat(&path).await? {
                Some(st) => Entry::Stat(st),
                None => Entry::Gone,
            })
        })
        .buffered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Lists `dir` for the snapshot; with `archives_only`, looks its entries up only when
/// they are all archives (otherwise their names alone settle it).
async fn scan_dir<S: Share>(
    share: &S,
    ptrs: &Pointers,
    dir: &[String],
    owned: bool,
    archives_only: bool,
) -> Result<Vec<(String, Class, Entry)>, AuditError> {
    let names = list(share, dir).await?;
    if archives_only && !names.iter().all(|n| is_archive_name(n)) {
        return Ok(names
            .into_iter()
            .map(|n| (n, Class::Other, Entry::Unknown))
            .collect());
    }
    let wanted: Vec<(String, Class)> = names
        .into_iter()
        .map(|n| {
            let class = class_of(ptrs, &child_of(dir, &n), owned);
            (n, class)
        })
        .filter(|(_, c)| *c != Class::Ignored)
        .collect();
    let paths: Vec<Vec<String>> = wanted.iter().map(|(n, _)| child_of(dir, n)).collect();
    let entries = lookup_all(share, &paths).await?;
    Ok(wanted
        .into_iter()
        .zip(entries)
        .map(|((n, c), e)| (n, c, e))
        .collect())
}

/// The server no longer knows the directory it was asked to list.
fn vanished(e: &AuditError) -> bool {
    matches!(
        e,
        AuditError::Backend(BackendError::Status {
            status: NfsStatus::NFS3ERR_STALE | NfsStatus::NFS3ERR_NOENT,
            ..
        })
    )
}

/// Walks the share from `root` the way [`compare`] reads the result.
pub(super) async fn scan<S: Share>(
    share: &S,
    ptrs: &Pointers,
    root: &[String],
) -> Result<Snapshot, AuditError> {
    let mut snap = Snapshot::default();
    let mut queue = vec![(root.to_vec(), !ptrs.covering(root).is_empty())];
    while let Some((dir, owned)) = queue.pop() {
        let mut entries = BTreeMap::new();
        for (name, class, entry) in scan_dir(share, ptrs, &dir, owned, false).await? {
            let child = child_of(&dir, &name);
            if let Some(inside) = descend(ptrs, &child, class, owned, entry.is_dir()) {
                queue.push((child, inside));
            } else if peeks(class, &name, entry.is_dir()) {
                match scan_dir(share, ptrs, &child, false, true).await {
                    Ok(inner) => {
                        let inner = inner.into_iter().map(|(n, _, e)| (n, e)).collect();
                        snap.dirs.insert(key(&child), inner);
                    }
                    // Removed between its lookup and its listing (a reclaim under way).
                    Err(e) if vanished(&e) => {
                        entries.insert(name, Entry::Gone);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            entries.insert(name, entry);
        }
        snap.dirs.insert(key(&dir), entries);
    }
    Ok(snap)
}

//! Archive retention: classes with `archiveRetention` have their archives removed once
//! the age recorded at archiving passes it. One background task, on the leader only (it
//! runs with the controllers), walking the shares of those classes one archive at a
//! time, pausing `--archive-retention-interval` between passes. An archive without a
//! record is never removed: its age and owner are unknown. Before removing, the task
//! takes the archive with the same exclusive claim a restore takes, so an archive being
//! restored is never removed under it, nor restored while being removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{Context, Error, archives};
use crate::backend::{AnyShare, Share, Target};
use crate::metrics;
use crate::params::ClassParams;
use crate::path::RelPath;
use crate::plan::ARCHIVE_PREFIX;
use crate::plan::archive::{ArchiveClaim, ArchiveRecord, Purpose};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

pub(super) async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(ctx.archive_retention_interval) => {}
        }
        pass(&ctx).await;
        metrics::archive_retention_pass();
    }
}

/// Retention per class name, grouped by the share the classes target.
fn retained_shares(ctx: &Context) -> HashMap<Target, HashMap<String, Duration>> {
    let mut out: HashMap<Target, HashMap<String, Duration>> = HashMap::new();
    for class in ctx.classes.state() {
        if class.provisioner != ctx.provisioner {
            continue;
        }
        let params = class.parameters.clone().unwrap_or_default();
        // A class with bad parameters is reported where claims use it; here it is skipped.
        let Ok(p) = ClassParams::parse(&params, &ctx.defaults) else {
            continue;
        };
        let Some(keep) = p.archive_retention else {
            continue;
        };
        let target = Target {
            server: p.server,
            share: p.share,
            port: p.port,
            mount_port: p.mount_port,
        };
        let name = class.metadata.name.clone().unwrap_or_default();
        out.entry(target).or_default().insert(name, keep);
    }
    out
}

async fn pass(ctx: &Context) {
    let shares = retained_shares(ctx);
    debug!(shares = shares.len(), "archive retention pass");
    for (target, classes) in shares {
        let share = match ctx.shares.get(&target) {
            Ok(s) => s,
            Err(e) => {
                warn!(share = %target, error = %e, "archive retention: share unavailable");
                continue;
            }
        };
        let keys = match archives::record_keys(&share).await {
            Ok(k) => k,
            Err(e) => {
                warn!(share = %target, error = %e, "archive retention: cannot list records");
                continue;
            }
        };
        debug!(share = %target, records = keys.len(), "archive retention: records");
        for key in keys {
            match expire(&share, &target, &classes, &key).await {
                Ok(Some(archive)) => {
                    metrics::archive_expired(true);
                    info!(share = %target, archive, "archive past its retention removed");
                }
                Ok(None) => {}
                Err(e) => {
                    metrics::archive_expired(false);
                    warn!(share = %target, key, error = %e, "archive retention: cannot remove");
                }
            }
        }
    }
}

/// Removes the archive of record `key` if its class's retention has passed: the archive
/// path when it did, `None` when the archive stays.
async fn expire(
    share: &AnyShare,
    target: &Target,
    classes: &HashMap<String, Duration>,
    key: &str,
) -> Result<Option<String>, Error> {
    let record = match archives::read_record(share, key).await? {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            debug!(key, error = %e, "unreadable archive record; left alone");
            return Ok(None);
        }
        None => return Ok(None),
    };
    let Some(keep) = classes.get(&record.class) else {
        debug!(
            key,
            class = record.class,
            "class without archiveRetention; kept"
        );
        return Ok(None);
    };
    let on_this_share = record.server == target.server && record.share == target.share;
    if !on_this_share || !record.expired(*keep, archives::now_secs()) {
        debug!(
            key,
            on_this_share,
            archived_at = record.archived_at,
            "not expired; kept"
        );
        return Ok(None);
    }
    let Some(archive) = archive_of(&record) else {
        return Ok(None);
    };
    match archives::read_claim(share, key).await? {
        // An earlier pass took it and stopped: finish.
        Some(Ok(c)) if c.purpose == Purpose::Expire => {}
        // A restore holds it (or a claim file nobody can read): not ours to remove.
        Some(_) => return Ok(None),
        None => {
            let mine = ArchiveClaim::new(Purpose::Expire, &archive, None, archives::now_secs());
            if !archives::take(share, key, &mine).await? {
                return Ok(None);
            }
        }
    }
    // The volume's directory may not be renamed yet (the record is written first); the
    // archive is then only due to exist, and nothing is removed until it has.
    let directory = RelPath::parse(&record.directory).ok();
    if let Some(dir) = &directory
        && share.stat(dir).await?.is_some()
        && !archives::is_dir(share, &archive).await?
    {
        archives::forget_claim(share, key).await?;
        return Ok(None);
    }
    share.remove_tree(&archive).await?;
    archives::forget(share, key).await?;
    Ok(Some(archive.to_string()))
}

/// The archive a record names, if it is one: a path that parses and an archive's name.
fn archive_of(record: &ArchiveRecord) -> Option<RelPath> {
    RelPath::parse(&record.archive)
        .ok()
        .filter(|a| a.leaf().starts_with(ARCHIVE_PREFIX))
}

//! Counting what a volume holds over NFSv3: READDIRPLUS pages give names, types and
//! sizes in one call, so the walk costs about one call per page of entries plus one
//! per directory.
//!
//! Memory does not grow with the tree: the walk keeps, per level of depth, the
//! directory's handle and the cookie to go on from, never a page or a path, so the
//! 2 000 levels a tenant can build cost a few hundred KiB, and a million entries in
//! one directory cost one page at a time. It goes down only through handles READDIRPLUS
//! returned for entries of type directory (never `.` or `..`, never a symlink), so it
//! cannot leave the volume's directory. A directory it may not read is counted as
//! unreadable and skipped; every call is paced by the share's [`Pace`].

use nfs3_client::nfs3_types::nfs3::{
    self, Nfs3Result, READDIRPLUS3args, fattr3, ftype3, nfs_fh3, nfsstat3,
};

use super::pool::{Session, rpc};
use super::{Nfs3Share, READDIR_DIRCOUNT, READDIR_MAXCOUNT, require_dir, status};
use crate::backend::{BackendError, Pace, Usage};
use crate::path::RelPath;

/// Deeper than any tree a filesystem lets a tenant build in practice; past it (a
/// server looping its exports into themselves) the walk counts the directory as
/// unreadable rather than go on forever. About 100 bytes a level.
const MAX_DEPTH: usize = 100_000;

/// A directory on the way down: where to go on reading it.
struct Frame {
    fh: nfs_fh3,
    cookie: u64,
    verf: nfs3::cookieverf3,
}

impl Frame {
    fn new(fh: nfs_fh3) -> Self {
        Self {
            fh,
            cookie: 0,
            verf: nfs3::cookieverf3::default(),
        }
    }
}

/// Counts one entry's attributes.
fn add(u: &mut Usage, a: &fattr3) {
    u.bytes = u.bytes.saturating_add(a.used);
    u.apparent_bytes = u.apparent_bytes.saturating_add(a.size);
}

/// Statuses that mean "this directory, not the scan": denied to us, or gone since it
/// was listed (removed by its tenant while we walk).
fn skipped(stat: nfsstat3) -> Option<bool> {
    match stat {
        nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM => Some(true),
        nfsstat3::NFS3ERR_NOENT | nfsstat3::NFS3ERR_STALE => Some(false),
        _ => None,
    }
}

impl Nfs3Share {
    pub(super) async fn usage_of(
        &self,
        dir: &RelPath,
        pace: &Pace,
    ) -> Result<Option<Usage>, BackendError> {
        let mut s = self.session().await?;
        let mut u = Usage::default();
        let path = dir.to_string();
        let mut fh = s.root();
        let segments = dir.segments();
        for (i, seg) in segments.iter().enumerate() {
            let here = segments[..=i].join("/");
            pace.call().await;
            u.calls += 1;
            let Some((child, attrs)) = s.lookup(&fh, seg.as_bytes(), &here).await? else {
                return Ok(None);
            };
            require_dir(&attrs, &here)?;
            if i + 1 == segments.len() {
                add(&mut u, &attrs);
            }
            fh = child;
        }
        walk(&mut s, fh, &path, pace, &mut u).await?;
        Ok(Some(u))
    }
}

async fn walk(
    s: &mut Session<'_>,
    top: nfs_fh3,
    path: &str,
    pace: &Pace,
    u: &mut Usage,
) -> Result<(), BackendError> {
    let mut stack = vec![Frame::new(top)];
    while let Some(frame) = stack.last() {
        let start = frame.cookie;
        let args = READDIRPLUS3args {
            dir: frame.fh.clone(),
            cookie: frame.cookie,
            cookieverf: frame.verf,
            dircount: READDIR_DIRCOUNT,
            maxcount: READDIR_MAXCOUNT,
        };
        pace.call().await;
        u.calls += 1;
        let ok = match rpc!(s, "READDIRPLUS", readdirplus, &args)? {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((stat, _)) => match skipped(stat) {
                Some(denied) => {
                    u.unreadable += u64::from(denied);
                    stack.pop();
                    continue;
                }
                // Cookies gone bad (the directory changed between two pages) and
                // the rest: this scan fails, the next one starts afresh.
                None => return Err(status("READDIRPLUS", path, stat)),
            },
        };
        let (verf, eof) = (ok.cookieverf, ok.reply.eof);
        let mut next = start;
        let mut descend = None;
        for e in ok.reply.entries.0 {
            next = e.cookie;
            let name = e.name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let attrs = match e.name_attributes {
                nfs3::Nfs3Option::Some(a) => a,
                nfs3::Nfs3Option::None => {
                    // Some servers leave attributes out: ask for them.
                    pace.call().await;
                    u.calls += 1;
                    match s.lookup(&args.dir, name, path).await {
                        Ok(Some((_, a))) => a,
                        Ok(None) => continue,
                        Err(BackendError::Status { status, .. }) if skipped(status).is_some() => {
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            add(u, &attrs);
            if attrs.type_ != ftype3::NF3DIR {
                u.files += 1;
                continue;
            }
            u.dirs += 1;
            let fh = match e.name_handle {
                nfs3::Nfs3Option::Some(fh) => Some(fh),
                nfs3::Nfs3Option::None => {
                    pace.call().await;
                    u.calls += 1;
                    match s.lookup(&args.dir, name, path).await {
                        Ok(Some((fh, a))) if a.type_ == ftype3::NF3DIR => Some(fh),
                        Ok(_) => None,
                        Err(BackendError::Status { status, .. }) if skipped(status).is_some() => {
                            None
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            if let Some(fh) = fh {
                // Go down now; the rest of this page is read again from this entry's
                // cookie on the way back, so no page is kept per level.
                descend = Some(fh);
                break;
            }
        }
        let Some(frame) = stack.last_mut() else { break };
        match descend {
            Some(fh) => {
                (frame.cookie, frame.verf) = (next, verf);
                if stack.len() >= MAX_DEPTH {
                    u.unreadable += 1;
                } else {
                    stack.push(Frame::new(fh));
                }
            }
            // The end, or a server whose cookie does not move: never spin on it.
            None if eof || next == start => {
                stack.pop();
            }
            None => (frame.cookie, frame.verf) = (next, verf),
        }
    }
    Ok(())
}

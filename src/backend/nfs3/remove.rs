//! Removing a whole tree over NFSv3, whatever a tenant left in it.
//!
//! Depth costs a handle and a name per level (a stack of frames, no recursion, no
//! path copied per level), so thousands of levels of long names stay far below the
//! memory limit. Entries are removed as soon as they are seen: a removal cut short by a
//! crash or a timeout leaves less behind, and the next attempt goes on from there.
//! Every loop either removes something or counts a pass without progress, and gives up
//! after a few of those, so an entry that is listed but never removable cannot make it
//! spin.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use nfs3_client::nfs3_types::nfs3::{
    self, REMOVE3args, RMDIR3args, diropargs3, ftype3, nfs_fh3, nfsstat3,
};

use super::pool::{Session, rpc};
use super::{Entry, MapStatus, Nfs3Share, name, status};
use crate::backend::BackendError;

/// Sessions one removal may use at once, its own included.
const REMOVE_PARALLELISM: usize = 4;
/// Passes over one directory that remove nothing before giving up on it.
const IDLE_PASSES: u32 = 3;

/// Set by the first worker that fails: the others finish the call they are in (so no
/// connection is abandoned with a reply unread) and stop.
#[derive(Default)]
pub(super) struct Stop(AtomicBool);

impl Stop {
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// An error path that does not grow with depth: the volume, then the entry's own name.
fn describe(top: &str, depth: usize, entry: &[u8]) -> String {
    match depth {
        0 => top.to_string(),
        1 => format!("{top}/{}", String::from_utf8_lossy(entry)),
        _ => format!("{top}/.../{}", String::from_utf8_lossy(entry)),
    }
}

impl Nfs3Share {
    /// Removes what `dir` holds in parallel: entries and whole subtrees are handed to
    /// this session and to as many extra ones as the pool has free right now (at most
    /// [`REMOVE_PARALLELISM`] in all). A large volume then does not take all night over
    /// a slow link, and never starves other volumes' work of connections. Anything it
    /// cannot classify is left for the sequential pass that follows.
    pub(super) async fn remove_subtrees<'a>(
        &'a self,
        s: &mut Session<'a>,
        dir: &nfs_fh3,
        path: &str,
    ) -> Result<u64, BackendError> {
        let mut removed = 0u64;
        let mut idle = 0;
        while idle < IDLE_PASSES {
            let page = s
                .read_page(dir, 0, nfs3::cookieverf3::default(), path)
                .await?;
            let work: VecDeque<Work> = page
                .entries
                .into_iter()
                .filter_map(|e| match (e.attrs, e.fh) {
                    (Some(a), Some(fh)) if a.type_ == ftype3::NF3DIR => Some(Work::Dir(e.name, fh)),
                    (Some(a), _) if a.type_ != ftype3::NF3DIR => Some(Work::Entry(e.name)),
                    // Left for the sequential pass, which looks such entries up.
                    _ => None,
                })
                .collect();
            if work.is_empty() {
                return Ok(removed);
            }
            let mut extra = Vec::new();
            while extra.len() + 1 < REMOVE_PARALLELISM.min(work.len()) {
                match self.spare_session().await {
                    Some(x) => extra.push(x),
                    None => break,
                }
            }
            let (queue, stop) = (Mutex::new(work), Stop::default());
            let mut workers = vec![drain(
                SessionRef::Borrowed(&mut *s),
                &queue,
                &stop,
                dir,
                path,
            )];
            workers.extend(
                extra
                    .into_iter()
                    .map(|x| drain(SessionRef::Owned(x), &queue, &stop, dir, path)),
            );
            // Not try_join_all: that would drop the siblings of a failed worker in the
            // middle of their calls. Each stops at its next step once `stop` is set.
            let mut first_err = None;
            let mut batch = 0;
            for r in futures::future::join_all(workers).await {
                match r {
                    Ok(n) => batch += n,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            removed += batch;
            idle = if batch == 0 { idle + 1 } else { 0 };
        }
        Ok(removed)
    }
}

/// One entry of a directory being emptied.
enum Work {
    /// Not a directory (file, symlink, ...): removed by name, never followed.
    Entry(Vec<u8>),
    Dir(Vec<u8>, nfs_fh3),
}

/// Removes entries of `dir` taken from `queue` until it is empty or `stop` is set.
async fn drain(
    mut session: SessionRef<'_, '_>,
    queue: &Mutex<VecDeque<Work>>,
    stop: &Stop,
    dir: &nfs_fh3,
    path: &str,
) -> Result<u64, BackendError> {
    let mut n = 0u64;
    loop {
        if stop.is_set() {
            return Ok(n);
        }
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let step = match next {
            None => return Ok(n),
            Some(Work::Entry(name)) => {
                let child = describe(path, 1, &name);
                session.get().remove_entry(dir, &name, false, &child).await
            }
            Some(Work::Dir(name, fh)) => {
                let child = describe(path, 1, &name);
                match session.get().empty_dir(fh, &child, stop).await {
                    Ok(inside) => {
                        n += inside;
                        if stop.is_set() {
                            return Ok(n);
                        }
                        session.get().remove_entry(dir, &name, true, &child).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match step {
            Ok(gone) => n += u64::from(gone),
            Err(e) => {
                stop.set();
                return Err(e);
            }
        }
    }
}

/// The session an operation started with, or a spare one it took for a while.
enum SessionRef<'s, 'a> {
    Borrowed(&'s mut Session<'a>),
    Owned(Session<'a>),
}

impl<'a> SessionRef<'_, 'a> {
    fn get(&mut self) -> &mut Session<'a> {
        match self {
            SessionRef::Borrowed(s) => s,
            SessionRef::Owned(s) => s,
        }
    }
}

/// A directory on the way down: its handle, and its name in the frame below.
struct Frame {
    fh: nfs_fh3,
    name: Vec<u8>,
    idle: u32,
}

impl Session<'_> {
    /// Removes one entry; true if this call removed it, false if it was already gone.
    pub(super) async fn remove_entry(
        &mut self,
        dir: &nfs_fh3,
        entry: &[u8],
        is_dir: bool,
        path: &str,
    ) -> Result<bool, BackendError> {
        let what = diropargs3 {
            dir: dir.clone(),
            name: name(entry),
        };
        let res = if is_dir {
            rpc!(self, "RMDIR", rmdir, &RMDIR3args { object: what })?.map_status()
        } else {
            rpc!(self, "REMOVE", remove, &REMOVE3args { object: what })?.map_status()
        };
        match res {
            None => Ok(true),
            Some(nfsstat3::NFS3ERR_NOENT) => Ok(false),
            Some(stat) => Err(status(if is_dir { "RMDIR" } else { "REMOVE" }, path, stat)),
        }
    }

    /// The first entries of `dir` from cookie 0: a page may hold only `.` and `..`.
    async fn first_entries(
        &mut self,
        dir: &nfs_fh3,
        path: &str,
    ) -> Result<Vec<Entry>, BackendError> {
        let (mut cookie, mut verf) = (0, nfs3::cookieverf3::default());
        loop {
            let page = self.read_page(dir, cookie, verf, path).await?;
            if !page.entries.is_empty() || page.eof || page.last_cookie == cookie {
                return Ok(page.entries);
            }
            (cookie, verf) = (page.last_cookie, page.verf);
        }
    }

    /// Empties `top` depth-first. Each directory is read again from cookie 0 after a
    /// page of removals: cookies across removals are not reliable on every server.
    /// Returns the number of entries this call removed.
    pub(super) async fn empty_dir(
        &mut self,
        top: nfs_fh3,
        top_path: &str,
        stop: &Stop,
    ) -> Result<u64, BackendError> {
        let mut removed = 0u64;
        let mut stack = vec![Frame {
            fh: top,
            name: Vec::new(),
            idle: 0,
        }];
        while let Some(frame) = stack.last() {
            if stop.is_set() {
                return Ok(removed);
            }
            let depth = stack.len() - 1;
            let dir = frame.fh.clone();
            let here = describe(top_path, depth, &frame.name);
            let entries = self.first_entries(&dir, &here).await?;
            if entries.is_empty() {
                let Some(done) = stack.pop() else { break };
                let Some(parent) = stack.last() else { break };
                let parent_fh = parent.fh.clone();
                let gone = self
                    .remove_entry(&parent_fh, &done.name, true, &here)
                    .await?;
                removed += u64::from(gone);
                // A directory listed again and again but never there to remove is no
                // progress either.
                if let Some(parent) = stack.last_mut() {
                    parent.idle = if gone { 0 } else { parent.idle + 1 };
                    if parent.idle >= IDLE_PASSES {
                        return Err(BackendError::NoProgress { path: here });
                    }
                }
                continue;
            }
            let mut progress = false;
            let mut descend = None;
            for Entry {
                name: entry,
                fh,
                attrs,
            } in entries
            {
                let child = describe(top_path, depth + 1, &entry);
                let (fh, attrs) = match (fh, attrs) {
                    (Some(fh), Some(a)) => (fh, a),
                    // Some servers leave handle or attributes out of READDIRPLUS. An
                    // entry gone by the time we look is simply gone.
                    _ => match self.lookup(&dir, &entry, &child).await? {
                        Some(found) => found,
                        None => continue,
                    },
                };
                if attrs.type_ == ftype3::NF3DIR {
                    descend = Some(Frame {
                        fh,
                        name: entry,
                        idle: 0,
                    });
                    break;
                }
                // Files, symlinks and the rest go by name: a symlink is never followed.
                if self.remove_entry(&dir, &entry, false, &child).await? {
                    removed += 1;
                    progress = true;
                }
                if stop.is_set() {
                    return Ok(removed);
                }
            }
            if let Some(d) = descend {
                stack.push(d);
                continue;
            }
            if let Some(f) = stack.last_mut() {
                f.idle = if progress { 0 } else { f.idle + 1 };
                if f.idle >= IDLE_PASSES {
                    return Err(BackendError::NoProgress { path: here });
                }
            }
        }
        Ok(removed)
    }
}

//! Copying a tree over NFSv3 into a new directory of the same share (the rules are in
//! `backend::copy`).
//!
//! Depth costs one frame per level: two handles, the source directory's attributes and
//! the cookie where its listing goes on; nothing is recursive and no path is built per
//! level, so trees thousands of levels deep copy in bounded memory. A directory is read
//! one page at a time and left at the first subdirectory, whose whole subtree is copied
//! before the listing goes on from that entry's cookie. File content moves one
//! [`CHUNK`] at a time; each file is committed before its attributes are set, so a
//! finished copy is on the server's disk, not in its cache. The single-link files a
//! page lists are copied on up to [`COPY_PARALLELISM`] sessions (spare ones only).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nfs3_client::nfs3_types::nfs3::{
    self, COMMIT3args, CREATE3args, LINK3args, MKDIR3args, MKNOD3args, Nfs3Option, Nfs3Result,
    READ3args, READDIRPLUS3args, READLINK3args, SYMLINK3args, WRITE3args, createhow3, diropargs3,
    fattr3, ftype3, mknoddata3, nfs_fh3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime,
    stable_how, symlinkdata3,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::pool::{Purpose, RootArgs, Session, rpc};
use super::{Nfs3Share, READDIR_DIRCOUNT, READDIR_MAXCOUNT, name, require_dir, sattr, status};
use crate::backend::copy::{CHUNK, Copied, CopyProgress, Links};
use crate::backend::{BackendError, DirAttrs};
use crate::path::RelPath;

/// Mode of a directory while it is being filled: ours to write into, closed to others.
const FILLING_DIR: u32 = 0o700;
const FILLING_FILE: u32 = 0o600;
/// Sessions one copy may use at once for the files of a directory, its own included.
const COPY_PARALLELISM: usize = 4;

/// A directory being copied.
struct Frame {
    src: nfs_fh3,
    dst: nfs_fh3,
    cookie: u64,
    verf: nfs3::cookieverf3,
    eof: bool,
    /// Given to `dst` once it is full; `None` for the top, which gets the caller's.
    attrs: Option<fattr3>,
    name: Vec<u8>,
}

struct Listed {
    name: Vec<u8>,
    cookie: u64,
    fh: Option<nfs_fh3>,
    attrs: Option<fattr3>,
}

/// An error path that does not grow with depth: the copy's target, then the entry.
fn describe(top: &str, depth: usize, entry: &[u8]) -> String {
    match depth {
        0 => top.to_string(),
        _ => format!("{top}/.../{}", String::from_utf8_lossy(entry)),
    }
}

fn client_time(t: nfstime3) -> (set_atime, set_mtime) {
    (
        set_atime::SET_TO_CLIENT_TIME(t),
        set_mtime::SET_TO_CLIENT_TIME(t),
    )
}

/// Mode, owner and times of `a`, as SETATTR takes them.
fn attrs_of(a: &fattr3, with_mode: bool) -> sattr3 {
    sattr3 {
        mode: if with_mode {
            Nfs3Option::Some(a.mode & 0o7777)
        } else {
            Nfs3Option::None
        },
        uid: Nfs3Option::Some(a.uid),
        gid: Nfs3Option::Some(a.gid),
        size: Nfs3Option::None,
        atime: client_time(a.atime).0,
        mtime: client_time(a.mtime).1,
    }
}

pub(super) async fn copy_tree(
    share: &Nfs3Share,
    from: &RelPath,
    to: &RelPath,
    top: DirAttrs,
    progress: &Arc<CopyProgress>,
) -> Result<Copied, BackendError> {
    // Copies are bulk work, like removals: they never take the slots kept for
    // provisioning.
    let mut s = share.session_for(Purpose::Reclaim).await?;
    let (from_path, to_path) = (from.to_string(), to.to_string());
    let missing = |p: &str| status("LOOKUP", p, nfsstat3::NFS3ERR_NOENT);
    let src_parent = s
        .walk(from.parent_segments())
        .await?
        .ok_or_else(|| missing(&from_path))?;
    let (src, src_attrs) = s
        .lookup(&src_parent, from.leaf().as_bytes(), &from_path)
        .await?
        .ok_or_else(|| missing(&from_path))?;
    require_dir(&src_attrs, &from_path)?;
    let dst_parent = s
        .walk(to.parent_segments())
        .await?
        .ok_or_else(|| missing(&to_path))?;
    let dst = s
        .make_dir(&dst_parent, to.leaf().as_bytes(), &to_path)
        .await?;
    let mut copied = Copied::default();
    let mut links = Links::new();
    let mut stack = vec![Frame {
        src,
        dst: dst.clone(),
        cookie: 0,
        verf: nfs3::cookieverf3::default(),
        eof: false,
        attrs: None,
        name: Vec::new(),
    }];
    while let Some(frame) = stack.last() {
        if progress.is_cancelled() {
            return Err(BackendError::Cancelled { path: to_path });
        }
        let depth = stack.len() - 1;
        let here = describe(&to_path, depth, &frame.name);
        if frame.eof {
            if let Some(done) = stack.pop()
                && let Some(a) = done.attrs
            {
                s.apply(&done.dst, &a, true, &here, &mut copied).await?;
            }
            continue;
        }
        let (src, dst) = (frame.src.clone(), frame.dst.clone());
        let (entries, verf, eof) = s.entries(&src, frame.cookie, frame.verf, &here).await?;
        let mut cookie = frame.cookie;
        let mut descend = None;
        let mut batch = VecDeque::new();
        for e in entries {
            if progress.is_cancelled() {
                return Err(BackendError::Cancelled { path: to_path });
            }
            cookie = e.cookie;
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let child = describe(&to_path, depth + 1, &e.name);
            let (fh, a) = match (e.fh, e.attrs) {
                (Some(fh), Some(a)) => (fh, a),
                // Left out of READDIRPLUS by some servers; gone meanwhile is gone.
                _ => match s.lookup(&src, &e.name, &child).await? {
                    Some(found) => found,
                    None => continue,
                },
            };
            match a.type_ {
                ftype3::NF3DIR => {
                    let made = s.make_dir(&dst, &e.name, &child).await?;
                    copied.dirs += 1;
                    progress.add_entry();
                    descend = Some(Frame {
                        src: fh,
                        dst: made,
                        cookie: 0,
                        verf: nfs3::cookieverf3::default(),
                        eof: false,
                        attrs: Some(a),
                        name: e.name,
                    });
                    break;
                }
                // Files of one link go in parallel; the others one at a time, so
                // every later name of a file finds its first copy.
                ftype3::NF3REG if a.nlink <= 1 => batch.push_back(FileJob {
                    fh,
                    attrs: a,
                    name: e.name,
                    path: child,
                }),
                ftype3::NF3REG => {
                    s.copy_file(
                        &fh,
                        &a,
                        &dst,
                        &e.name,
                        &child,
                        &mut links,
                        &mut copied,
                        progress,
                    )
                    .await?;
                }
                ftype3::NF3LNK => {
                    s.copy_symlink(&fh, &a, &dst, &e.name, &child, &mut copied)
                        .await?;
                    progress.add_entry();
                }
                ftype3::NF3FIFO => {
                    let args = MKNOD3args {
                        where_: diropargs3 {
                            dir: dst.clone(),
                            name: name(&e.name),
                        },
                        what: mknoddata3::NF3FIFO(sattr(FILLING_FILE, None, None)),
                    };
                    let made = match rpc!(s, "MKNOD", mknod, &args)? {
                        Nfs3Result::Ok(ok) => ok.obj,
                        Nfs3Result::Err((stat, _)) => return Err(status("MKNOD", child, stat)),
                    };
                    let made = s.handle(made, &dst, &e.name, &child).await?;
                    s.apply(&made, &a, true, &child, &mut copied).await?;
                    copied.fifos += 1;
                    progress.add_entry();
                }
                // Sockets mean nothing without their process; device nodes are refused
                // (see `backend::copy`).
                _ => copied.specials_skipped += 1,
            }
        }
        copy_files(share, &mut s, &dst, batch, progress, &mut copied).await?;
        if let Some(f) = stack.last_mut() {
            // A listing that ends without moving on would be read again forever.
            let stuck = cookie == f.cookie && descend.is_none();
            (f.cookie, f.verf) = (cookie, verf);
            if descend.is_none() && (eof || stuck) {
                f.eof = true;
            }
        }
        if let Some(d) = descend {
            stack.push(d);
        }
    }
    // Last of all: the stamp says the copy is whole.
    let mut full = sattr(top.mode, top.uid, top.gid);
    if let Some((seconds, nseconds)) = top.stamp {
        full.mtime = set_mtime::SET_TO_CLIENT_TIME(nfstime3 { seconds, nseconds });
    }
    s.setattr(&dst, full, &to_path).await?;
    Ok(copied)
}

/// A regular file of one link, to copy into the directory being filled.
struct FileJob {
    fh: nfs_fh3,
    attrs: fattr3,
    name: Vec<u8>,
    path: String,
}

/// Copies `jobs` into `dst` on this session and on as many spare ones as the pool has
/// free right now (at most [`COPY_PARALLELISM`] in all): small files cost a few round
/// trips each, which one connection would wait for one after another. The first error
/// stops the others after the call they are in.
async fn copy_files<'a>(
    share: &'a Nfs3Share,
    s: &mut Session<'a>,
    dst: &nfs_fh3,
    jobs: VecDeque<FileJob>,
    progress: &CopyProgress,
    copied: &mut Copied,
) -> Result<(), BackendError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut extra = Vec::new();
    while extra.len() + 1 < COPY_PARALLELISM.min(jobs.len()) {
        match share.spare_session().await {
            Some(x) => extra.push(x),
            None => break,
        }
    }
    let (queue, failed) = (Mutex::new(jobs), AtomicBool::new(false));
    let mut workers = vec![Box::pin(drain(&mut *s, &queue, &failed, dst, progress))
        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>];
    for mut x in extra {
        let (queue, failed) = (&queue, &failed);
        workers.push(Box::pin(async move {
            drain(&mut x, queue, failed, dst, progress).await
        }));
    }
    let mut first_err = None;
    for r in futures::future::join_all(workers).await {
        match r {
            Ok(c) => copied.add(&c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn drain(
    s: &mut Session<'_>,
    queue: &Mutex<VecDeque<FileJob>>,
    failed: &AtomicBool,
    dst: &nfs_fh3,
    progress: &CopyProgress,
) -> Result<Copied, BackendError> {
    let mut copied = Copied::default();
    // Files of one link never consult it.
    let mut links = Links::new();
    loop {
        if failed.load(Ordering::SeqCst) {
            return Ok(copied);
        }
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(job) = next else {
            return Ok(copied);
        };
        let step = s
            .copy_file(
                &job.fh,
                &job.attrs,
                dst,
                &job.name,
                &job.path,
                &mut links,
                &mut copied,
                progress,
            )
            .await;
        if let Err(e) = step {
            failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
    }
}

impl Session<'_> {
    /// A new directory that must not exist: the copy is the only writer of its target.
    async fn make_dir(
        &mut self,
        dir: &nfs_fh3,
        entry: &[u8],
        path: &str,
    ) -> Result<nfs_fh3, BackendError> {
        let args = MKDIR3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(entry),
            },
            attributes: sattr(FILLING_DIR, None, None),
        };
        let made = match rpc!(self, "MKDIR", mkdir, &args)? {
            Nfs3Result::Ok(ok) => ok.obj,
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => {
                return Err(BackendError::TargetExists {
                    path: path.to_string(),
                });
            }
            Nfs3Result::Err((stat, _)) => return Err(status("MKDIR", path, stat)),
        };
        let fh = self.handle(made, dir, entry, path).await?;
        // A server umask may have narrowed it; the owner must be able to fill it.
        self.setattr(&fh, sattr(FILLING_DIR, None, None), path)
            .await?;
        Ok(fh)
    }

    /// The handle a create returned, or looked up when the server left it out.
    async fn handle(
        &mut self,
        made: Nfs3Option<nfs_fh3>,
        dir: &nfs_fh3,
        entry: &[u8],
        path: &str,
    ) -> Result<nfs_fh3, BackendError> {
        match made {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => self
                .lookup(dir, entry, path)
                .await?
                .map(|(fh, _)| fh)
                .ok_or_else(|| status("LOOKUP", path, nfsstat3::NFS3ERR_NOENT)),
        }
    }

    /// One page of `dir` from `cookie`, each entry with its own cookie.
    async fn entries(
        &mut self,
        dir: &nfs_fh3,
        cookie: u64,
        verf: nfs3::cookieverf3,
        path: &str,
    ) -> Result<(Vec<Listed>, nfs3::cookieverf3, bool), BackendError> {
        let args = READDIRPLUS3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verf,
            dircount: READDIR_DIRCOUNT,
            maxcount: READDIR_MAXCOUNT,
        };
        match rpc!(self, "READDIRPLUS", readdirplus, &args)? {
            Nfs3Result::Ok(ok) => {
                let entries = ok
                    .reply
                    .entries
                    .0
                    .into_iter()
                    .map(|e| Listed {
                        name: e.name.as_ref().to_vec(),
                        cookie: e.cookie,
                        fh: match e.name_handle {
                            Nfs3Option::Some(fh) => Some(fh),
                            Nfs3Option::None => None,
                        },
                        attrs: match e.name_attributes {
                            Nfs3Option::Some(a) => Some(a),
                            Nfs3Option::None => None,
                        },
                    })
                    .collect();
                Ok((entries, ok.cookieverf, ok.reply.eof))
            }
            Nfs3Result::Err((stat, _)) => Err(status("READDIRPLUS", path, stat)),
        }
    }

    /// Sets `a`'s mode, owner and times on `fh`. An owner the server refuses (a
    /// squashing export) is counted and the rest set without it.
    async fn apply(
        &mut self,
        fh: &nfs_fh3,
        a: &fattr3,
        with_mode: bool,
        path: &str,
        copied: &mut Copied,
    ) -> Result<(), BackendError> {
        match self.setattr(fh, attrs_of(a, with_mode), path).await {
            // The server may clear set-id bits as it changes the owner: set them again.
            Ok(()) if with_mode && a.mode & 0o6000 != 0 => {
                self.setattr(fh, sattr(a.mode & 0o7777, None, None), path)
                    .await
            }
            Ok(()) => Ok(()),
            Err(BackendError::Status {
                status: nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ACCES,
                ..
            }) => {
                copied.owners_refused += 1;
                let mut rest = attrs_of(a, with_mode);
                (rest.uid, rest.gid) = (Nfs3Option::None, Nfs3Option::None);
                self.setattr(fh, rest, path).await
            }
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_file(
        &mut self,
        src: &nfs_fh3,
        a: &fattr3,
        dir: &nfs_fh3,
        entry: &[u8],
        path: &str,
        links: &mut Links<nfs_fh3>,
        copied: &mut Copied,
        progress: &CopyProgress,
    ) -> Result<(), BackendError> {
        let key = (a.fsid, a.fileid);
        if a.nlink > 1
            && let Some(first) = links.get(key)
        {
            let args = LINK3args {
                file: first,
                link: diropargs3 {
                    dir: dir.clone(),
                    name: name(entry),
                },
            };
            return match rpc!(self, "LINK", link, &args)? {
                Nfs3Result::Ok(_) => {
                    copied.hard_links += 1;
                    progress.add_entry();
                    Ok(())
                }
                Nfs3Result::Err((stat, _)) => Err(status("LINK", path, stat)),
            };
        }
        let args = CREATE3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(entry),
            },
            how: createhow3::GUARDED(sattr(FILLING_FILE, None, None)),
        };
        let made = match rpc!(self, "CREATE", create, &args)? {
            Nfs3Result::Ok(ok) => ok.obj,
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => {
                return Err(BackendError::TargetExists {
                    path: path.to_string(),
                });
            }
            Nfs3Result::Err((stat, _)) => return Err(status("CREATE", path, stat)),
        };
        let fh = self.handle(made, dir, entry, path).await?;
        let bytes = self.copy_content(src, &fh, path, progress).await?;
        self.apply(&fh, a, true, path, copied).await?;
        if a.nlink > 1 && !links.remember(key, fh) {
            copied.links_copied_apart += 1;
        }
        copied.files += 1;
        copied.bytes += bytes;
        progress.add_entry();
        Ok(())
    }

    /// READ then WRITE, one chunk at a time until the source says end of file; then
    /// COMMIT, with the write verifier checked: a server that restarted in between may
    /// have lost unstable writes, and the copy must start again.
    async fn copy_content(
        &mut self,
        src: &nfs_fh3,
        dst: &nfs_fh3,
        path: &str,
        progress: &CopyProgress,
    ) -> Result<u64, BackendError> {
        let mut offset = 0u64;
        let mut verifier = None;
        let changed = || BackendError::Status {
            op: "COMMIT",
            path: path.to_string(),
            status: nfsstat3::NFS3ERR_JUKEBOX,
        };
        loop {
            if progress.is_cancelled() {
                return Err(BackendError::Cancelled {
                    path: path.to_string(),
                });
            }
            let args = READ3args {
                file: src.clone(),
                offset,
                count: CHUNK,
            };
            let (data, eof) = match rpc!(self, "READ", read, &args)? {
                Nfs3Result::Ok(ok) => (ok.data.to_vec(), ok.eof),
                Nfs3Result::Err((stat, _)) => return Err(status("READ", path, stat)),
            };
            let mut done = 0usize;
            while done < data.len() {
                let rest = &data[done..];
                let args = WRITE3args {
                    file: dst.clone(),
                    offset: offset + done as u64,
                    count: rest.len() as u32,
                    stable: stable_how::UNSTABLE,
                    data: Opaque::borrowed(rest),
                };
                let ok = match rpc!(self, "WRITE", write, &args)? {
                    Nfs3Result::Ok(ok) => ok,
                    Nfs3Result::Err((stat, _)) => return Err(status("WRITE", path, stat)),
                };
                if ok.count == 0 {
                    return Err(status("WRITE", path, nfsstat3::NFS3ERR_IO));
                }
                if *verifier.get_or_insert(ok.verf) != ok.verf {
                    return Err(changed());
                }
                done += ok.count as usize;
            }
            offset += data.len() as u64;
            progress.add_bytes(data.len() as u64);
            if eof || data.is_empty() {
                break;
            }
        }
        if let Some(verf) = verifier {
            let args = COMMIT3args {
                file: dst.clone(),
                offset: 0,
                count: 0,
            };
            match rpc!(self, "COMMIT", commit, &args)? {
                Nfs3Result::Ok(ok) if ok.verf == verf => {}
                Nfs3Result::Ok(_) => return Err(changed()),
                Nfs3Result::Err((stat, _)) => return Err(status("COMMIT", path, stat)),
            }
        }
        Ok(offset)
    }

    /// The link's own text, never what it points to, made again as a link.
    async fn copy_symlink(
        &mut self,
        src: &nfs_fh3,
        a: &fattr3,
        dir: &nfs_fh3,
        entry: &[u8],
        path: &str,
        copied: &mut Copied,
    ) -> Result<(), BackendError> {
        let args = READLINK3args {
            symlink: src.clone(),
        };
        let target = match rpc!(self, "READLINK", readlink, &args)? {
            Nfs3Result::Ok(ok) => ok.data.0.to_vec(),
            Nfs3Result::Err((stat, _)) => return Err(status("READLINK", path, stat)),
        };
        let args = SYMLINK3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(entry),
            },
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: target.into(),
            },
        };
        let made = match rpc!(self, "SYMLINK", symlink, &args)? {
            Nfs3Result::Ok(ok) => ok.obj,
            Nfs3Result::Err((stat, _)) => return Err(status("SYMLINK", path, stat)),
        };
        let fh = self.handle(made, dir, entry, path).await?;
        // A link has no mode of its own to set.
        self.apply(&fh, a, false, path, copied).await?;
        copied.symlinks += 1;
        Ok(())
    }
}

/// The copy passes the root handle only to LOOKUP and MKDIR (when the target's parent is
/// the root), which `pool` rebases; everything else works below the root, on handles
/// that a remount does not renew: a STALE there fails the copy, which starts again.
/// (READ, WRITE and CREATE have theirs in `pool`, shared with the small-file calls.)
macro_rules! below_root {
    ($($lt:lifetime),* ; $ty:ty) => {
        impl<$($lt),*> RootArgs for $ty {
            type Owned = $ty;
            fn rebased(&self, _: &nfs_fh3, _: &nfs_fh3) -> Option<Self::Owned> {
                None
            }
        }
    };
}

below_root!('a; SYMLINK3args<'a>);
below_root!('a; LINK3args<'a>);
below_root!('a; MKNOD3args<'a>);
below_root!(; READLINK3args);
below_root!(; COMMIT3args);

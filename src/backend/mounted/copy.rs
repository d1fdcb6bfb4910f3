//! Copying a tree on a mounted share into a new directory (the rules are in
//! `backend::copy`), with a fixed number of open descriptors whatever the depth.
//!
//! Like removal, the walk holds one descriptor per side for the directory it is in,
//! goes down by `openat(name, O_NOFOLLOW)` and up by `openat("..")`, checking that the
//! parent is the very directory it came from (device and inode), so a tree moved around
//! meanwhile stops the copy rather than sending it elsewhere. A level costs a name, two
//! identities and the listing position (`d_off`) to seek back to; the target's top
//! stays open too, for hard links. Nothing is ever followed: entries are examined with
//! `AT_SYMLINK_NOFOLLOW`, files opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO swapped in
//! cannot block the open) and checked to be the inode that was listed.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{
    AtFlags, CWD, FileType, Gid, Mode, OFlags, RawDir, SeekFrom, Stat, Timespec, Timestamps,
    UTIME_OMIT, Uid, chmodat, chownat, copy_file_range, fchmod, fchown, fstat, fsync, futimens,
    linkat, mkdirat, mknodat, openat, readlinkat, seek, statat, symlinkat, utimensat,
};
use rustix::io::Errno;

use super::Progress;
use crate::backend::copy::{CHUNK, Copied, CopyProgress, Links};
use crate::backend::{BackendError, DirAttrs};
use crate::path::RelPath;

const FILLING_DIR: u32 = 0o700;
const FILLING_FILE: u32 = 0o600;
/// A hard link's first copy is remembered by its path below the target's top; longer
/// paths are not kept (the name is copied apart), so memory stays bounded.
const MAX_LINK_PATH: usize = 4096;

fn err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> BackendError + 'a {
    move |e| BackendError::Io {
        op,
        path: path.to_string(),
        source: e.into(),
    }
}

fn describe(top: &str, depth: usize, entry: &CStr) -> String {
    match depth {
        0 => top.to_string(),
        _ => format!("{top}/.../{}", entry.to_string_lossy()),
    }
}

fn open_dir<Fd: AsFd>(at: Fd, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn id(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

fn times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

fn owner(st: &Stat) -> (Option<Uid>, Option<Gid>) {
    // -1 means "leave unchanged" to chown: no real owner has it.
    let uid = (st.st_uid != u32::MAX).then(|| Uid::from_raw(st.st_uid));
    let gid = (st.st_gid != u32::MAX).then(|| Gid::from_raw(st.st_gid));
    (uid, gid)
}

/// Mode, owner and times of `st` on an open file or directory. Owner first: chown clears
/// set-id bits, which the mode then puts back.
fn apply_fd(fd: &OwnedFd, st: &Stat, path: &str, copied: &mut Copied) -> Result<(), BackendError> {
    let (uid, gid) = owner(st);
    match fchown(fd, uid, gid) {
        Ok(()) => {}
        Err(Errno::PERM | Errno::ACCESS) => copied.owners_refused += 1,
        Err(e) => return Err(err("chown", path)(e)),
    }
    fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777)).map_err(err("chmod", path))?;
    futimens(fd, &times(st)).map_err(err("utimens", path))
}

/// The same on an entry that cannot be opened (symlink, FIFO), never following it.
fn apply_at(
    dir: &OwnedFd,
    name: &CStr,
    st: &Stat,
    with_mode: bool,
    path: &str,
    copied: &mut Copied,
) -> Result<(), BackendError> {
    let (uid, gid) = owner(st);
    match chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(()) => {}
        Err(Errno::PERM | Errno::ACCESS) => copied.owners_refused += 1,
        Err(e) => return Err(err("chown", path)(e)),
    }
    if with_mode {
        // Only for entries this copy just made in its own directory: not a link.
        chmodat(
            dir,
            name,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(err("chmod", path))?;
    }
    utimensat(dir, name, &times(st), AtFlags::SYMLINK_NOFOLLOW).map_err(err("utimens", path))
}

/// A directory being copied: the current descriptors are held by the walk itself.
struct Frame {
    name: CString,
    /// `d_off` of the last entry handled: where the listing goes on.
    cookie: u64,
    src: (u64, u64),
    dst: (u64, u64),
    /// Given to the copy once it is full; `None` for the top.
    attrs: Option<Stat>,
}

struct Walk<'a> {
    top_path: String,
    top_dst: OwnedFd,
    progress: &'a CopyProgress,
    alive: &'a Progress,
    copied: Copied,
    links: Links<CString>,
    /// Names from the target's top down to the current directory, for hard links.
    at: Vec<CString>,
}

pub(super) fn copy_tree(
    root: &std::path::Path,
    from: &RelPath,
    to: &RelPath,
    top: DirAttrs,
    progress: &CopyProgress,
    alive: &Progress,
) -> Result<Copied, BackendError> {
    let (from_path, to_path) = (from.to_string(), to.to_string());
    let missing = |p: &str| BackendError::Io {
        op: "open",
        path: p.to_string(),
        source: std::io::ErrorKind::NotFound.into(),
    };
    let cname = |s: &str, p: &str| {
        CString::new(s).map_err(|_| BackendError::Io {
            op: "open",
            path: p.to_string(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })
    };
    let src_parent =
        super::walk(root, from.parent_segments())?.ok_or_else(|| missing(&from_path))?;
    let dst_parent = super::walk(root, to.parent_segments())?.ok_or_else(|| missing(&to_path))?;
    let src_parent = open_dir(CWD, &cname(&src_parent.to_string_lossy(), &from_path)?)
        .map_err(err("open", &from_path))?;
    let dst_parent = open_dir(CWD, &cname(&dst_parent.to_string_lossy(), &to_path)?)
        .map_err(err("open", &to_path))?;
    let src = open_dir(&src_parent, &cname(from.leaf(), &from_path)?).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => BackendError::Symlink {
            path: from_path.clone(),
        },
        e => err("open", &from_path)(e),
    })?;
    let leaf = cname(to.leaf(), &to_path)?;
    match mkdirat(&dst_parent, &leaf, Mode::from_raw_mode(FILLING_DIR)) {
        Ok(()) => {}
        Err(Errno::EXIST) => return Err(BackendError::TargetExists { path: to_path }),
        Err(e) => return Err(err("mkdir", &to_path)(e)),
    }
    let dst = open_dir(&dst_parent, &leaf).map_err(err("open", &to_path))?;
    fchmod(&dst, Mode::from_raw_mode(FILLING_DIR)).map_err(err("chmod", &to_path))?;
    let mut walk = Walk {
        top_path: to_path.clone(),
        top_dst: dst.try_clone().map_err(|e| BackendError::Io {
            op: "dup",
            path: to_path.clone(),
            source: e,
        })?,
        progress,
        alive,
        copied: Copied::default(),
        links: Links::new(),
        at: Vec::new(),
    };
    walk.run(src, dst)?;
    // Last of all: the stamp says the copy is whole.
    let top_fd = &walk.top_dst;
    let (uid, gid) = (top.uid.map(Uid::from_raw), top.gid.map(Gid::from_raw));
    if uid.is_some() || gid.is_some() {
        fchown(top_fd, uid, gid).map_err(err("chown", &to_path))?;
    }
    fchmod(top_fd, Mode::from_raw_mode(top.mode)).map_err(err("chmod", &to_path))?;
    if let Some((secs, nsecs)) = top.stamp {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: i64::from(secs),
                tv_nsec: nsecs.into(),
            },
        };
        futimens(top_fd, &times).map_err(err("utimens", &to_path))?;
    }
    Ok(walk.copied)
}

impl Walk<'_> {
    fn bump(&self) {
        self.alive.fetch_add(1, Ordering::SeqCst);
    }

    fn stopped(&self) -> Result<(), BackendError> {
        if self.progress.is_cancelled() {
            return Err(BackendError::Cancelled {
                path: self.top_path.clone(),
            });
        }
        Ok(())
    }

    fn run(&mut self, mut src: OwnedFd, mut dst: OwnedFd) -> Result<(), BackendError> {
        let top_id =
            |fd: &OwnedFd, path: &str| fstat(fd).map(|s| id(&s)).map_err(err("stat", path));
        let mut stack = vec![Frame {
            name: CString::default(),
            cookie: 0,
            src: top_id(&src, &self.top_path)?,
            dst: top_id(&dst, &self.top_path)?,
            attrs: None,
        }];
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
        while let Some(frame) = stack.last() {
            self.stopped()?;
            let depth = stack.len() - 1;
            let here = describe(&self.top_path, depth, &frame.name);
            seek(&src, SeekFrom::Start(frame.cookie)).map_err(err("seek", &here))?;
            let mut cookie = frame.cookie;
            let mut descend = None;
            let mut entries = RawDir::new(&src, &mut buf);
            while let Some(entry) = entries.next() {
                self.stopped()?;
                let entry = entry.map_err(err("readdir", &here))?;
                cookie = entry.next_entry_cookie();
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let child = describe(&self.top_path, depth + 1, name);
                let st = match statat(&src, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Gone since it was listed.
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(err("stat", &child)(e)),
                };
                self.bump();
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        match mkdirat(&dst, name, Mode::from_raw_mode(FILLING_DIR)) {
                            Ok(()) => {}
                            Err(Errno::EXIST) => {
                                return Err(BackendError::TargetExists { path: child });
                            }
                            Err(e) => return Err(err("mkdir", &child)(e)),
                        }
                        let s = open_dir(&src, name).map_err(err("open", &child))?;
                        let d = open_dir(&dst, name).map_err(err("open", &child))?;
                        let (s_id, d_id) = (top_id(&s, &child)?, top_id(&d, &child)?);
                        if s_id != id(&st) {
                            return Err(BackendError::NoProgress { path: child });
                        }
                        fchmod(&d, Mode::from_raw_mode(FILLING_DIR))
                            .map_err(err("chmod", &child))?;
                        self.copied.dirs += 1;
                        self.progress.add_entry();
                        descend = Some((
                            Frame {
                                name: name.to_owned(),
                                cookie: 0,
                                src: s_id,
                                dst: d_id,
                                attrs: Some(st),
                            },
                            s,
                            d,
                        ));
                        break;
                    }
                    FileType::RegularFile => self.file(&src, &dst, name, &st, &child)?,
                    FileType::Symlink => {
                        let target =
                            readlinkat(&src, name, Vec::new()).map_err(err("readlink", &child))?;
                        symlinkat(&target, &dst, name).map_err(err("symlink", &child))?;
                        apply_at(&dst, name, &st, false, &child, &mut self.copied)?;
                        self.copied.symlinks += 1;
                        self.progress.add_entry();
                    }
                    FileType::Fifo => {
                        mknodat(
                            &dst,
                            name,
                            FileType::Fifo,
                            Mode::from_raw_mode(FILLING_FILE),
                            0,
                        )
                        .map_err(err("mknod", &child))?;
                        apply_at(&dst, name, &st, true, &child, &mut self.copied)?;
                        self.copied.fifos += 1;
                        self.progress.add_entry();
                    }
                    _ => self.copied.specials_skipped += 1,
                }
            }
            if let Some(f) = stack.last_mut() {
                f.cookie = cookie;
            }
            if let Some((frame, s, d)) = descend {
                self.at.push(frame.name.clone());
                stack.push(frame);
                (src, dst) = (s, d);
                continue;
            }
            // The listing reached its end: this directory is full.
            let Some(done) = stack.pop() else { break };
            let Some(attrs) = done.attrs else { break };
            apply_fd(&dst, &attrs, &here, &mut self.copied)?;
            self.at.pop();
            let Some(parent) = stack.last() else { break };
            let up_s = open_dir(&src, c"..").map_err(err("open", &here))?;
            let up_d = open_dir(&dst, c"..").map_err(err("open", &here))?;
            if top_id(&up_s, &here)? != parent.src || top_id(&up_d, &here)? != parent.dst {
                // Moved while we were inside: going on could copy from or into elsewhere.
                return Err(BackendError::NoProgress { path: here });
            }
            (src, dst) = (up_s, up_d);
        }
        Ok(())
    }

    fn file(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        st: &Stat,
        path: &str,
    ) -> Result<(), BackendError> {
        let key = id(st);
        if st.st_nlink > 1
            && let Some(first) = self.links.get(key)
        {
            linkat(&self.top_dst, &first, dst_dir, name, AtFlags::empty())
                .map_err(err("link", path))?;
            self.copied.hard_links += 1;
            self.progress.add_entry();
            return Ok(());
        }
        let input = openat(
            src_dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("open", path))?;
        if fstat(&input).map(|s| id(&s)).map_err(err("stat", path))? != key {
            // Replaced since it was listed: the next attempt sees what is there then.
            return Err(BackendError::NoProgress {
                path: path.to_string(),
            });
        }
        let output = openat(
            dst_dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILLING_FILE),
        )
        .map_err(|e| match e {
            Errno::EXIST => BackendError::TargetExists {
                path: path.to_string(),
            },
            e => err("create", path)(e),
        })?;
        let bytes = self.content(&input, &output, path)?;
        fsync(&output).map_err(err("fsync", path))?;
        apply_fd(&output, st, path, &mut self.copied)?;
        if st.st_nlink > 1 {
            let mut rel = Vec::new();
            for seg in self
                .at
                .iter()
                .map(|c| c.as_bytes())
                .chain([name.to_bytes()])
            {
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(seg);
            }
            let kept = rel.len() <= MAX_LINK_PATH
                && CString::new(rel).is_ok_and(|rel| self.links.remember(key, rel));
            if !kept {
                self.copied.links_copied_apart += 1;
            }
        }
        self.copied.files += 1;
        self.copied.bytes += bytes;
        self.progress.add_entry();
        Ok(())
    }

    /// `copy_file_range` one chunk at a time (the server copies, where it can), or read
    /// and write where the kernel cannot.
    fn content(&self, input: &OwnedFd, output: &OwnedFd, path: &str) -> Result<u64, BackendError> {
        let mut total = 0u64;
        let mut plain = false;
        let mut buf = Vec::new();
        loop {
            self.stopped()?;
            let n = if plain {
                buf.resize(CHUNK as usize, 0);
                let n = rustix::io::read(input, &mut buf).map_err(err("read", path))?;
                let mut done = 0;
                while done < n {
                    let w = rustix::io::write(output, &buf[done..n]).map_err(err("write", path))?;
                    if w == 0 {
                        return Err(err("write", path)(Errno::IO));
                    }
                    done += w;
                }
                n
            } else {
                match copy_file_range(input, None, output, None, CHUNK as usize) {
                    Ok(n) => n,
                    Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                        plain = true;
                        continue;
                    }
                    Err(e) => return Err(err("copy", path)(e)),
                }
            };
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            self.progress.add_bytes(n as u64);
            self.bump();
        }
    }
}

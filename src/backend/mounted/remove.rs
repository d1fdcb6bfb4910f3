//! Removing a whole tree on a mounted share, without recursion and with a fixed number of
//! open descriptors whatever the depth.
//!
//! The walk holds one descriptor for the directory it is in (plus one, briefly, for its
//! parent) and goes down by `openat(name, O_NOFOLLOW)` and up by `openat("..")`. Going up,
//! the parent must be the very directory it came from (same device and inode), so a tree
//! moved around meanwhile stops the removal rather than sending it elsewhere. Depth costs
//! one name and one inode number per level. Symlinks are removed as entries, never
//! followed. Entries go as soon as they are seen, so an interrupted removal leaves less
//! for the next attempt.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, fstat, openat, statat, unlinkat};
use rustix::io::Errno;

use super::Progress;
use crate::backend::{BackendError, Removed};
use crate::path::RelPath;

/// Passes over one directory that remove nothing before giving up on it.
const IDLE_PASSES: u32 = 3;

fn err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> BackendError + 'a {
    move |e| BackendError::Io {
        op,
        path: path.to_string(),
        source: e.into(),
    }
}

/// A directory, never through a symlink.
fn open_dir<Fd: AsFd>(at: Fd, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn cname(s: &str, path: &str) -> Result<CString, BackendError> {
    CString::new(s).map_err(|_| BackendError::Io {
        op: "open",
        path: path.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// An error path that does not grow with depth: the volume, then the entry's own name.
fn describe(top: &str, depth: usize, entry: &CStr) -> String {
    let entry = entry.to_string_lossy();
    match depth {
        0 => top.to_string(),
        1 => format!("{top}/{entry}"),
        _ => format!("{top}/.../{entry}"),
    }
}

pub(super) fn remove_tree(
    root: &Path,
    dir: &RelPath,
    progress: &Progress,
) -> Result<Removed, BackendError> {
    let shown = root.display().to_string();
    // The mount point itself may be reached through links the administrator set up.
    let mut parent = openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("open", &shown))?;
    let mut walked = shown.clone();
    for seg in dir.parent_segments() {
        walked = format!("{walked}/{seg}");
        let name = cname(seg, &walked)?;
        parent = match open_dir(&parent, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Removed::AlreadyGone),
            Err(Errno::LOOP) => return Err(BackendError::Symlink { path: walked }),
            Err(Errno::NOTDIR) => return Err(not_dir_or_link(&parent, &name, walked)),
            Err(e) => return Err(err("open", &walked)(e)),
        };
    }
    let path = format!("{walked}/{}", dir.leaf());
    let leaf = cname(dir.leaf(), &path)?;
    let top = match open_dir(&parent, &leaf) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Removed::AlreadyGone),
        // A file or symlink where the volume was: remove the entry itself, never its target.
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return match unlinkat(&parent, &leaf, AtFlags::empty()) {
                Ok(()) => Ok(Removed::Removed { entries: 1 }),
                Err(Errno::NOENT) => Ok(Removed::AlreadyGone),
                Err(e) => Err(err("remove", &path)(e)),
            };
        }
        Err(e) => return Err(err("open", &path)(e)),
    };
    let inside = empty(top, &path, progress)?;
    match unlinkat(&parent, &leaf, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(Removed::Removed {
            entries: inside + 1,
        }),
        Err(e) => Err(err("remove", &path)(e)),
    }
}

/// Which error a parent segment that is not a directory deserves.
fn not_dir_or_link(parent: &OwnedFd, name: &CStr, path: String) -> BackendError {
    match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            BackendError::Symlink { path }
        }
        _ => BackendError::NotADirectory { path },
    }
}

/// The way back up from a directory: its name in its parent, and who the parent is.
struct Up {
    name: CString,
    dev: u64,
    ino: u64,
}

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

/// Empties the directory open as `top`; returns how many entries it removed.
fn empty(top: OwnedFd, top_path: &str, progress: &Progress) -> Result<u64, BackendError> {
    let tick = || progress.fetch_add(1, Ordering::SeqCst);
    let mut removed = 0u64;
    let mut stack: Vec<Up> = Vec::new();
    let mut cur = top;
    let mut idle = 0;
    // One buffer for every directory read: its size, not the depth, bounds the memory.
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 * 1024];
    loop {
        let here = match stack.last() {
            Some(up) => describe(top_path, stack.len(), &up.name),
            None => top_path.to_string(),
        };
        let mut seen = false;
        let mut progressed = false;
        let mut sub = None;
        {
            // Every pass reads from the start: entries were removed since the last one.
            rustix::fs::seek(&cur, rustix::fs::SeekFrom::Start(0)).map_err(err("list", &here))?;
            let mut entries = RawDir::new(&cur, &mut buf);
            while let Some(entry) = entries.next() {
                let entry = entry.map_err(err("list", &here))?;
                let name = entry.file_name();
                if is_dot(name) {
                    continue;
                }
                seen = true;
                let is_dir = match entry.file_type() {
                    FileType::Directory => true,
                    FileType::Unknown => match statat(&cur, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                        Err(Errno::NOENT) => continue,
                        Err(e) => {
                            return Err(err("stat", &describe(top_path, stack.len() + 1, name))(e));
                        }
                    },
                    _ => false,
                };
                if is_dir {
                    sub = Some(name.to_owned());
                    break;
                }
                match unlinkat(&cur, name, AtFlags::empty()) {
                    Ok(()) => {
                        removed += 1;
                        progressed = true;
                        tick();
                    }
                    // Gone already, or swapped for a directory: the next pass sees it.
                    Err(Errno::NOENT | Errno::ISDIR) => {}
                    Err(e) => {
                        return Err(err("remove", &describe(top_path, stack.len() + 1, name))(e));
                    }
                }
            }
        }
        if let Some(name) = sub {
            let st = fstat(&cur).map_err(err("stat", &here))?;
            match open_dir(&cur, &name) {
                Ok(child) => {
                    stack.push(Up {
                        name,
                        dev: st.st_dev,
                        ino: st.st_ino,
                    });
                    cur = child;
                    idle = 0;
                    tick();
                    continue;
                }
                // Gone, or swapped for a file or a link: the next pass sees what is there.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                Err(e) => {
                    return Err(err("open", &describe(top_path, stack.len() + 1, &name))(e));
                }
            }
        } else if !seen {
            let Some(up) = stack.pop() else {
                return Ok(removed);
            };
            let parent = open_dir(&cur, c"..").map_err(err("open", &here))?;
            let st = fstat(&parent).map_err(err("stat", &here))?;
            if (st.st_dev, st.st_ino) != (up.dev, up.ino) {
                return Err(BackendError::Io {
                    op: "remove",
                    path: here,
                    source: std::io::Error::other("the directory was moved during removal"),
                });
            }
            match unlinkat(&parent, &up.name, AtFlags::REMOVEDIR) {
                Ok(()) => {
                    removed += 1;
                    progressed = true;
                    tick();
                }
                // Refilled meanwhile, or already gone: the parent's next pass decides.
                Err(Errno::NOENT | Errno::NOTEMPTY) => {}
                Err(e) => return Err(err("remove", &here)(e)),
            }
            cur = parent;
        }
        idle = if progressed { 0 } else { idle + 1 };
        if idle >= IDLE_PASSES {
            return Err(BackendError::NoProgress { path: here });
        }
    }
}

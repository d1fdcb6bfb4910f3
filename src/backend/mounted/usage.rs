//! Counting what a volume holds on a mounted share, with one open descriptor whatever
//! the depth.
//!
//! The walk is in one directory at a time: it goes down by `openat(name, O_NOFOLLOW)`
//! and back up by `openat("..")`, checking that the parent is the very directory it
//! came from (device and inode), so a tree moved meanwhile ends the scan rather than
//! sending it elsewhere. Per level it keeps an inode and the position to read
//! on from, never a listing. Entries are looked at with `fstatat(AT_SYMLINK_NOFOLLOW)`:
//! a symlink is counted, never followed. A directory it may not read or search is
//! counted as unreadable and skipped, before the walk enters it, so it can always come
//! back up.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, RawDir, SeekFrom, Stat, fstat, openat, seek, statat,
};
use rustix::io::Errno;

use super::Progress;
use crate::backend::{BackendError, Pace, Usage};
use crate::path::RelPath;

/// As in the NFSv3 walk: a bound no real tree reaches, about 300 bytes a level.
const MAX_DEPTH: usize = 100_000;
/// Entries read per paced call: about what one READDIRPLUS page holds, so a budget of
/// calls per second means about the same on both backends.
const ENTRIES_PER_CALL: u64 = 128;

fn fail<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> BackendError + 'a {
    move |e| BackendError::Io {
        op,
        path: path.to_string(),
        source: e.into(),
    }
}

fn open_nofollow<Fd: AsFd>(at: Fd, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a subdirectory only if the walk can also come back out of it: reading it
/// needs `r`, going up through its `..` needs `x`.
fn enter<Fd: AsFd>(at: Fd, name: &CStr) -> Result<OwnedFd, Errno> {
    let child = open_nofollow(at, name)?;
    open_nofollow(&child, c"..")?;
    Ok(child)
}

fn denied(e: Errno) -> bool {
    e == Errno::ACCESS || e == Errno::PERM
}

fn add(u: &mut Usage, st: &Stat) {
    let blocks = u64::try_from(st.st_blocks).unwrap_or(0);
    let size = u64::try_from(st.st_size).unwrap_or(0);
    u.bytes = u.bytes.saturating_add(blocks.saturating_mul(512));
    u.apparent_bytes = u.apparent_bytes.saturating_add(size);
}

/// The way back up: who the parent is, and where to read on in it.
struct Up {
    dev: u64,
    ino: u64,
    resume: u64,
}

pub(super) fn usage(
    root: &Path,
    dir: &RelPath,
    pace: &Pace,
    progress: &Progress,
) -> Result<Option<Usage>, BackendError> {
    let shown = root.display().to_string();
    let mut u = Usage::default();
    let mut at = openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail("open", &shown))?;
    let mut walked = shown;
    let segments = dir.segments();
    for (i, seg) in segments.iter().enumerate() {
        walked = format!("{walked}/{seg}");
        let name = CString::new(seg.as_str()).map_err(|_| BackendError::NotADirectory {
            path: walked.clone(),
        })?;
        pace.call_blocking();
        u.calls += 1;
        let is_leaf = i + 1 == segments.len();
        at = match open_nofollow(&at, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(BackendError::Symlink { path: walked }),
            // O_DIRECTORY may see a symlink before O_NOFOLLOW does: tell which it is.
            Err(Errno::NOTDIR) => {
                return Err(match statat(&at, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        BackendError::Symlink { path: walked }
                    }
                    _ => BackendError::NotADirectory { path: walked },
                });
            }
            Err(e) if is_leaf && denied(e) => {
                u.unreadable = 1;
                return Ok(Some(u));
            }
            Err(e) => return Err(fail("open", &walked)(e)),
        };
    }
    add(&mut u, &fstat(&at).map_err(fail("stat", &walked))?);
    walk(at, &walked, pace, progress, &mut u)?;
    Ok(Some(u))
}

fn walk(
    top: OwnedFd,
    path: &str,
    pace: &Pace,
    progress: &Progress,
    u: &mut Usage,
) -> Result<(), BackendError> {
    let call = |u: &mut Usage| {
        pace.call_blocking();
        u.calls += 1;
        progress.fetch_add(1, Ordering::SeqCst);
    };
    let mut stack: Vec<Up> = Vec::new();
    let (mut cur, mut pos) = (top, 0u64);
    // One buffer for every read: its size, not the depth or the width, bounds memory.
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    loop {
        call(u);
        seek(&cur, SeekFrom::Start(pos)).map_err(fail("list", path))?;
        let mut sub = None;
        let mut read = 0u64;
        let mut entries = RawDir::new(&cur, &mut buf);
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if denied(e) => {
                    u.unreadable += 1;
                    break;
                }
                Err(e) => return Err(fail("list", path)(e)),
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            read += 1;
            if read.is_multiple_of(ENTRIES_PER_CALL) {
                call(u);
            }
            let st = match statat(&cur, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed by its tenant since it was listed.
                Err(Errno::NOENT) => continue,
                Err(e) if denied(e) => {
                    u.unreadable += 1;
                    break;
                }
                Err(e) => return Err(fail("stat", path)(e)),
            };
            add(u, &st);
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                u.dirs += 1;
                sub = Some((name.to_owned(), entry.next_entry_cookie()));
                break;
            }
            u.files += 1;
        }
        if let Some((name, resume)) = sub {
            pos = resume;
            if stack.len() >= MAX_DEPTH {
                u.unreadable += 1;
                continue;
            }
            match enter(&cur, &name) {
                Ok(child) => {
                    let st = fstat(&cur).map_err(fail("stat", path))?;
                    stack.push(Up {
                        dev: st.st_dev,
                        ino: st.st_ino,
                        resume,
                    });
                    (cur, pos) = (child, 0);
                }
                Err(e) if denied(e) => u.unreadable += 1,
                // Gone, or swapped for a file or a link since it was listed.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                Err(e) => return Err(fail("open", path)(e)),
            }
            continue;
        }
        // This directory is done: back up to where its parent's reading stopped.
        let Some(up) = stack.pop() else {
            return Ok(());
        };
        let parent = open_nofollow(&cur, c"..").map_err(fail("open", path))?;
        let st = fstat(&parent).map_err(fail("stat", path))?;
        if (st.st_dev, st.st_ino) != (up.dev, up.ino) {
            return Err(BackendError::Io {
                op: "usage",
                path: path.to_string(),
                source: std::io::Error::other("the directory was moved during the scan"),
            });
        }
        (cur, pos) = (parent, up.resume);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn plant_chain(top: &Path, depth: usize) {
        fs::create_dir_all(top).unwrap();
        let mut fd = openat(CWD, top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            let f = openat(
                &fd,
                "f",
                OFlags::WRONLY | OFlags::CREATE,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            drop(f);
            fd = open_nofollow(&fd, c"d").unwrap();
        }
    }

    fn scan(root: &Path, dir: &str) -> Result<Option<Usage>, BackendError> {
        usage(
            root,
            &RelPath::parse(dir).unwrap(),
            &Pace::unlimited(),
            &AtomicU64::new(0),
        )
    }

    #[test]
    fn a_tree_deeper_than_path_max_is_counted_whole() {
        const DEPTH: usize = 3000;
        let root = tempfile::tempdir().unwrap();
        plant_chain(&root.path().join("vol"), DEPTH);
        let u = scan(root.path(), "vol").unwrap().unwrap();
        assert_eq!(
            (u.dirs, u.files, u.unreadable),
            (DEPTH as u64, DEPTH as u64, 0)
        );
        // One directory read per level, plus the way down to the volume.
        assert!(u.calls >= DEPTH as u64, "{u:?}");
    }

    /// Root reads every directory, whatever its mode: the scan runs on a thread whose
    /// effective uid is dropped, as the provisioner runs in a restricted pod.
    #[test]
    fn an_unreadable_directory_is_counted_and_the_rest_is_scanned() {
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("vol");
        for d in ["a", "locked/inner", "noexec", "z"] {
            fs::create_dir_all(vol.join(d)).unwrap();
        }
        for f in ["a/1", "locked/inner/2", "noexec/3", "z/4", "5"] {
            fs::write(vol.join(f), b"data").unwrap();
        }
        for d in [root.path(), &vol, &vol.join("a"), &vol.join("z")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(vol.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(vol.join("noexec"), fs::Permissions::from_mode(0o444)).unwrap();
        let path = root.path().to_path_buf();
        let u = std::thread::spawn(move || {
            rustix::thread::set_thread_res_uid(None, rustix::fs::Uid::from_raw(65534), None)
                .unwrap();
            scan(&path, "vol")
        })
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
        fs::set_permissions(vol.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
        // a, locked, noexec, z are seen; locked and noexec cannot be entered.
        assert_eq!((u.dirs, u.unreadable), (4, 2), "{u:?}");
        assert_eq!(u.files, 3, "a/1, z/4 and 5: {u:?}");
    }

    #[test]
    fn a_volume_that_is_not_a_directory_is_refused_and_a_missing_one_is_none() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", root.path().join("link")).unwrap();
        fs::write(root.path().join("file"), b"x").unwrap();
        assert!(matches!(
            scan(root.path(), "link"),
            Err(BackendError::Symlink { .. })
        ));
        assert!(matches!(
            scan(root.path(), "file"),
            Err(BackendError::NotADirectory { .. })
        ));
        assert_eq!(scan(root.path(), "gone").unwrap(), None);
    }
}

//! The mounted backend: the same operations on a share mounted into the pod (such as
//! `/persistentvolumes` in nfs-subdir-external-provisioner deployments), for NFSv4-only
//! servers and as a drop-in replacement. Blocking filesystem calls run off the runtime,
//! each under a deadline.

mod copy;
mod remove;
mod usage;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    BackendError, Copied, CopyProgress, DirAttrs, Kind, Made, PARENT_MODE, Pace, Removed, Renamed,
    Share, Space, Stat, Usage, Written,
};
use crate::path::RelPath;

/// How long a blocking call may go without progress before it counts as hung.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

pub struct MountedShare {
    root: PathBuf,
    deadline: Duration,
}

/// Bumped by a long blocking call each time it gets something done, so its deadline
/// measures time without progress rather than the length of the whole job.
pub(crate) type Progress = AtomicU64;

impl MountedShare {
    pub fn new(root: PathBuf) -> Self {
        Self::with_deadline(root, DEFAULT_DEADLINE)
    }

    pub fn with_deadline(root: PathBuf, deadline: Duration) -> Self {
        Self { root, deadline }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        self.watched("filesystem call", move |root, _| f(root))
            .await
    }

    /// Runs `f` on the blocking pool. When it makes no progress for the deadline (a hung
    /// mount: a server that stopped answering a hard mount blocks the call in the
    /// kernel), the caller gets a transient error. The thread itself stays blocked
    /// until the kernel lets go, which nothing in user space can force; the blocking
    /// pool bounds how many such threads there can be.
    async fn watched<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Path, &Progress) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let root = self.root.clone();
        let progress = Arc::new(Progress::new(0));
        let seen = progress.clone();
        let task = tokio::task::spawn_blocking(move || f(&root, &progress));
        with_deadline(task, &seen, self.deadline, op, &self.root).await
    }
}

async fn with_deadline<T>(
    mut task: tokio::task::JoinHandle<Result<T, BackendError>>,
    progress: &Progress,
    deadline: Duration,
    op: &'static str,
    root: &Path,
) -> Result<T, BackendError> {
    let mut last = progress.load(Ordering::SeqCst);
    loop {
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(joined) => {
                return joined.map_err(|e| BackendError::Io {
                    op: "run",
                    path: String::new(),
                    source: std::io::Error::other(e),
                })?;
            }
            Err(_) => {
                let now = progress.load(Ordering::SeqCst);
                if now == last {
                    return Err(BackendError::Stalled {
                        op,
                        path: root.display().to_string(),
                        after: deadline,
                    });
                }
                last = now;
            }
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

fn kind_of(ft: fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

/// Metadata without following a final symlink; `None` when absent.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, BackendError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("stat", path)(e)),
    }
}

/// Walks `segments` below `root`, refusing symlinks and non-directories on the way, so
/// a link planted in the share can never redirect us outside it. `None` when a segment
/// is missing.
fn walk(root: &Path, segments: &[String]) -> Result<Option<PathBuf>, BackendError> {
    let mut at = root.to_path_buf();
    for seg in segments {
        at.push(seg);
        match lstat(&at)? {
            None => return Ok(None),
            Some(m) => require_dir(&m, &at)?,
        }
    }
    Ok(Some(at))
}

fn require_dir(m: &fs::Metadata, path: &Path) -> Result<(), BackendError> {
    let path = path.display().to_string();
    match kind_of(m.file_type()) {
        Kind::Dir => Ok(()),
        Kind::Symlink => Err(BackendError::Symlink { path }),
        _ => Err(BackendError::NotADirectory { path }),
    }
}

fn set_attrs(
    path: &Path,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), BackendError> {
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::lchown(path, uid, gid).map_err(io("chown", path))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn stat_of(m: &fs::Metadata) -> Stat {
    Stat {
        kind: kind_of(m.file_type()),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        changed: m.mtime().max(m.ctime()),
        mtime: (
            u32::try_from(m.mtime()).unwrap_or(0),
            u32::try_from(m.mtime_nsec()).unwrap_or(0),
        ),
    }
}

fn is_own(stamp: Option<(u32, u32)>, m: &fs::Metadata) -> bool {
    stamp.is_some_and(|s| super::stamped(s, stat_of(m).mtime))
}

/// Sets the modification time without following a symlink put in the directory's place.
fn set_mtime(path: &Path, (secs, nsecs): (u32, u32)) -> Result<(), BackendError> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: i64::from(secs),
            tv_nsec: i64::from(nsecs),
        },
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io("utimensat", path)(e.into()))
}

impl Share for MountedShare {
    async fn create_dir(&self, dir: &RelPath, attrs: DirAttrs) -> Result<Made, BackendError> {
        let dir = dir.clone();
        self.blocking(move |root| {
            let mut at = root.to_path_buf();
            let last = dir.segments().len() - 1;
            for (i, seg) in dir.segments().iter().enumerate() {
                at.push(seg);
                let made = match fs::create_dir(&at) {
                    Ok(()) => true,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(io("mkdir", &at)(e)),
                };
                let m = lstat(&at)?
                    .ok_or_else(|| io("mkdir", &at)(std::io::Error::from(ErrorKind::NotFound)))?;
                require_dir(&m, &at)?;
                match (i < last, made) {
                    (true, true) => set_attrs(&at, PARENT_MODE, None, None)?,
                    (true, false) => {}
                    (false, true) => {
                        set_attrs(&at, attrs.mode, attrs.uid, attrs.gid)?;
                        if let Some(stamp) = attrs.stamp {
                            set_mtime(&at, stamp)?;
                        }
                        return Ok(Made::Created);
                    }
                    (false, false) if is_own(attrs.stamp, &m) => {
                        // Made by an earlier attempt for the same claim that stopped
                        // before its attributes: finish it.
                        set_attrs(&at, attrs.mode, attrs.uid, attrs.gid)?;
                        return Ok(Made::Created);
                    }
                    (false, false) => return Ok(Made::Existed(stat_of(&m))),
                }
            }
            Ok(Made::Created)
        })
        .await
    }

    async fn remove_tree(&self, dir: &RelPath) -> Result<Removed, BackendError> {
        let dir = dir.clone();
        self.watched("remove", move |root, progress| {
            remove::remove_tree(root, &dir, progress)
        })
        .await
    }

    async fn rename(&self, from: &RelPath, to: &RelPath) -> Result<Renamed, BackendError> {
        let (from, to) = (from.clone(), to.clone());
        self.blocking(move |root| {
            let (Some(fp), Some(tp)) = (
                walk(root, from.parent_segments())?,
                walk(root, to.parent_segments())?,
            ) else {
                return Ok(Renamed::SourceMissing);
            };
            let (src, dst) = (fp.join(from.leaf()), tp.join(to.leaf()));
            match (lstat(&src)?, lstat(&dst)?) {
                (None, Some(_)) => Ok(Renamed::AlreadyDone),
                (None, None) => Ok(Renamed::SourceMissing),
                (Some(_), Some(_)) => Err(BackendError::TargetExists {
                    path: to.to_string(),
                }),
                (Some(_), None) => {
                    fs::rename(&src, &dst).map_err(io("rename", &src))?;
                    Ok(Renamed::Done)
                }
            }
        })
        .await
    }

    async fn stat(&self, path: &RelPath) -> Result<Option<Stat>, BackendError> {
        let path = path.clone();
        self.blocking(move |root| {
            let Some(parent) = walk(root, path.parent_segments())? else {
                return Ok(None);
            };
            Ok(lstat(&parent.join(path.leaf()))?.map(|m| stat_of(&m)))
        })
        .await
    }

    async fn list(&self, dir: Option<&RelPath>) -> Result<Vec<String>, BackendError> {
        let dir = dir.cloned();
        self.blocking(move |root| {
            let at = match &dir {
                None => root.to_path_buf(),
                Some(d) => match walk(root, d.segments())? {
                    Some(p) => p,
                    None => return Ok(Vec::new()),
                },
            };
            let rd = fs::read_dir(&at).map_err(io("list", &at))?;
            Ok(rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect())
        })
        .await
    }

    async fn space(&self) -> Result<Space, BackendError> {
        self.blocking(statvfs).await
    }

    async fn copy_tree(
        &self,
        from: &RelPath,
        to: &RelPath,
        top: DirAttrs,
        progress: Arc<CopyProgress>,
    ) -> Result<Copied, BackendError> {
        let (from, to) = (from.clone(), to.clone());
        self.watched("copy", move |root, alive| {
            copy::copy_tree(root, &from, &to, top, &progress, alive)
        })
        .await
    }

    async fn write_file(
        &self,
        path: &RelPath,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Written, BackendError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (path, bytes) = (path.clone(), bytes.to_vec());
        self.blocking(move |root| {
            let Some(parent) = walk(root, path.parent_segments())? else {
                let at = root.join(path.to_string());
                return Err(io("create", &at)(ErrorKind::NotFound.into()));
            };
            let at = parent.join(path.leaf());
            // create_new is O_EXCL: never through a symlink, never over anything.
            let mut f = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&at)
            {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Written::Existed),
                Err(e) => return Err(io("create", &at)(e)),
            };
            f.write_all(&bytes).map_err(io("write", &at))?;
            f.sync_all().map_err(io("fsync", &at))?;
            Ok(Written::Created)
        })
        .await
    }

    async fn read_file(&self, path: &RelPath, max: u64) -> Result<Option<Vec<u8>>, BackendError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.clone();
        self.blocking(move |root| {
            let Some(parent) = walk(root, path.parent_segments())? else {
                return Ok(None);
            };
            let at = parent.join(path.leaf());
            let shown = path.to_string();
            match lstat(&at)? {
                None => return Ok(None),
                Some(m) if m.file_type().is_symlink() => {
                    return Err(BackendError::Symlink { path: shown });
                }
                Some(m) if !m.file_type().is_file() => {
                    return Err(BackendError::NotAFile { path: shown });
                }
                Some(_) => {}
            }
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&at)
                .map_err(io("open", &at))?;
            let mut out = Vec::new();
            f.take(max + 1)
                .read_to_end(&mut out)
                .map_err(io("read", &at))?;
            if out.len() as u64 > max {
                return Err(BackendError::TooLarge { path: shown, max });
            }
            Ok(Some(out))
        })
        .await
    }

    async fn usage(&self, dir: &RelPath, pace: &Pace) -> Result<Option<Usage>, BackendError> {
        let (dir, pace) = (dir.clone(), pace.clone());
        self.watched("usage", move |root, progress| {
            usage::usage(root, &dir, &pace, progress)
        })
        .await
    }
}

/// Free and total space of the filesystem holding `path`.
fn statvfs(path: &Path) -> Result<Space, BackendError> {
    let st = rustix::fs::statvfs(path).map_err(|e| io("statvfs", path)(e.into()))?;
    let block = st.f_frsize;
    Ok(Space {
        total_bytes: st.f_blocks * block,
        free_bytes: st.f_bfree * block,
        avail_bytes: st.f_bavail * block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        ticks: u64,
        step: Duration,
    ) -> impl FnOnce(&Path, &Progress) -> Result<u64, BackendError> {
        move |_, progress| {
            for _ in 0..ticks {
                std::thread::sleep(step);
                progress.fetch_add(1, Ordering::SeqCst);
            }
            Ok(ticks)
        }
    }

    #[tokio::test]
    async fn a_call_without_progress_is_stalled_at_the_deadline() {
        let share = MountedShare::with_deadline("/".into(), Duration::from_millis(100));
        let started = std::time::Instant::now();
        // One step of 2 s with no progress before it: a hung call.
        let r = share
            .watched("remove", run(1, Duration::from_secs(2)))
            .await;
        assert!(matches!(r, Err(BackendError::Stalled { .. })), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_long_call_that_progresses_is_not_cut() {
        let share = MountedShare::with_deadline("/".into(), Duration::from_millis(300));
        // 1 s in all, but progress every 20 ms: well past one deadline, never stalled.
        let r = share
            .watched("remove", run(50, Duration::from_millis(20)))
            .await;
        assert_eq!(r.unwrap(), 50);
    }
}

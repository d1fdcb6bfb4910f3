//! Directory operations on a share, behind one trait with two implementations:
//! [`nfs3`] talks NFSv3 from user space, [`mounted`] works on a locally mounted path.
//!
//! Every operation is idempotent, because a crash or a retry can repeat any of them:
//! creating an existing directory succeeds, removing a missing one succeeds, and a rename
//! whose source is gone but whose target exists has already happened.

pub mod copy;
pub mod metadata;
pub mod mounted;
pub mod nfs3;
mod usage;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

/// The status an NFSv3 server answers with, kept typed so errors can be classified.
pub use nfs3_client::nfs3_types::nfs3::nfsstat3 as NfsStatus;

use crate::path::RelPath;
pub use copy::{Copied, CopyProgress};
pub use usage::{Pace, Usage};

/// Attributes given to a newly provisioned directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirAttrs {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Modification time (seconds, nanoseconds) given to the new directory, so a retry
    /// can tell it from one that was there before (see `plan::ownership::stamp`).
    pub stamp: Option<(u32, u32)>,
}

/// Whether a directory's modification time is `stamp`. Servers that keep only whole
/// seconds report zero nanoseconds; the seconds alone still leave a one in 10^8 chance
/// to a directory nobody could aim at (see `plan::ownership::stamp`).
pub fn stamped(stamp: (u32, u32), mtime: (u32, u32)) -> bool {
    mtime.0 == stamp.0 && (mtime.1 == stamp.1 || mtime.1 == 0)
}

/// What `create_dir` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Made {
    /// The directory was made now, with the attributes asked for.
    Created,
    /// It was there already: nothing about it was changed.
    Existed(Stat),
}

/// Mode of parent directories a nested template creates: traversable by any pod, but
/// not writable, so one claim's parent never becomes another tenant's scratch space.
pub const PARENT_MODE: u32 = 0o755;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch of the last change to the entry or its contents: the
    /// later of mtime and ctime. Renaming (archiving) sets ctime, so an archive's age
    /// counts from when it was archived, not from the last write inside it.
    pub changed: i64,
    /// Modification time as (seconds, nanoseconds), exactly as the server keeps it.
    pub mtime: (u32, u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    Removed { entries: u64 },
    AlreadyGone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renamed {
    Done,
    /// The source is gone and the target exists: an earlier attempt did it.
    AlreadyDone,
    /// Neither exists: nothing to archive.
    SourceMissing,
}

/// What `write_file` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Created,
    /// Something was there by that name: nothing was written.
    Existed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot resolve NFS server {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    /// `permanent`: the server answered and refused (no such export, denied); otherwise
    /// it could not be reached, which may change.
    #[error("cannot mount {server}:{share}: {reason}{hint}", hint = hint(reason))]
    Connect {
        server: String,
        share: String,
        reason: String,
        permanent: bool,
    },
    #[error("NFS {op} on {server} timed out after {after:?}")]
    Timeout {
        op: &'static str,
        server: String,
        after: Duration,
    },
    /// `permanent`: the server rejected the credentials or does not speak the protocol;
    /// otherwise the connection failed, which a new one may not.
    #[error("NFS {op} on {server} failed: {reason}{hint}", hint = hint(reason))]
    Rpc {
        op: &'static str,
        server: String,
        reason: String,
        permanent: bool,
    },
    #[error("{op} {path:?} failed: {status}")]
    Status {
        op: &'static str,
        path: String,
        status: NfsStatus,
    },
    #[error("{path:?} exists and is not a directory")]
    NotADirectory { path: String },
    #[error("{path:?} is a symbolic link; refusing to follow it")]
    Symlink { path: String },
    #[error("{path:?} exists and is not a regular file")]
    NotAFile { path: String },
    #[error("{path:?} is larger than {max} bytes; refusing to read it")]
    TooLarge { path: String, max: u64 },
    #[error("archive target {path:?} already exists; refusing to overwrite it")]
    TargetExists { path: String },
    #[error("directory {path:?} still lists entries that were removed; giving up")]
    NoProgress { path: String },
    #[error("{op} {path:?} failed: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the {backend} backend serves only {served}; this class asks for {wanted}")]
    NotServed {
        backend: &'static str,
        served: String,
        wanted: String,
    },
    /// Every connection slot to the share stayed taken for the whole deadline.
    #[error("no free NFS connection to {server} within {waited:?}; will retry")]
    Busy { server: String, waited: Duration },
    /// A copy stopped because its caller asked it to (its source went away).
    #[error("copy into {path:?} was stopped")]
    Cancelled { path: String },
    /// A blocking call on the mounted share did not return in time (a hung mount).
    #[error("{op} {path:?} did not finish within {after:?}")]
    Stalled {
        op: &'static str,
        path: String,
        after: Duration,
    },
}

impl BackendError {
    /// True when retrying the same operation cannot help until someone changes the
    /// server, the export or the class: permissions, read-only exports, names the
    /// server refuses, something other than a directory in the way. False for what may
    /// pass by itself: timeouts, lost or refused connections, a busy pool, a server
    /// asking to retry later (JUKEBOX), a handle gone stale even after a fresh mount, a
    /// tree that changed under us.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Connect { permanent, .. } | Self::Rpc { permanent, .. } => *permanent,
            Self::Status { status, .. } => status_is_permanent(*status),
            Self::Io { source, .. } => io_is_permanent(source),
            Self::NotADirectory { .. }
            | Self::Symlink { .. }
            | Self::TargetExists { .. }
            | Self::NotAFile { .. }
            | Self::TooLarge { .. }
            | Self::NotServed { .. } => true,
            Self::Resolve { .. }
            | Self::Timeout { .. }
            | Self::NoProgress { .. }
            | Self::Busy { .. }
            | Self::Cancelled { .. }
            | Self::Stalled { .. } => false,
        }
    }
}

fn status_is_permanent(status: NfsStatus) -> bool {
    use NfsStatus::*;
    match status {
        NFS3ERR_PERM | NFS3ERR_ACCES | NFS3ERR_ROFS | NFS3ERR_NAMETOOLONG | NFS3ERR_NOTDIR
        | NFS3ERR_ISDIR | NFS3ERR_EXIST | NFS3ERR_INVAL | NFS3ERR_XDEV | NFS3ERR_NODEV
        | NFS3ERR_NXIO | NFS3ERR_MLINK | NFS3ERR_FBIG | NFS3ERR_BADHANDLE | NFS3ERR_NOTSUPP
        | NFS3ERR_BADTYPE | NFS3ERR_REMOTE => true,
        // Space can be freed, a concurrent writer can finish, a restarted server can
        // answer: NOSPC, DQUOT, NOTEMPTY, NOENT, STALE, JUKEBOX, IO, SERVERFAULT, ...
        NFS3_OK | NFS3ERR_NOENT | NFS3ERR_IO | NFS3ERR_NOSPC | NFS3ERR_NOTEMPTY | NFS3ERR_DQUOT
        | NFS3ERR_STALE | NFS3ERR_NOT_SYNC | NFS3ERR_BAD_COOKIE | NFS3ERR_TOOSMALL
        | NFS3ERR_SERVERFAULT | NFS3ERR_JUKEBOX => false,
    }
}

fn io_is_permanent(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let Some(raw) = e.raw_os_error() else {
        return false;
    };
    [
        Errno::ACCESS,
        Errno::PERM,
        Errno::ROFS,
        Errno::NAMETOOLONG,
        Errno::NOTDIR,
        Errno::ISDIR,
        Errno::LOOP,
        Errno::XDEV,
        Errno::INVAL,
    ]
    .iter()
    .any(|errno| errno.raw_os_error() == raw)
}

/// Turns the errors users meet most into what to do about them.
fn hint(reason: &str) -> &'static str {
    if reason.contains("AUTH_TOOWEAK") {
        " (the server wants a privileged source port: the export has `secure`; run with --privileged-port, or export with `insecure`)"
    } else if reason.contains("MNT3ERR_ACCES") || reason.contains("MNT3ERR_PERM") {
        // Some servers (nfs-ganesha among them) answer ACCES for an export they do not have.
        " (no such export, or it refuses this client: check the share path against the server's exports and their client lists)"
    } else if reason.contains("MNT3ERR_NOENT") {
        " (no such export: check the share path against the server's exports)"
    } else if reason.contains("Program unavailable") {
        " (the portmapper answers but no NFS or MOUNT service is registered: is the NFS server running?)"
    } else if reason.contains("Connection refused") {
        " (nothing listens there: is the NFS server and its portmapper running?)"
    } else {
        ""
    }
}

/// One share, as the provisioner sees it. Paths are relative to the share root and
/// already validated; implementations must still never follow a symlink.
pub trait Share: Send + Sync {
    /// Creates `dir` and any missing parents, and applies `attrs` to `dir` if, and only
    /// if, this call made it, or an earlier call with the same `stamp` made it and
    /// stopped short (its mtime is still the stamp): any other existing directory
    /// (someone else's data, perhaps) is reported, never chmod-ed or chown-ed. Parents
    /// that exist are left as they are.
    fn create_dir(
        &self,
        dir: &RelPath,
        attrs: DirAttrs,
    ) -> impl Future<Output = Result<Made, BackendError>> + Send;
    /// Removes `dir` and everything below it, without following symlinks.
    fn remove_tree(
        &self,
        dir: &RelPath,
    ) -> impl Future<Output = Result<Removed, BackendError>> + Send;
    /// Renames `from` to `to` (same parent), never overwriting `to`.
    fn rename(
        &self,
        from: &RelPath,
        to: &RelPath,
    ) -> impl Future<Output = Result<Renamed, BackendError>> + Send;
    /// Attributes of `path`, or `None` when it does not exist.
    fn stat(
        &self,
        path: &RelPath,
    ) -> impl Future<Output = Result<Option<Stat>, BackendError>> + Send;
    /// Names in `dir` (the share root for `None`), without `.` and `..`.
    fn list(
        &self,
        dir: Option<&RelPath>,
    ) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;
    fn space(&self) -> impl Future<Output = Result<Space, BackendError>> + Send;
    /// Copies the tree at `from` into a new directory `to`, whose parent must exist and
    /// which must not (`TargetExists`), never following a symlink (see [`copy`]). `to`
    /// gets `top` (mode, owner, and the stamp as its mtime) after everything else, so a
    /// `to` carrying the stamp is a finished copy. Stops with `Cancelled` soon after
    /// `progress` is cancelled.
    fn copy_tree(
        &self,
        from: &RelPath,
        to: &RelPath,
        top: DirAttrs,
        progress: Arc<CopyProgress>,
    ) -> impl Future<Output = Result<Copied, BackendError>> + Send;
    /// Creates the regular file `path` with `mode` and `bytes`, only if nothing has that
    /// name (exclusive, so of two writers one wins); its parent must exist. Meant for the
    /// provisioner's small records, not for data.
    fn write_file(
        &self,
        path: &RelPath,
        bytes: &[u8],
        mode: u32,
    ) -> impl Future<Output = Result<Written, BackendError>> + Send;
    /// The contents of the regular file `path`, or `None` when it does not exist;
    /// refused when it is larger than `max` bytes or not a regular file.
    fn read_file(
        &self,
        path: &RelPath,
        max: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, BackendError>> + Send;
    /// What `dir` holds (see [`Usage`]), or `None` when it does not exist. Never
    /// follows a symlink or leaves `dir`; memory stays bounded whatever the depth and
    /// width; each call waits for its turn in `pace`.
    fn usage(
        &self,
        dir: &RelPath,
        pace: &Pace,
    ) -> impl Future<Output = Result<Option<Usage>, BackendError>> + Send;
}

/// Where a volume lives: what a class names and a PV records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub server: String,
    pub share: String,
    pub port: Option<u16>,
    pub mount_port: Option<u16>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.server, self.share)
    }
}

/// A share of either backend, so the controller holds one type.
#[derive(Clone)]
pub enum AnyShare {
    Nfs3(Arc<nfs3::Nfs3Share>),
    Mounted(Arc<mounted::MountedShare>),
}

macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyShare::Nfs3(s) => s.$method($($arg),*).await,
            AnyShare::Mounted(s) => s.$method($($arg),*).await,
        }
    };
}

impl Share for AnyShare {
    async fn create_dir(&self, dir: &RelPath, attrs: DirAttrs) -> Result<Made, BackendError> {
        delegate!(self, create_dir(dir, attrs))
    }
    async fn remove_tree(&self, dir: &RelPath) -> Result<Removed, BackendError> {
        delegate!(self, remove_tree(dir))
    }
    async fn rename(&self, from: &RelPath, to: &RelPath) -> Result<Renamed, BackendError> {
        delegate!(self, rename(from, to))
    }
    async fn stat(&self, path: &RelPath) -> Result<Option<Stat>, BackendError> {
        delegate!(self, stat(path))
    }
    async fn list(&self, dir: Option<&RelPath>) -> Result<Vec<String>, BackendError> {
        delegate!(self, list(dir))
    }
    async fn space(&self) -> Result<Space, BackendError> {
        delegate!(self, space())
    }
    async fn copy_tree(
        &self,
        from: &RelPath,
        to: &RelPath,
        top: DirAttrs,
        progress: Arc<CopyProgress>,
    ) -> Result<Copied, BackendError> {
        delegate!(self, copy_tree(from, to, top, progress))
    }

    async fn write_file(
        &self,
        path: &RelPath,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Written, BackendError> {
        delegate!(self, write_file(path, bytes, mode))
    }
    async fn read_file(&self, path: &RelPath, max: u64) -> Result<Option<Vec<u8>>, BackendError> {
        delegate!(self, read_file(path, max))
    }

    async fn usage(&self, dir: &RelPath, pace: &Pace) -> Result<Option<Usage>, BackendError> {
        delegate!(self, usage(dir, pace))
    }
}

#[derive(Clone, Debug)]
pub enum BackendConfig {
    Nfs3(nfs3::Nfs3Options),
    /// The mounted backend serves the one share mounted at `root`: `served` names it.
    Mounted {
        root: std::path::PathBuf,
        served: Option<Target>,
    },
}

/// Hands out one share handle per target, so every claim on a share uses the same pool.
pub struct Shares {
    config: BackendConfig,
    nfs3: Mutex<HashMap<Target, Arc<nfs3::Nfs3Share>>>,
}

impl Shares {
    pub fn new(config: BackendConfig) -> Self {
        Self {
            config,
            nfs3: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, target: &Target) -> Result<AnyShare, BackendError> {
        match &self.config {
            BackendConfig::Nfs3(opts) => {
                let mut pools = self.nfs3.lock().unwrap_or_else(|p| p.into_inner());
                let share = pools.entry(target.clone()).or_insert_with(|| {
                    Arc::new(nfs3::Nfs3Share::new(target.clone(), opts.clone()))
                });
                Ok(AnyShare::Nfs3(share.clone()))
            }
            BackendConfig::Mounted { root, served } => {
                // Ports do not matter to a mount; server and share must be the mounted ones.
                let same = served
                    .as_ref()
                    .is_none_or(|s| s.server == target.server && s.share == target.share);
                if !same {
                    return Err(BackendError::NotServed {
                        backend: "mounted",
                        served: served.as_ref().map(ToString::to_string).unwrap_or_default(),
                        wanted: target.to_string(),
                    });
                }
                Ok(AnyShare::Mounted(Arc::new(mounted::MountedShare::new(
                    root.clone(),
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: NfsStatus) -> BackendError {
        BackendError::Status {
            op: "REMOVE",
            path: "v/x".into(),
            status,
        }
    }

    #[test]
    fn refusals_are_permanent_and_outages_are_not() {
        for s in [
            NfsStatus::NFS3ERR_ACCES,
            NfsStatus::NFS3ERR_PERM,
            NfsStatus::NFS3ERR_ROFS,
            NfsStatus::NFS3ERR_NAMETOOLONG,
            NfsStatus::NFS3ERR_NOTDIR,
        ] {
            assert!(status(s).is_permanent(), "{s}");
        }
        for s in [
            NfsStatus::NFS3ERR_JUKEBOX,
            NfsStatus::NFS3ERR_STALE,
            NfsStatus::NFS3ERR_IO,
            NfsStatus::NFS3ERR_NOSPC,
            NfsStatus::NFS3ERR_NOTEMPTY,
            NfsStatus::NFS3ERR_SERVERFAULT,
        ] {
            assert!(!status(s).is_permanent(), "{s}");
        }
        let server = String::from("192.0.2.1");
        let transient = [
            BackendError::Timeout {
                op: "LOOKUP",
                server: server.clone(),
                after: Duration::from_secs(1),
            },
            BackendError::Rpc {
                op: "LOOKUP",
                server: server.clone(),
                reason: "connection reset".into(),
                permanent: false,
            },
            BackendError::Busy {
                server: server.clone(),
                waited: Duration::from_secs(1),
            },
            BackendError::NoProgress { path: "v".into() },
            BackendError::Stalled {
                op: "remove",
                path: "/pv".into(),
                after: Duration::from_secs(1),
            },
            BackendError::Io {
                op: "remove",
                path: "/pv/v".into(),
                source: std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()),
            },
        ];
        for e in &transient {
            assert!(!e.is_permanent(), "{e}");
        }
        let permanent = [
            BackendError::Symlink { path: "v".into() },
            BackendError::NotADirectory { path: "v".into() },
            BackendError::TargetExists { path: "v".into() },
            BackendError::Io {
                op: "remove",
                path: "/pv/v".into(),
                source: std::io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error()),
            },
            BackendError::Connect {
                server,
                share: "/x".into(),
                reason: "MNT3ERR_ACCES".into(),
                permanent: true,
            },
        ];
        for e in &permanent {
            assert!(e.is_permanent(), "{e}");
        }
    }

    #[test]
    fn status_is_shown_by_name() {
        assert!(
            status(NfsStatus::NFS3ERR_ACCES)
                .to_string()
                .contains("NFS3ERR_ACCES")
        );
    }
}

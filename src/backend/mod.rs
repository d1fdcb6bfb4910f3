//! Directory operations on a share, behind one trait with two implementations:
//! [`nfs3`] talks NFSv3 from user space, [`mounted`] works on a locally mounted path.
//!
//! Every operation is idempotent, because a crash or a retry can repeat any of them:
//! creating an existing directory succeeds, removing a missing one succeeds, and a rename
//! whose source is gone but whose target exists has already happened.

pub mod mounted;
pub mod nfs3;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::path::RelPath;

/// Attributes given to a newly provisioned directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirAttrs {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
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
    /// Seconds since the epoch, for archive ages.
    pub mtime: i64,
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
    #[error("cannot mount {server}:{share}: {reason}{hint}", hint = hint(reason))]
    Connect {
        server: String,
        share: String,
        reason: String,
    },
    #[error("NFS {op} on {server} timed out after {after:?}")]
    Timeout {
        op: &'static str,
        server: String,
        after: Duration,
    },
    #[error("NFS {op} on {server} failed: {reason}{hint}", hint = hint(reason))]
    Rpc {
        op: &'static str,
        server: String,
        reason: String,
    },
    #[error("{op} {path:?} failed: {status}")]
    Status {
        op: &'static str,
        path: String,
        status: String,
    },
    #[error("{path:?} exists and is not a directory")]
    NotADirectory { path: String },
    #[error("{path:?} is a symbolic link; refusing to follow it")]
    Symlink { path: String },
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
}

/// Turns the errors users meet most into what to do about them.
fn hint(reason: &str) -> &'static str {
    if reason.contains("AUTH_TOOWEAK") {
        " (the server wants a privileged source port: the export has `secure`; run with --privileged-port, or export with `insecure`)"
    } else if reason.contains("MNT3ERR_ACCES") || reason.contains("MNT3ERR_PERM") {
        " (the export refuses this client: check its client list)"
    } else if reason.contains("MNT3ERR_NOENT") {
        " (no such export: check the share path against the server's exports)"
    } else if reason.contains("Connection refused") {
        " (nothing listens there: is the NFS server and its portmapper running?)"
    } else {
        ""
    }
}

/// One share, as the provisioner sees it. Paths are relative to the share root and
/// already validated; implementations must still never follow a symlink.
pub trait Share: Send + Sync {
    /// Creates `dir` and any missing parents, and applies `attrs` to `dir`.
    fn create_dir(
        &self,
        dir: &RelPath,
        attrs: DirAttrs,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
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
    async fn create_dir(&self, dir: &RelPath, attrs: DirAttrs) -> Result<(), BackendError> {
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
pub mod conformance {
    //! The behaviour every backend must have, run against each of them.
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    pub async fn create_is_idempotent_and_applies_attrs<S: Share>(share: &S) {
        let attrs = DirAttrs {
            mode: 0o750,
            uid: Some(1234),
            gid: Some(2345),
        };
        share.create_dir(&p("ns/claim"), attrs).await.unwrap();
        share.create_dir(&p("ns/claim"), attrs).await.unwrap();
        let st = share.stat(&p("ns/claim")).await.unwrap().unwrap();
        assert_eq!(
            (st.kind, st.mode & 0o7777, st.uid, st.gid),
            (Kind::Dir, 0o750, 1234, 2345)
        );
        let parent = share.stat(&p("ns")).await.unwrap().unwrap();
        assert_eq!(
            (parent.kind, parent.mode & 0o7777),
            (Kind::Dir, PARENT_MODE)
        );
        let wide = DirAttrs {
            mode: 0o777,
            uid: None,
            gid: None,
        };
        share.create_dir(&p("wide"), wide).await.unwrap();
        assert_eq!(
            share.stat(&p("wide")).await.unwrap().unwrap().mode & 0o7777,
            0o777
        );
        assert!(
            share
                .list(None)
                .await
                .unwrap()
                .contains(&"wide".to_string())
        );
    }

    pub async fn remove_and_rename_are_idempotent<S: Share>(share: &S) {
        let attrs = DirAttrs {
            mode: 0o777,
            uid: None,
            gid: None,
        };
        share.create_dir(&p("r/a"), attrs).await.unwrap();
        assert!(matches!(
            share.remove_tree(&p("r/a")).await.unwrap(),
            Removed::Removed { .. }
        ));
        assert_eq!(
            share.remove_tree(&p("r/a")).await.unwrap(),
            Removed::AlreadyGone
        );
        assert_eq!(
            share.remove_tree(&p("never/there")).await.unwrap(),
            Removed::AlreadyGone
        );
        assert!(
            share.stat(&p("r")).await.unwrap().is_some(),
            "the parent stays"
        );

        share.create_dir(&p("r/b"), attrs).await.unwrap();
        assert_eq!(
            share.rename(&p("r/b"), &p("r/archived-b")).await.unwrap(),
            Renamed::Done
        );
        assert_eq!(
            share.rename(&p("r/b"), &p("r/archived-b")).await.unwrap(),
            Renamed::AlreadyDone
        );
        assert_eq!(
            share.rename(&p("r/c"), &p("r/archived-c")).await.unwrap(),
            Renamed::SourceMissing
        );
        share.create_dir(&p("r/b"), attrs).await.unwrap();
        assert!(matches!(
            share.rename(&p("r/b"), &p("r/archived-b")).await,
            Err(BackendError::TargetExists { .. })
        ));
        assert!(
            share.stat(&p("r/b")).await.unwrap().is_some(),
            "a refused rename leaves the source"
        );
    }

    /// `disk` is where the share's files are on this machine, to plant what a hostile or
    /// careless user could leave in a volume.
    pub async fn removal_never_follows_symlinks<S: Share>(share: &S, disk: &std::path::Path) {
        use std::fs;
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"keep").unwrap();
        let vol = disk.join("vol");
        fs::create_dir_all(vol.join("a/b/c")).unwrap();
        fs::write(vol.join("a/b/c/deep.txt"), b"x").unwrap();
        fs::create_dir(vol.join("many")).unwrap();
        // Enough names to need several READDIRPLUS pages.
        for i in 0..700 {
            fs::write(
                vol.join(format!("many/file-with-a-longish-name-{i:04}")),
                b"y",
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(outside.path(), vol.join("link-out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("precious"), vol.join("a/file-link"))
            .unwrap();
        fs::write(
            vol.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")),
            b"z",
        )
        .unwrap();

        let removed = share.remove_tree(&p("vol")).await.unwrap();
        assert!(
            matches!(removed, Removed::Removed { entries } if entries >= 700),
            "{removed:?}"
        );
        assert!(!vol.exists());
        assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"keep");

        // A symlink planted as a parent must not redirect creation or removal.
        std::os::unix::fs::symlink(outside.path(), disk.join("evil")).unwrap();
        let attrs = DirAttrs {
            mode: 0o777,
            uid: None,
            gid: None,
        };
        assert!(matches!(
            share.create_dir(&p("evil/x"), attrs).await,
            Err(BackendError::Symlink { .. })
        ));
        assert!(!outside.path().join("x").exists());
        fs::create_dir(outside.path().join("y")).unwrap();
        assert!(matches!(
            share.remove_tree(&p("evil/y")).await,
            Err(BackendError::Symlink { .. })
        ));
        assert!(outside.path().join("y").exists());
        // A symlink as the volume itself is removed as an entry, its target kept.
        assert_eq!(
            share.remove_tree(&p("evil")).await.unwrap(),
            Removed::Removed { entries: 1 }
        );
        assert!(outside.path().join("y").exists());
    }

    pub async fn space_is_reported<S: Share>(share: &S) {
        let s = share.space().await.unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes, "{s:?}");
    }
}

//! The NFSv3 backend: plain RPCs from user space, no mount, no privileges.
//!
//! `nfs3_client` carries one call at a time per connection and has no timeouts, so each
//! share gets a small pool of connections ([`pool`]), slots bounding them, and a timeout
//! around every call. Removal of whole trees is in [`remove`].
//!
//! About 500 lines, kept whole: what remains here are the share's operations (create,
//! rename, stat, list, space), each one short sequence of RPCs over the same handles
//! and status mapping; pool and removal are already apart.

mod copy;
mod file;
mod pool;
mod remove;
mod usage;

use std::net::IpAddr;
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{
    self, FSSTAT3args, GETATTR3args, LOOKUP3args, MKDIR3args, Nfs3Option, Nfs3Result,
    READDIRPLUS3args, RENAME3args, SETATTR3args, diropargs3, fattr3, filename3, ftype3, nfs_fh3,
    nfsstat3, nfstime3, sattr3, set_mtime,
};

use super::{
    BackendError, Copied, CopyProgress, DirAttrs, Kind, Made, PARENT_MODE, Pace, Removed, Renamed,
    Share, Space, Stat, Target, Usage, Written,
};
use crate::path::RelPath;
use pool::{Purpose, Session, rpc};

/// Small enough that a READDIRPLUS reply fits one RPC fragment, which the client requires.
const READDIR_MAXCOUNT: u32 = 32 * 1024;
const READDIR_DIRCOUNT: u32 = 8 * 1024;

#[derive(Clone, Debug)]
pub struct Nfs3Options {
    /// AUTH_SYS identity the provisioner acts as on the server.
    pub uid: u32,
    pub gid: u32,
    /// Bind a source port below 1024, for exports with `secure` (needs NET_BIND_SERVICE).
    pub privileged_port: bool,
    /// Deadline for each NFS call, and for connecting and mounting.
    pub timeout: Duration,
    /// Connections per share: the bound on concurrent NFS calls to it.
    pub max_connections: usize,
    /// Portmapper port (111 unless a test server runs elsewhere).
    pub portmapper_port: u16,
}

impl Default for Nfs3Options {
    fn default() -> Self {
        Self {
            uid: 0,
            gid: 0,
            privileged_port: false,
            timeout: Duration::from_secs(10),
            max_connections: 8,
            portmapper_port: 111,
        }
    }
}

pub struct Nfs3Share {
    target: Target,
    opts: Nfs3Options,
    pool: pool::Pool,
}

impl Nfs3Share {
    pub fn new(target: Target, opts: Nfs3Options) -> Self {
        let pool = pool::Pool::new(opts.max_connections);
        Self { target, opts, pool }
    }

    /// A session for provisioning and other short operations.
    async fn session(&self) -> Result<Session<'_>, BackendError> {
        self.session_for(Purpose::Short).await
    }
}

/// nfs3_client takes only IP literals; names are resolved here, IPv4 first because the
/// client connects over IPv4.
async fn resolve(host: &str, timeout: Duration) -> Result<IpAddr, BackendError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip);
    }
    let err = |reason: String| BackendError::Resolve {
        host: host.to_string(),
        reason,
    };
    let addrs = tokio::time::timeout(timeout, tokio::net::lookup_host((bare, 0)))
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?
        .map(|a| a.ip())
        .collect::<Vec<_>>();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| err("no addresses".into()))
}

struct Entry {
    name: Vec<u8>,
    fh: Option<nfs_fh3>,
    attrs: Option<fattr3>,
}

struct Page {
    entries: Vec<Entry>,
    last_cookie: u64,
    verf: nfs3::cookieverf3,
    eof: bool,
}

fn name(s: &[u8]) -> filename3<'static> {
    filename3::from(s.to_vec())
}

fn status(op: &'static str, path: impl Into<String>, stat: nfsstat3) -> BackendError {
    BackendError::Status {
        op,
        path: path.into(),
        status: stat,
    }
}

fn kind_of(t: ftype3) -> Kind {
    match t {
        ftype3::NF3DIR => Kind::Dir,
        ftype3::NF3REG => Kind::File,
        ftype3::NF3LNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn stat_of(a: &fattr3) -> Stat {
    Stat {
        kind: kind_of(a.type_),
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        changed: i64::from(a.mtime.seconds.max(a.ctime.seconds)),
        mtime: (a.mtime.seconds, a.mtime.nseconds),
    }
}

/// What MKDIR found: a directory it made, or an entry already there (with attributes).
enum Mkdir {
    Made(nfs_fh3),
    Existed(nfs_fh3, fattr3),
}

fn sattr(mode: u32, uid: Option<u32>, gid: Option<u32>) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(mode),
        uid: uid.map_or(Nfs3Option::None, Nfs3Option::Some),
        gid: gid.map_or(Nfs3Option::None, Nfs3Option::Some),
        ..Default::default()
    }
}

impl Session<'_> {
    async fn getattr(&mut self, fh: &nfs_fh3, path: &str) -> Result<fattr3, BackendError> {
        match rpc!(
            self,
            "GETATTR",
            getattr,
            &GETATTR3args { object: fh.clone() }
        )? {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((stat, _)) => Err(status("GETATTR", path, stat)),
        }
    }

    /// Looks up one name; `None` when it does not exist.
    async fn lookup(
        &mut self,
        dir: &nfs_fh3,
        entry: &[u8],
        path: &str,
    ) -> Result<Option<(nfs_fh3, fattr3)>, BackendError> {
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name(entry),
            },
        };
        match rpc!(self, "LOOKUP", lookup, &args)? {
            Nfs3Result::Ok(ok) => {
                let attrs = match ok.obj_attributes {
                    Nfs3Option::Some(a) => a,
                    Nfs3Option::None => self.getattr(&ok.object, path).await?,
                };
                Ok(Some((ok.object, attrs)))
            }
            Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
            Nfs3Result::Err((stat, _)) => Err(status("LOOKUP", path, stat)),
        }
    }

    /// Walks `segments` from the root, refusing anything but real directories on the way.
    async fn walk(&mut self, segments: &[String]) -> Result<Option<nfs_fh3>, BackendError> {
        let mut fh = self.root();
        for (i, seg) in segments.iter().enumerate() {
            let path = segments[..=i].join("/");
            match self.lookup(&fh, seg.as_bytes(), &path).await? {
                None => return Ok(None),
                Some((child, attrs)) => {
                    require_dir(&attrs, &path)?;
                    fh = child;
                }
            }
        }
        Ok(Some(fh))
    }

    async fn mkdir(
        &mut self,
        dir: &nfs_fh3,
        entry: &str,
        attributes: sattr3,
        path: &str,
    ) -> Result<Mkdir, BackendError> {
        let args = MKDIR3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(entry.as_bytes()),
            },
            attributes,
        };
        match rpc!(self, "MKDIR", mkdir, &args)? {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(fh) => Ok(Mkdir::Made(fh)),
                Nfs3Option::None => {
                    let (fh, _) = self.existing(dir, entry, path).await?;
                    Ok(Mkdir::Made(fh))
                }
            },
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => {
                let (fh, attrs) = self.existing(dir, entry, path).await?;
                Ok(Mkdir::Existed(fh, attrs))
            }
            Nfs3Result::Err((stat, _)) => Err(status("MKDIR", path, stat)),
        }
    }

    async fn existing(
        &mut self,
        dir: &nfs_fh3,
        entry: &str,
        path: &str,
    ) -> Result<(nfs_fh3, fattr3), BackendError> {
        self.lookup(dir, entry.as_bytes(), path)
            .await?
            .ok_or_else(|| status("MKDIR", path, nfsstat3::NFS3ERR_NOENT))
    }

    async fn setattr(
        &mut self,
        fh: &nfs_fh3,
        attrs: sattr3,
        path: &str,
    ) -> Result<(), BackendError> {
        let args = SETATTR3args {
            object: fh.clone(),
            new_attributes: attrs,
            guard: Nfs3Option::None,
        };
        match rpc!(self, "SETATTR", setattr, &args)? {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((stat, _)) => Err(status("SETATTR", path, stat)),
        }
    }

    /// One page of a directory, from the start: (name, handle, attributes).
    async fn read_page(
        &mut self,
        dir: &nfs_fh3,
        cookie: u64,
        verf: nfs3::cookieverf3,
        path: &str,
    ) -> Result<Page, BackendError> {
        let args = READDIRPLUS3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verf,
            dircount: READDIR_DIRCOUNT,
            maxcount: READDIR_MAXCOUNT,
        };
        match rpc!(self, "READDIRPLUS", readdirplus, &args)? {
            Nfs3Result::Ok(ok) => {
                let mut last = cookie;
                let mut out = Vec::new();
                for e in ok.reply.entries.0 {
                    last = e.cookie;
                    let n = e.name.as_ref().to_vec();
                    if n == b"." || n == b".." {
                        continue;
                    }
                    let fh = match e.name_handle {
                        Nfs3Option::Some(fh) => Some(fh),
                        Nfs3Option::None => None,
                    };
                    let attrs = match e.name_attributes {
                        Nfs3Option::Some(a) => Some(a),
                        Nfs3Option::None => None,
                    };
                    // Names stay bytes: one that is not UTF-8 must still be removable.
                    out.push(Entry { name: n, fh, attrs });
                }
                Ok(Page {
                    entries: out,
                    last_cookie: last,
                    verf: ok.cookieverf,
                    eof: ok.reply.eof,
                })
            }
            Nfs3Result::Err((stat, _)) => Err(status("READDIRPLUS", path, stat)),
        }
    }
}

fn require_dir(attrs: &fattr3, path: &str) -> Result<(), BackendError> {
    match attrs.type_ {
        ftype3::NF3DIR => Ok(()),
        ftype3::NF3LNK => Err(BackendError::Symlink {
            path: path.to_string(),
        }),
        _ => Err(BackendError::NotADirectory {
            path: path.to_string(),
        }),
    }
}

/// The status of a reply whose success carries nothing we need.
trait MapStatus {
    fn map_status(self) -> Option<nfsstat3>;
}

impl<T, E> MapStatus for Nfs3Result<T, E> {
    fn map_status(self) -> Option<nfsstat3> {
        match self {
            Nfs3Result::Ok(_) => None,
            Nfs3Result::Err((stat, _)) => Some(stat),
        }
    }
}

impl Share for Nfs3Share {
    async fn create_dir(&self, dir: &RelPath, attrs: DirAttrs) -> Result<Made, BackendError> {
        let mut s = self.session().await?;
        let mut fh = s.root();
        let segments = dir.segments();
        for (i, seg) in segments.iter().enumerate() {
            let path = segments[..=i].join("/");
            let is_leaf = i + 1 == segments.len();
            // The leaf gets its stamp in the MKDIR itself: if the reply is lost and the
            // call retried on a fresh connection, the EXIST that comes back still shows
            // the directory as ours.
            let (on_make, full) = if is_leaf {
                let mut full = sattr(attrs.mode, attrs.uid, attrs.gid);
                if let Some((seconds, nseconds)) = attrs.stamp {
                    full.mtime = set_mtime::SET_TO_CLIENT_TIME(nfstime3 { seconds, nseconds });
                }
                let mut on_make = sattr(attrs.mode, None, None);
                on_make.mtime = full.mtime;
                (on_make, full)
            } else {
                (
                    sattr(PARENT_MODE, None, None),
                    sattr(PARENT_MODE, None, None),
                )
            };
            // MKDIR is exclusive on the server: EXIST tells a directory made by someone
            // else from one made now, with no window between a look and a make.
            match s.mkdir(&fh, seg, on_make, &path).await? {
                Mkdir::Made(child) => {
                    // A server umask may narrow the mode given to MKDIR; set it as meant,
                    // with the owner.
                    s.setattr(&child, full, &path).await?;
                    fh = child;
                }
                Mkdir::Existed(child, a) => {
                    require_dir(&a, &path)?;
                    if is_leaf {
                        let st = stat_of(&a);
                        if attrs
                            .stamp
                            .is_some_and(|stamp| super::stamped(stamp, st.mtime))
                        {
                            // An earlier attempt for the same claim made it and stopped
                            // before its attributes: finish it.
                            s.setattr(&child, full, &path).await?;
                            return Ok(Made::Created);
                        }
                        return Ok(Made::Existed(st));
                    }
                    fh = child;
                }
            }
        }
        Ok(Made::Created)
    }

    async fn remove_tree(&self, dir: &RelPath) -> Result<Removed, BackendError> {
        // Reclaim may hold only the slots not kept for provisioning.
        let mut s = self.session_for(Purpose::Reclaim).await?;
        let Some(parent) = s.walk(dir.parent_segments()).await? else {
            return Ok(Removed::AlreadyGone);
        };
        let path = dir.to_string();
        let Some((fh, attrs)) = s.lookup(&parent, dir.leaf().as_bytes(), &path).await? else {
            return Ok(Removed::AlreadyGone);
        };
        if attrs.type_ != ftype3::NF3DIR {
            // A file or symlink where the volume was: remove the entry itself, never its target.
            s.remove_entry(&parent, dir.leaf().as_bytes(), false, &path)
                .await?;
            return Ok(Removed::Removed { entries: 1 });
        }
        let mut entries = self.remove_subtrees(&mut s, &fh, &path).await?;
        // Whatever is left (files, or entries created meanwhile) goes on this session.
        entries += s.empty_dir(fh, &path, &remove::Stop::default()).await?;
        s.remove_entry(&parent, dir.leaf().as_bytes(), true, &path)
            .await?;
        Ok(Removed::Removed {
            entries: entries + 1,
        })
    }
    async fn rename(&self, from: &RelPath, to: &RelPath) -> Result<Renamed, BackendError> {
        let mut s = self.session().await?;
        let from_parent = s.walk(from.parent_segments()).await?;
        let to_parent = s.walk(to.parent_segments()).await?;
        let (Some(from_parent), Some(to_parent)) = (from_parent, to_parent) else {
            return Ok(Renamed::SourceMissing);
        };
        let (from_path, to_path) = (from.to_string(), to.to_string());
        let source = s
            .lookup(&from_parent, from.leaf().as_bytes(), &from_path)
            .await?;
        let target = s.lookup(&to_parent, to.leaf().as_bytes(), &to_path).await?;
        match (source, target) {
            (None, Some(_)) => return Ok(Renamed::AlreadyDone),
            (None, None) => return Ok(Renamed::SourceMissing),
            // RENAME would replace an empty target; an archive is never overwritten.
            (Some(_), Some(_)) => return Err(BackendError::TargetExists { path: to_path }),
            (Some(_), None) => {}
        }
        let args = RENAME3args {
            from: diropargs3 {
                dir: from_parent,
                name: name(from.leaf().as_bytes()),
            },
            to: diropargs3 {
                dir: to_parent,
                name: name(to.leaf().as_bytes()),
            },
        };
        match rpc!(s, "RENAME", rename, &args)?.map_status() {
            None => Ok(Renamed::Done),
            Some(stat) => Err(status("RENAME", from_path, stat)),
        }
    }

    async fn stat(&self, path: &RelPath) -> Result<Option<Stat>, BackendError> {
        let mut s = self.session().await?;
        let Some(parent) = s.walk(path.parent_segments()).await? else {
            return Ok(None);
        };
        Ok(s.lookup(&parent, path.leaf().as_bytes(), &path.to_string())
            .await?
            .map(|(_, a)| stat_of(&a)))
    }

    async fn list(&self, dir: Option<&RelPath>) -> Result<Vec<String>, BackendError> {
        let mut s = self.session().await?;
        let (fh, path) = match dir {
            None => (s.root(), "/".to_string()),
            Some(d) => match s.walk(d.segments()).await? {
                Some(fh) => (fh, d.to_string()),
                None => return Ok(Vec::new()),
            },
        };
        let mut names = Vec::new();
        let (mut cookie, mut verf) = (0, nfs3::cookieverf3::default());
        loop {
            let page = s.read_page(&fh, cookie, verf, &path).await?;
            names.extend(
                page.entries
                    .into_iter()
                    .map(|e| String::from_utf8_lossy(&e.name).into_owned()),
            );
            if page.eof || page.last_cookie == cookie {
                break;
            }
            (cookie, verf) = (page.last_cookie, page.verf);
        }
        Ok(names)
    }

    async fn space(&self) -> Result<Space, BackendError> {
        let mut s = self.session().await?;
        let root = s.root();
        match rpc!(s, "FSSTAT", fsstat, &FSSTAT3args { fsroot: root })? {
            Nfs3Result::Ok(ok) => Ok(Space {
                total_bytes: ok.tbytes,
                free_bytes: ok.fbytes,
                avail_bytes: ok.abytes,
            }),
            Nfs3Result::Err((stat, _)) => Err(status("FSSTAT", "/", stat)),
        }
    }

    async fn copy_tree(
        &self,
        from: &RelPath,
        to: &RelPath,
        top: DirAttrs,
        progress: std::sync::Arc<CopyProgress>,
    ) -> Result<Copied, BackendError> {
        copy::copy_tree(self, from, to, top, &progress).await
    }

    async fn write_file(
        &self,
        path: &RelPath,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Written, BackendError> {
        self.write_new_file(path, bytes, mode).await
    }

    async fn read_file(&self, path: &RelPath, max: u64) -> Result<Option<Vec<u8>>, BackendError> {
        self.read_small_file(path, max).await
    }

    async fn usage(&self, dir: &RelPath, pace: &Pace) -> Result<Option<Usage>, BackendError> {
        self.usage_of(dir, pace).await
    }
}

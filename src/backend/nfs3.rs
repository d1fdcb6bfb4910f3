//! The NFSv3 backend: plain RPCs from user space, no mount, no privileges.
//!
//! `nfs3_client` carries one call at a time per connection and has no timeouts, so each
//! share gets a small pool of connections, a semaphore bounding them, and a timeout
//! around every call. A connection that timed out or saw an I/O error is dropped, never
//! returned to the pool: its stream may still hold a late reply.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{
    self, FSSTAT3args, GETATTR3args, LOOKUP3args, MKDIR3args, Nfs3Option, Nfs3Result,
    READDIRPLUS3args, REMOVE3args, RENAME3args, RMDIR3args, SETATTR3args, diropargs3, fattr3,
    filename3, ftype3, nfs_fh3, nfsstat3, nfstime3, sattr3, set_mtime,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Client, Nfs3ConnectionBuilder, RpcError};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    BackendError, DirAttrs, Kind, Made, PARENT_MODE, Removed, Renamed, Share, Space, Stat, Target,
};
use crate::metrics;
use crate::path::RelPath;

type Client = Nfs3Client<TokioIo<TcpStream>>;

/// Small enough that a READDIRPLUS reply fits one RPC fragment, which the client requires.
const READDIR_MAXCOUNT: u32 = 32 * 1024;
const READDIR_DIRCOUNT: u32 = 8 * 1024;
/// Sessions one removal may use at once, its own included.
const REMOVE_PARALLELISM: usize = 4;

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

struct Conn {
    client: Client,
    root: nfs_fh3,
}

pub struct Nfs3Share {
    target: Target,
    opts: Nfs3Options,
    idle: Mutex<Vec<Conn>>,
    permits: std::sync::Arc<Semaphore>,
}

impl Nfs3Share {
    pub fn new(target: Target, opts: Nfs3Options) -> Self {
        let permits = std::sync::Arc::new(Semaphore::new(opts.max_connections.max(1)));
        Self {
            target,
            opts,
            idle: Mutex::new(Vec::new()),
            permits,
        }
    }

    async fn session(&self) -> Result<Session<'_>, BackendError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendError::Rpc {
                op: "connect",
                server: self.target.server.clone(),
                reason: "connection pool closed".into(),
            })?;
        self.session_with(permit).await
    }

    /// A pooled connection, or a new one, under a slot already held.
    async fn session_with(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Result<Session<'_>, BackendError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Session {
            share: self,
            conn: Some(conn),
            broken: false,
            _permit: permit,
        })
    }

    /// Another session only if a connection slot is free right now: extra hands for one
    /// operation must never wait on slots that operation's own session may be holding.
    async fn spare_session(&self) -> Option<Session<'_>> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.session_with(permit).await.ok()
    }

    async fn connect(&self) -> Result<Conn, BackendError> {
        let server = &self.target.server;
        let ip = resolve(server, self.opts.timeout).await?;
        let cred = auth_unix {
            uid: self.opts.uid,
            gid: self.opts.gid,
            ..Default::default()
        };
        let mut builder =
            Nfs3ConnectionBuilder::new(TokioConnector, ip.to_string(), &self.target.share)
                .credential(opaque_auth::auth_unix(&cred))
                .connect_from_privileged_port(self.opts.privileged_port)
                .portmapper_port(self.opts.portmapper_port);
        if let Some(p) = self.target.port {
            builder = builder.nfs3_port(p);
        }
        if let Some(p) = self.target.mount_port {
            builder = builder.mount_port(p);
        }
        let start = Instant::now();
        let mounted = tokio::time::timeout(self.opts.timeout, builder.mount()).await;
        metrics::nfs_call("mount", start.elapsed(), matches!(mounted, Ok(Ok(_))));
        let conn = match mounted {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(BackendError::Connect {
                    server: server.clone(),
                    share: self.target.share.clone(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(BackendError::Timeout {
                    op: "MOUNT",
                    server: server.clone(),
                    after: self.opts.timeout,
                });
            }
        };
        let root = conn.root_nfs_fh3();
        // The mount connection is only needed for MNT; keep just the NFS one open.
        Ok(Conn {
            client: conn.into_nfs3_client(),
            root,
        })
    }
}

impl Nfs3Share {
    /// Removes what `dir` holds in parallel: entries and whole subtrees are handed to
    /// this session and to as many extra ones as the pool has free right now (at most
    /// [`REMOVE_PARALLELISM`] in all). A large volume then does not take all night over
    /// a slow link, and never starves other volumes' work of connections. Anything it
    /// cannot classify is left for the sequential pass that follows.
    async fn remove_subtrees<'a>(
        &'a self,
        s: &mut Session<'a>,
        dir: &nfs_fh3,
        path: &str,
    ) -> Result<u64, BackendError> {
        let mut removed = 0u64;
        let mut seen = HashSet::new();
        loop {
            let page = s
                .read_page(dir, 0, nfs3::cookieverf3::default(), path)
                .await?;
            let work: VecDeque<Work> = page
                .entries
                .into_iter()
                .filter(|e| seen.insert(e.name.clone()))
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
            let queue = Mutex::new(work);
            let mut workers = vec![drain(SessionRef::Borrowed(&mut *s), &queue, dir, path)];
            workers.extend(
                extra
                    .into_iter()
                    .map(|x| drain(SessionRef::Owned(x), &queue, dir, path)),
            );
            removed += futures::future::try_join_all(workers)
                .await?
                .into_iter()
                .sum::<u64>();
        }
    }
}

/// One entry of a directory being emptied.
enum Work {
    /// Not a directory (file, symlink, ...): removed by name, never followed.
    Entry(Vec<u8>),
    Dir(Vec<u8>, nfs_fh3),
}

/// Removes entries of `dir` taken from `queue` until it is empty.
async fn drain(
    mut session: SessionRef<'_, '_>,
    queue: &Mutex<VecDeque<Work>>,
    dir: &nfs_fh3,
    path: &str,
) -> Result<u64, BackendError> {
    let mut n = 0u64;
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        match next {
            None => return Ok(n),
            Some(Work::Entry(name)) => {
                let child = format!("{path}/{}", String::from_utf8_lossy(&name));
                session.get().remove(dir, &name, false, &child).await?;
            }
            Some(Work::Dir(name, fh)) => {
                let child = format!("{path}/{}", String::from_utf8_lossy(&name));
                n += session.get().empty_dir(fh, &child).await?;
                session.get().remove(dir, &name, true, &child).await?;
            }
        }
        n += 1;
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

/// One pooled connection for the duration of an operation.
struct Session<'a> {
    share: &'a Nfs3Share,
    conn: Option<Conn>,
    broken: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.broken
        {
            self.share
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

/// Runs one RPC with the share's timeout, records its latency, and marks the session
/// broken when the connection can no longer be trusted.
macro_rules! rpc {
    ($s:expr, $op:literal, $method:ident, $args:expr) => {{
        let timeout = $s.share.opts.timeout;
        let start = Instant::now();
        let conn = $s
            .conn
            .as_mut()
            .expect("session holds a connection until dropped");
        let result = tokio::time::timeout(timeout, conn.client.$method($args)).await;
        metrics::nfs_call($op, start.elapsed(), matches!(result, Ok(Ok(_))));
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                $s.broken |= !RpcError::is_connection_reusable(&e);
                Err(BackendError::Rpc {
                    op: $op,
                    server: $s.share.target.server.clone(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                $s.broken = true;
                Err(BackendError::Timeout {
                    op: $op,
                    server: $s.share.target.server.clone(),
                    after: timeout,
                })
            }
        }
    }};
}

fn name(s: &[u8]) -> filename3<'static> {
    filename3::from(s.to_vec())
}

fn status(op: &'static str, path: impl Into<String>, stat: nfsstat3) -> BackendError {
    BackendError::Status {
        op,
        path: path.into(),
        status: format!("{stat:?}"),
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
    fn root(&self) -> nfs_fh3 {
        self.conn
            .as_ref()
            .map(|c| c.root.clone())
            .unwrap_or_default()
    }

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
        mode: u32,
        path: &str,
    ) -> Result<Mkdir, BackendError> {
        let args = MKDIR3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(entry.as_bytes()),
            },
            attributes: sattr(mode, None, None),
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

    async fn remove(
        &mut self,
        dir: &nfs_fh3,
        entry: &[u8],
        is_dir: bool,
        path: &str,
    ) -> Result<(), BackendError> {
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
            None | Some(nfsstat3::NFS3ERR_NOENT) => Ok(()),
            Some(stat) => Err(status(if is_dir { "RMDIR" } else { "REMOVE" }, path, stat)),
        }
    }

    /// Empties `dir` depth-first with an explicit stack, so depth costs memory, not
    /// recursion. Each directory is read again from cookie 0 after a page of removals:
    /// cookies across removals are not reliable on every server.
    async fn empty_dir(&mut self, top: nfs_fh3, top_path: &str) -> Result<u64, BackendError> {
        struct Frame {
            fh: nfs_fh3,
            name: Vec<u8>,
            path: String,
            removed: HashSet<Vec<u8>>,
        }
        let mut removed_total = 0u64;
        let mut stack = vec![Frame {
            fh: top,
            name: Vec::new(),
            path: top_path.to_string(),
            removed: HashSet::new(),
        }];
        while let Some(frame) = stack.last() {
            let (dir_fh, dir_path) = (frame.fh.clone(), frame.path.clone());
            let page = self
                .read_page(&dir_fh, 0, nfs3::cookieverf3::default(), &dir_path)
                .await?;
            if page.entries.is_empty() {
                let done = stack.pop().expect("the loop holds a frame");
                if let Some(parent) = stack.last_mut() {
                    let parent_fh = parent.fh.clone();
                    parent.removed.insert(done.name.clone());
                    self.remove(&parent_fh, &done.name, true, &done.path)
                        .await?;
                    removed_total += 1;
                }
                continue;
            }
            if page.entries.iter().all(|e| frame.removed.contains(&e.name)) {
                return Err(BackendError::NoProgress { path: dir_path });
            }
            let mut descend = None;
            for Entry {
                name: entry,
                fh,
                attrs,
            } in page.entries
            {
                let child_path = format!("{dir_path}/{}", String::from_utf8_lossy(&entry));
                let (fh, attrs) = match (fh, attrs) {
                    (Some(fh), Some(a)) => (fh, a),
                    // Some servers leave handle or attributes out of READDIRPLUS.
                    _ => match self.lookup(&dir_fh, &entry, &child_path).await? {
                        Some(found) => found,
                        None => continue,
                    },
                };
                if attrs.type_ == ftype3::NF3DIR {
                    descend = Some(Frame {
                        fh,
                        name: entry,
                        path: child_path,
                        removed: HashSet::new(),
                    });
                    break;
                }
                // Files, symlinks and the rest go by name: a symlink is never followed.
                self.remove(&dir_fh, &entry, false, &child_path).await?;
                removed_total += 1;
                if let Some(f) = stack.last_mut() {
                    f.removed.insert(entry);
                }
            }
            stack.extend(descend);
        }
        Ok(removed_total)
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
            let mode = if is_leaf { attrs.mode } else { PARENT_MODE };
            // MKDIR is exclusive on the server: EXIST tells a directory made by someone
            // else (or an earlier attempt) from one made now, with no window between a
            // look and a make.
            match s.mkdir(&fh, seg, mode, &path).await? {
                Mkdir::Made(child) => {
                    // A server umask may narrow the mode given to MKDIR; set it as meant.
                    let set = if is_leaf {
                        let mut a = sattr(attrs.mode, attrs.uid, attrs.gid);
                        if let Some((seconds, nseconds)) = attrs.stamp {
                            a.mtime = set_mtime::SET_TO_CLIENT_TIME(nfstime3 { seconds, nseconds });
                        }
                        a
                    } else {
                        sattr(PARENT_MODE, None, None)
                    };
                    s.setattr(&child, set, &path).await?;
                    fh = child;
                }
                Mkdir::Existed(child, a) => {
                    require_dir(&a, &path)?;
                    if is_leaf {
                        return Ok(Made::Existed(stat_of(&a)));
                    }
                    fh = child;
                }
            }
        }
        Ok(Made::Created)
    }

    async fn remove_tree(&self, dir: &RelPath) -> Result<Removed, BackendError> {
        let mut s = self.session().await?;
        let Some(parent) = s.walk(dir.parent_segments()).await? else {
            return Ok(Removed::AlreadyGone);
        };
        let path = dir.to_string();
        let Some((fh, attrs)) = s.lookup(&parent, dir.leaf().as_bytes(), &path).await? else {
            return Ok(Removed::AlreadyGone);
        };
        if attrs.type_ != ftype3::NF3DIR {
            // A file or symlink where the volume was: remove the entry itself, never its target.
            s.remove(&parent, dir.leaf().as_bytes(), false, &path)
                .await?;
            return Ok(Removed::Removed { entries: 1 });
        }
        let mut entries = self.remove_subtrees(&mut s, &fh, &path).await?;
        // Whatever is left (files, or entries created meanwhile) goes on this session.
        entries += s.empty_dir(fh, &path).await?;
        s.remove(&parent, dir.leaf().as_bytes(), true, &path)
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
}

//! Connections to one share: a pool of idle ones, slots bounding the calls in flight, and
//! the rules that keep a connection out of the pool once it can no longer be trusted.
//!
//! `nfs3_client` carries one call at a time per connection and reads its reply in place,
//! so a connection is reusable only when the last call on it read a whole reply. A call
//! abandoned mid-way (its future dropped, or timed out) leaves a reply, or half of one,
//! on the wire: the next call would read it as its own. Such connections, and any that
//! saw an I/O or protocol error, are dropped, never pooled.
//!
//! Slots: every session holds one of `max_connections`; a reclaim session also holds one
//! of `max_connections - reserved`, so reclaims together never take the slots kept for
//! provisioning and the other short operations. Every wait for a slot has a deadline.
//!
//! About 500 lines, kept whole: the pool, the slots and the `rpc!` macro share one
//! invariant (a connection goes back only after a whole reply), which reads best in one
//! place.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nfs3_client::net::Connector;
use nfs3_client::nfs3_types::nfs3::{
    FSSTAT3args, GETATTR3args, LOOKUP3args, MKDIR3args, READDIRPLUS3args, REMOVE3args, RENAME3args,
    RMDIR3args, SETATTR3args, diropargs3, filename3, nfs_fh3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::{ConnectError, MountError, Nfs3Client, Nfs3ConnectionBuilder, RpcError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Nfs3Share;
use crate::backend::BackendError;
use crate::metrics;

pub(super) type Client = Nfs3Client<Stream>;

/// A TCP stream on which the end of the stream is an error. `nfs3_client` (0.9.1) reads
/// a reply with a loop that takes a read of 0 bytes as "nothing yet" and tries again: on
/// a connection the server closed (a restart) every call would spin until its timeout
/// instead of failing at once and being retried on a fresh connection.
pub(super) struct Stream(TcpStream);

impl nfs3_client::io::AsyncRead for Stream {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncReadExt::read(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Stream {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncWriteExt::write(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }
}

/// Connects like `nfs3_client::tokio::TokioConnector`, handing out [`Stream`]s.
struct StreamConnector;

impl Connector for StreamConnector {
    type Connection = Stream;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Stream> {
        Ok(Stream(TcpStream::connect(addr).await?))
    }

    async fn connect_with_port(
        &self,
        addr: SocketAddr,
        local_port: u16,
    ) -> std::io::Result<Stream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let unspecified: IpAddr = if addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        socket.bind(SocketAddr::new(unspecified, local_port))?;
        Ok(Stream(socket.connect(addr).await?))
    }
}

pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) root: nfs_fh3,
}

pub(super) struct Pool {
    idle: Mutex<Vec<Conn>>,
    all: Arc<Semaphore>,
    /// Slots reclaim may hold at once: fewer than `all` when there are two or more.
    bulk: Arc<Semaphore>,
}

/// Slots kept for provisioning out of `max`: a quarter, at least one when there are two.
pub(super) fn reserved(max: usize) -> usize {
    if max < 2 { 0 } else { (max / 4).max(1) }
}

impl Pool {
    pub(super) fn new(max_connections: usize) -> Self {
        let max = max_connections.max(1);
        Self {
            idle: Mutex::new(Vec::new()),
            all: Arc::new(Semaphore::new(max)),
            bulk: Arc::new(Semaphore::new(max - reserved(max))),
        }
    }

    fn pop(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn push(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

/// What a session is for: it decides which slots it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Provisioning and other short operations: any slot.
    Short,
    /// Removing a tree: only the slots not reserved.
    Reclaim,
}

struct Permits {
    _all: OwnedSemaphorePermit,
    _bulk: Option<OwnedSemaphorePermit>,
}

impl Nfs3Share {
    /// A session under a slot, waiting at most the call timeout for one.
    pub(super) async fn session_for(&self, purpose: Purpose) -> Result<Session<'_>, BackendError> {
        let wait = self.opts.timeout;
        let busy = || BackendError::Busy {
            server: self.target.server.clone(),
            waited: wait,
        };
        let acquire = async {
            let bulk = match purpose {
                Purpose::Short => None,
                Purpose::Reclaim => Some(self.pool.bulk.clone().acquire_owned().await),
            };
            let all = self.pool.all.clone().acquire_owned().await;
            (all, bulk.transpose())
        };
        let (all, bulk) = tokio::time::timeout(wait, acquire)
            .await
            .map_err(|_| busy())?;
        // The semaphores are never closed; an error here would mean they were.
        let permits = Permits {
            _all: all.map_err(|_| busy())?,
            _bulk: bulk.map_err(|_| busy())?,
        };
        self.session_with(permits).await
    }

    /// Another reclaim session only if a slot is free right now: extra hands for one
    /// operation must never wait on slots that operation's own session may be holding.
    pub(super) async fn spare_session(&self) -> Option<Session<'_>> {
        let bulk = self.pool.bulk.clone().try_acquire_owned().ok()?;
        let all = self.pool.all.clone().try_acquire_owned().ok()?;
        self.session_with(Permits {
            _all: all,
            _bulk: Some(bulk),
        })
        .await
        .ok()
    }

    async fn session_with(&self, permits: Permits) -> Result<Session<'_>, BackendError> {
        let conn = match self.pool.pop() {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Session {
            share: self,
            conn: Some(conn),
            in_call: false,
            stale_root: None,
            _permits: permits,
        })
    }

    pub(super) async fn connect(&self) -> Result<Conn, BackendError> {
        let server = &self.target.server;
        let ip = super::resolve(server, self.opts.timeout).await?;
        let cred = auth_unix {
            uid: self.opts.uid,
            gid: self.opts.gid,
            ..Default::default()
        };
        let mut builder =
            Nfs3ConnectionBuilder::new(StreamConnector, ip.to_string(), &self.target.share)
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
                    permanent: connect_is_permanent(&e),
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

/// The server answered and said no: the export is not there or refuses us, or it
/// rejects our credentials. Anything else (refused, reset, unregistered) may pass.
fn connect_is_permanent(e: &ConnectError) -> bool {
    match e {
        ConnectError::Mount(MountError::Denied(_)) => true,
        ConnectError::Mount(MountError::Rpc(r)) => rpc_is_permanent(r),
        ConnectError::Portmap(_) | ConnectError::Io(_) => false,
    }
}

pub(super) fn rpc_is_permanent(e: &RpcError) -> bool {
    matches!(
        e,
        RpcError::Auth(_) | RpcError::RpcMismatch { .. } | RpcError::ProgMismatch { .. }
    )
}

/// Whether the connection that produced `e` must be dropped. Unlike
/// `RpcError::is_connection_reusable`, any reply that could not be matched to its call or
/// decoded counts: after an unexpected XID the stream is out of step, and after garbage
/// or a short read its framing cannot be trusted.
pub(super) fn breaks_connection(e: &RpcError) -> bool {
    !matches!(
        e,
        RpcError::Auth(_)
            | RpcError::RpcMismatch { .. }
            | RpcError::ProgUnavail
            | RpcError::ProgMismatch { .. }
            | RpcError::ProcUnavail
            | RpcError::GarbageArgs
            | RpcError::SystemErr
    )
}

/// One pooled connection, under a slot, for the duration of an operation.
pub(super) struct Session<'a> {
    pub(super) share: &'a Nfs3Share,
    /// `None` after the connection was dropped; the next call connects again.
    pub(super) conn: Option<Conn>,
    /// True while a call is on the wire. If the session is dropped then (its future
    /// abandoned), the reply is still unread and the connection must not be pooled.
    pub(super) in_call: bool,
    /// A root handle the server called stale, replaced by a fresh mount's.
    pub(super) stale_root: Option<nfs_fh3>,
    _permits: Permits,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.in_call
        {
            self.share.pool.push(conn);
        }
    }
}

impl Session<'_> {
    pub(super) fn root(&self) -> nfs_fh3 {
        self.conn
            .as_ref()
            .map(|c| c.root.clone())
            .unwrap_or_default()
    }

    /// The connection for the next call, connecting again if the last one was dropped.
    pub(super) async fn ready(&mut self) -> Result<&mut Conn, BackendError> {
        if self.conn.is_none() {
            self.conn = Some(self.share.connect().await?);
        }
        self.conn.as_mut().ok_or_else(|| BackendError::Rpc {
            op: "connect",
            server: self.share.target.server.clone(),
            reason: "no connection".into(),
            permanent: false,
        })
    }

    pub(super) fn timeout(&self) -> Duration {
        self.share.opts.timeout
    }

    /// After a STALE reply: when `args` name the root handle of this session (or one
    /// already replaced), mounts again and returns `args` on the new root, for one retry.
    pub(super) async fn rebase_stale_root<A: RootArgs + ?Sized>(
        &mut self,
        args: &A,
    ) -> Result<Option<A::Owned>, BackendError> {
        if let Some(old) = self.stale_root.clone()
            && let Some(fresh) = args.rebased(&old, &self.root())
        {
            return Ok(Some(fresh));
        }
        let old = self.root();
        if args.rebased(&old, &old).is_none() {
            return Ok(None);
        }
        self.conn = None;
        let new = self.ready().await?.root.clone();
        self.stale_root = Some(old.clone());
        Ok(args.rebased(&old, &new))
    }
}

/// Runs one RPC with the share's timeout, records its latency, drops the connection when
/// it can no longer be trusted, and retries once: on a fresh connection when the one
/// used broke (a server restart, a reset), on a fresh mount's root handle when the
/// cached one came back stale. A timed-out call is not retried: the server is slow or
/// stalled, and another full wait would only double the caller's.
macro_rules! rpc {
    ($s:expr, $op:literal, $method:ident, $args:expr) => {{
        let args = $args;
        match $crate::backend::nfs3::pool::rpc_once!($s, $op, $method, args) {
            Ok(reply)
                if matches!(
                    &reply,
                    nfs3_client::nfs3_types::nfs3::Nfs3Result::Err((
                        nfs3_client::nfs3_types::nfs3::nfsstat3::NFS3ERR_STALE,
                        _
                    ))
                ) =>
            {
                match $s.rebase_stale_root(args).await {
                    Ok(Some(fresh)) => {
                        $crate::backend::nfs3::pool::rpc_once!($s, $op, $method, &fresh)
                            .map_err(|(e, _)| e)
                    }
                    Ok(None) => Ok(reply),
                    Err(e) => Err(e),
                }
            }
            Ok(reply) => Ok(reply),
            Err((_, true)) => {
                $crate::backend::nfs3::pool::rpc_once!($s, $op, $method, args).map_err(|(e, _)| e)
            }
            Err((e, false)) => Err(e),
        }
    }};
}

/// One attempt of [`rpc!`]: the reply, or the error and whether to retry it.
macro_rules! rpc_once {
    ($s:expr, $op:literal, $method:ident, $args:expr) => {{
        let timeout = $s.timeout();
        let server = $s.share.target.server.clone();
        let start = std::time::Instant::now();
        // Set before the connection is touched and cleared only after a whole reply:
        // dropped in between, the session discards the connection.
        $s.in_call = true;
        let result = match $s.ready().await {
            Ok(conn) => Ok(tokio::time::timeout(timeout, conn.client.$method($args)).await),
            Err(e) => Err(e),
        };
        $s.in_call = false;
        match result {
            Err(e) => Err((e, false)),
            Ok(result) => {
                $crate::metrics::nfs_call($op, start.elapsed(), matches!(result, Ok(Ok(_))));
                match result {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(e)) => {
                        let broken = $crate::backend::nfs3::pool::breaks_connection(&e);
                        if broken {
                            $s.conn = None;
                        }
                        Err((
                            BackendError::Rpc {
                                op: $op,
                                server,
                                reason: e.to_string(),
                                permanent: $crate::backend::nfs3::pool::rpc_is_permanent(&e),
                            },
                            broken,
                        ))
                    }
                    Err(_) => {
                        $s.conn = None;
                        Err((
                            BackendError::Timeout {
                                op: $op,
                                server,
                                after: timeout,
                            },
                            false,
                        ))
                    }
                }
            }
        }
    }};
}

pub(crate) use {rpc, rpc_once};

/// Call arguments that may carry the share's root handle, so a call that came back
/// STALE can be sent again on a fresh mount's root.
pub(super) trait RootArgs {
    type Owned;
    /// A copy with every handle equal to `old` replaced by `new`; `None` when there is
    /// none.
    fn rebased(&self, old: &nfs_fh3, new: &nfs_fh3) -> Option<Self::Owned>;
}

/// Replaces `old` by `new` in `fh`, noting whether it did.
fn swap(fh: &nfs_fh3, old: &nfs_fh3, new: &nfs_fh3, hit: &mut bool) -> nfs_fh3 {
    if fh == old {
        *hit = true;
        new.clone()
    } else {
        fh.clone()
    }
}

fn dirop(d: &diropargs3<'_>, old: &nfs_fh3, new: &nfs_fh3, hit: &mut bool) -> diropargs3<'static> {
    diropargs3 {
        dir: swap(&d.dir, old, new, hit),
        name: filename3::from(d.name.as_ref().to_vec()),
    }
}

macro_rules! root_args {
    ($($lt:lifetime),* ; $ty:ty => $owned:ty, |$a:ident, $old:ident, $new:ident, $hit:ident| $build:expr) => {
        impl<$($lt),*> RootArgs for $ty {
            type Owned = $owned;
            fn rebased(&self, $old: &nfs_fh3, $new: &nfs_fh3) -> Option<Self::Owned> {
                let $a = self;
                let mut $hit = false;
                let built = $build;
                $hit.then_some(built)
            }
        }
    };
}

root_args!('a; LOOKUP3args<'a> => LOOKUP3args<'static>, |a, old, new, hit| LOOKUP3args {
    what: dirop(&a.what, old, new, &mut hit)
});
root_args!('a; MKDIR3args<'a> => MKDIR3args<'static>, |a, old, new, hit| MKDIR3args {
    where_: dirop(&a.where_, old, new, &mut hit),
    attributes: a.attributes.clone(),
});
root_args!('a; REMOVE3args<'a> => REMOVE3args<'static>, |a, old, new, hit| REMOVE3args {
    object: dirop(&a.object, old, new, &mut hit)
});
root_args!('a; RMDIR3args<'a> => RMDIR3args<'static>, |a, old, new, hit| RMDIR3args {
    object: dirop(&a.object, old, new, &mut hit)
});
root_args!('a, 'b; RENAME3args<'a, 'b> => RENAME3args<'static, 'static>, |a, old, new, hit| RENAME3args {
    from: dirop(&a.from, old, new, &mut hit),
    to: dirop(&a.to, old, new, &mut hit),
});
root_args!(; READDIRPLUS3args => READDIRPLUS3args, |a, old, new, hit| READDIRPLUS3args {
    dir: swap(&a.dir, old, new, &mut hit),
    cookie: a.cookie,
    cookieverf: a.cookieverf,
    dircount: a.dircount,
    maxcount: a.maxcount,
});
root_args!(; FSSTAT3args => FSSTAT3args, |a, old, new, hit| FSSTAT3args {
    fsroot: swap(&a.fsroot, old, new, &mut hit)
});
root_args!(; GETATTR3args => GETATTR3args, |a, old, new, hit| GETATTR3args {
    object: swap(&a.object, old, new, &mut hit)
});
root_args!(; SETATTR3args => SETATTR3args, |a, old, new, hit| SETATTR3args {
    object: swap(&a.object, old, new, &mut hit),
    new_attributes: a.new_attributes.clone(),
    guard: a.guard,
});

// Files (the provisioner's own records): CREATE names its parent directory, which may
// be the root; READ and WRITE name the file, never the root.
impl RootArgs for nfs3_client::nfs3_types::nfs3::CREATE3args<'_> {
    type Owned = nfs3_client::nfs3_types::nfs3::CREATE3args<'static>;
    fn rebased(&self, old: &nfs_fh3, new: &nfs_fh3) -> Option<Self::Owned> {
        use nfs3_client::nfs3_types::nfs3::createhow3;
        let mut hit = false;
        let where_ = dirop(&self.where_, old, new, &mut hit);
        let how = match &self.how {
            createhow3::UNCHECKED(s) => createhow3::UNCHECKED(s.clone()),
            createhow3::GUARDED(s) => createhow3::GUARDED(s.clone()),
            createhow3::EXCLUSIVE(v) => createhow3::EXCLUSIVE(*v),
        };
        hit.then_some(nfs3_client::nfs3_types::nfs3::CREATE3args { where_, how })
    }
}

impl RootArgs for nfs3_client::nfs3_types::nfs3::WRITE3args<'_> {
    type Owned = nfs3_client::nfs3_types::nfs3::WRITE3args<'static>;
    fn rebased(&self, _: &nfs_fh3, _: &nfs_fh3) -> Option<Self::Owned> {
        None
    }
}

impl RootArgs for nfs3_client::nfs3_types::nfs3::READ3args {
    type Owned = nfs3_client::nfs3_types::nfs3::READ3args;
    fn rebased(&self, _: &nfs_fh3, _: &nfs_fh3) -> Option<Self::Owned> {
        None
    }
}

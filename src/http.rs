//! `/metrics`, `/healthz` and `/readyz`, on a bare hyper server: three routes do not
//! need a web framework.
//!
//! The server is on the pod network, so it defends itself: a client has
//! [`HEADER_READ_TIMEOUT`] to send its request head, a connection lives at most
//! [`CONNECTION_LIFETIME`], and at most [`MAX_CONNECTIONS`] are open at once. At the cap, a
//! new connection displaces the oldest one that has not sent a request yet: a client
//! that opens connections and sends nothing (slow loris) only ever displaces its own,
//! and a probe, which sends its request at once, still gets its answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::health::Readiness;

pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 64;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn route(path: &str, ready: &Readiness) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::render(),
        ),
        "/healthz" | "/livez" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ok, text) = ready.report();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", text)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// One open connection: whether it has sent a whole request head yet, and how to
/// close it.
struct Slot {
    spoke: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// The open connections, oldest first (ids grow).
#[derive(Default)]
struct Slots {
    open: Mutex<BTreeMap<u64, Slot>>,
}

impl Slots {
    /// Makes room for one more connection by closing the oldest one that has not sent
    /// a request yet: false when there is none (or, without `displace_idle`, when the
    /// cap is reached).
    fn make_room(&self, cap: usize, displace_idle: bool) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() < cap {
            return true;
        }
        if !displace_idle {
            return false;
        }
        let idle = open
            .iter()
            .find(|(_, s)| !s.spoke.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match idle.and_then(|id| open.remove(&id)) {
            Some(slot) => {
                slot.abort.abort();
                true
            }
            None => false,
        }
    }

    fn insert(&self, id: u64, slot: Slot) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, slot);
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Serves until the listener fails; see the module documentation for the limits.
pub async fn serve(listener: TcpListener, ready: Arc<Readiness>) {
    let limits = Limits {
        cap: MAX_CONNECTIONS,
        header_timeout: HEADER_READ_TIMEOUT,
        displace_idle: true,
    };
    serve_with(listener, ready, limits).await
}

#[derive(Clone, Copy)]
struct Limits {
    cap: usize,
    header_timeout: Duration,
    /// At the cap, close the oldest idle connection (true) or refuse the new one.
    displace_idle: bool,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    Ok(listener)
}

async fn serve_with(listener: TcpListener, ready: Arc<Readiness>, limits: Limits) {
    let Limits {
        cap,
        header_timeout,
        displace_idle,
    } = limits;
    let slots = Arc::new(Slots::default());
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, mostly: give the others a moment to close.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !slots.make_room(cap, displace_idle) {
            debug!("every connection has a client that spoke; refusing one");
            drop(stream);
            continue;
        }
        let id = next_id;
        next_id += 1;
        let spoke = Arc::new(AtomicBool::new(false));
        let (ready, conn_spoke, conn_slots) = (ready.clone(), spoke.clone(), slots.clone());
        // Held until the task is registered, so it cannot finish (and unregister)
        // before it is registered.
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = registered_rx.await;
            let svc = service_fn(move |req: Request<Incoming>| {
                conn_spoke.store(true, Ordering::Release);
                let resp = route(req.uri().path(), &ready);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => debug!(error = %e, "http connection ended"),
                Ok(Ok(())) => {}
                Err(_) => debug!("http connection closed at its lifetime"),
            }
            conn_slots.remove(id);
        });
        slots.insert(
            id,
            Slot {
                spoke,
                abort: task.abort_handle(),
            },
        );
        let _ = registered_tx.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Role;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn server(cap: usize, header_timeout: Duration, displace_idle: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ready = Arc::new(Readiness::new(Role::Single));
        let limits = Limits {
            cap,
            header_timeout,
            displace_idle,
        };
        tokio::spawn(serve_with(listener, ready, limits));
        addr
    }

    /// Opens connections that send nothing and never closes them: 4x the cap at once,
    /// then one more every 5 ms, up to 400.
    fn slow_loris(addr: SocketAddr, cap: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut held = Vec::new();
            while held.len() < 400 {
                if let Ok(s) = TcpStream::connect(addr).await {
                    held.push(s);
                }
                if held.len() >= cap * 4 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            std::future::pending::<()>().await;
        })
    }

    /// Answers to 20 GETs of /healthz, 50 ms apart, each given 1 s.
    async fn probe_healthz(addr: SocketAddr) -> Vec<bool> {
        let mut answers = Vec::new();
        for _ in 0..20 {
            let answer = tokio::time::timeout(Duration::from_secs(1), get(addr, "/healthz")).await;
            answers.push(matches!(answer, Ok(Ok(a)) if a.starts_with("HTTP/1.1 200")));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    }

    /// Connections that send nothing, many times the cap and more coming, do not keep
    /// /healthz from answering, each time within a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_loris_cannot_stop_healthz() {
        let cap = 16;
        let addr = server(cap, Duration::from_secs(30), true).await;
        let attack = slow_loris(addr, cap);
        // Let the attack fill every slot first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answers = probe_healthz(addr).await;
        attack.abort();
        assert!(answers.iter().all(|ok| *ok), "{answers:?}");
    }

    /// The control: refusing new connections at the cap instead, the same attack keeps
    /// /healthz from answering, so the test above can fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusing_at_the_cap_lets_slow_loris_win() {
        let cap = 16;
        let addr = server(cap, Duration::from_secs(30), false).await;
        let attack = slow_loris(addr, cap);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answers = probe_healthz(addr).await;
        attack.abort();
        assert!(answers.iter().all(|ok| !*ok), "{answers:?}");
    }

    /// Connections that have sent a request are never displaced.
    #[tokio::test]
    async fn only_idle_connections_are_displaced() {
        let slots = Slots::default();
        let never_done = tokio::spawn(std::future::pending::<()>());
        for id in 0..4 {
            slots.insert(
                id,
                Slot {
                    spoke: Arc::new(AtomicBool::new(true)),
                    abort: never_done.abort_handle(),
                },
            );
        }
        assert!(!slots.make_room(4, true), "all have spoken: no room");
        slots.remove(0);
        slots.insert(
            4,
            Slot {
                spoke: Arc::new(AtomicBool::new(false)),
                abort: never_done.abort_handle(),
            },
        );
        assert!(slots.make_room(4, true), "the silent one makes room");
        assert!(
            !slots
                .open
                .lock()
                .map(|o| o.contains_key(&4))
                .unwrap_or(true)
        );
        never_done.abort();
    }

    /// A connection that sends nothing is closed after the header read timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_is_closed_at_the_header_timeout() {
        let addr = server(8, Duration::from_millis(300), true).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed within 5 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
}

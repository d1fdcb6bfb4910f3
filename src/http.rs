//! `/metrics`, `/healthz` and `/readyz`, on a bare hyper server: three routes do not
//! need a web framework.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// What `/readyz` reports: caches synced, and the default share answering (when there
/// is one). A standby replica is ready too: it is healthy and able to take over.
#[derive(Default)]
pub struct Readiness {
    synced: AtomicBool,
    share_ok: AtomicBool,
    share_checked: AtomicBool,
}

impl Readiness {
    pub fn set_synced(&self, v: bool) {
        self.synced.store(v, Ordering::Relaxed);
    }

    pub fn set_share(&self, ok: bool) {
        self.share_checked.store(true, Ordering::Relaxed);
        self.share_ok.store(ok, Ordering::Relaxed);
    }

    /// For a provisioner with no default share, or a standby that has not synced yet.
    pub fn no_share_to_check(&self) {
        self.set_share(true);
    }

    fn report(&self) -> (bool, String) {
        let synced = self.synced.load(Ordering::Relaxed);
        let share =
            self.share_checked.load(Ordering::Relaxed) && self.share_ok.load(Ordering::Relaxed);
        let text = format!(
            "caches: {}\ndefault share: {}\n",
            if synced { "synced" } else { "not synced" },
            if share { "reachable" } else { "not reachable" }
        );
        (synced && share, text)
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn route(
    req: Request<Incoming>,
    ready: Arc<Readiness>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
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
    })
}

pub async fn serve(addr: SocketAddr, ready: Arc<Readiness>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(req, ready.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                warn!(error = %e, "http connection failed");
            }
        });
    }
}

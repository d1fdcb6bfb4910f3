//! A TCP proxy on 127.0.0.1 in front of a real server (nfs-ganesha's NFS port), through
//! which a test injects the faults a network and a server produce: replies delayed or
//! stalled, a connection reset in the middle of a reply, every connection cut at once
//! (what a server restart looks like to a client), new connections refused.
//!
//! Faults act on the server-to-client direction, at the granularity of one read from the
//! server socket: on loopback that is one RPC reply, small replies at least.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Debug, Default)]
struct Faults {
    /// Added before each reply is forwarded.
    delay: Duration,
    /// Replies are held (not lost) until this is cleared.
    stall: bool,
    /// New connections are accepted and closed at once.
    refuse: bool,
    /// This many coming replies are cut halfway and their connection reset.
    reset_mid_reply: usize,
    /// Bumped to reset every open connection.
    cut: u64,
    /// Bumped to close every open connection the polite way (FIN), as a server that
    /// shuts down cleanly does.
    close: u64,
    /// In what clients send on connections accepted up to the given count, these bytes
    /// are replaced by those (of the same length).
    rewrite: Option<(Vec<u8>, Vec<u8>, usize)>,
}

pub struct Proxy {
    addr: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    accepted: Arc<AtomicUsize>,
    rewrites: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding connections on a fresh loopback port to `upstream`. Must run
    /// inside a tokio runtime, which drives the proxy.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(watch::Sender::new(Faults::default()));
        let tx = faults.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let rewrites = Arc::new(AtomicUsize::new(0));
        let (counter, rewritten) = (accepted.clone(), rewrites.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let link = Link {
                    id,
                    control: tx.clone(),
                    rewrites: rewritten.clone(),
                };
                tokio::spawn(relay(client, upstream, link));
            }
        });
        Proxy {
            addr,
            faults,
            accepted,
            rewrites,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far: a positive control that traffic goes through here.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn delay(&self, d: Duration) {
        self.faults.send_modify(|f| f.delay = d);
    }

    pub fn stall(&self, on: bool) {
        self.faults.send_modify(|f| f.stall = on);
    }

    pub fn refuse(&self, on: bool) {
        self.faults.send_modify(|f| f.refuse = on);
    }

    /// The next `n` replies (on whichever connections) are cut halfway, then reset.
    pub fn reset_mid_reply(&self, n: usize) {
        self.faults.send_modify(|f| f.reset_mid_reply = n);
    }

    /// Resets every open connection now, as a server restart does.
    pub fn cut(&self) {
        self.faults.send_modify(|f| f.cut += 1);
    }

    /// Closes every open connection cleanly now (FIN, then anything the client sends is
    /// dropped unanswered until it goes away).
    pub fn close_all(&self) {
        self.faults.send_modify(|f| f.close += 1);
    }

    /// From now on, on the connections open now (not on later ones), replaces `from` by
    /// `to` in what the client sends: how a handle the client cached goes stale while a
    /// fresh mount gets a good one.
    pub fn rewrite_open_connections(&self, from: &[u8], to: &[u8]) {
        assert_eq!(
            from.len(),
            to.len(),
            "a rewrite must keep the message length"
        );
        let upto = self.accepted();
        self.faults
            .send_modify(|f| f.rewrite = Some((from.to_vec(), to.to_vec(), upto)));
    }

    /// How many times a rewrite was applied: a positive control for the fault.
    pub fn rewrites(&self) -> usize {
        self.rewrites.load(Ordering::SeqCst)
    }

    /// Replies still armed to be cut (0 once the faults fired).
    pub fn resets_pending(&self) -> usize {
        self.faults.borrow().reset_mid_reply
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open relays end with the cut.
        self.cut();
    }
}

/// What a relay knows of the proxy: its own connection number and the shared controls.
struct Link {
    id: usize,
    control: Arc<watch::Sender<Faults>>,
    rewrites: Arc<AtomicUsize>,
}

async fn relay(client: TcpStream, upstream: SocketAddr, link: Link) {
    let control = link.control.clone();
    let mut faults = control.subscribe();
    // Linger 0: dropping a socket sends RST, so every cut is a reset, not a clean close.
    let _ = client.set_zero_linger();
    if faults.borrow().refuse {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_zero_linger();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cut_at, close_at) = {
        let f = faults.borrow();
        (f.cut, f.close)
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut graceful = false;
    {
        let up_faults = faults.clone();
        let up = async {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let rule = up_faults.borrow().rewrite.clone();
                if let Some((from, to, upto)) = rule
                    && link.id <= upto
                    && !from.is_empty()
                {
                    let mut i = 0;
                    while i + from.len() <= n {
                        if buf[i..i + from.len()] == from[..] {
                            buf[i..i + from.len()].copy_from_slice(&to);
                            link.rewrites.fetch_add(1, Ordering::SeqCst);
                            i += from.len();
                        } else {
                            i += 1;
                        }
                    }
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let mut down_faults = faults.clone();
        let down = async {
            let faults = &mut down_faults;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if faults.wait_for(|f| !f.stall).await.is_err() {
                    return;
                }
                let delay = faults.borrow().delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut cut_here = false;
                control.send_if_modified(|f| {
                    cut_here = f.reset_mid_reply > 0;
                    if cut_here {
                        f.reset_mid_reply -= 1;
                    }
                    cut_here
                });
                if cut_here {
                    let _ = cw.write_all(&buf[..n / 2]).await;
                    let _ = cw.flush().await;
                    return;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let mut cut_faults = faults.clone();
        let cut = async {
            let _ = cut_faults.wait_for(|f| f.cut != cut_at).await;
        };
        let close = async {
            let _ = faults.wait_for(|f| f.close != close_at).await;
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = cut => {}
            _ = close => graceful = true,
        }
    }
    if graceful {
        let _ = cw.shutdown().await;
        let _ = tokio::io::copy(&mut cr, &mut tokio::io::sink()).await;
    }
}

//! Leader hand-over: SIGTERM releases the Lease, and a leader cut off from the API
//! server stops acting within its renew deadline. The fault is a TCP relay between the
//! provisioner and the real kube-apiserver that the test can cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::*;

const LEADER: &str = "nfs3_provisioner_leader";
const PROVISIONED: &str = "nfs3_provisioner_provision_total{result=\"success\"}";

pub(super) fn elect_env<'a>(
    lease: &'a str,
    seconds: &'a str,
    pod: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("LEADER_ELECT", "true"),
        ("LEASE_NAME", lease),
        ("LEASE_DURATION_SECONDS", seconds),
        ("POD_NAME", pod),
    ]
}

async fn leads(p: &Provisioner, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let v = p.metric(LEADER);
        async move { (v == Some(1.0)).then_some(()) }
    })
    .await;
}

/// Waits until `p` answers /readyz 200 as a standby that knows `holder` leads.
async fn ready_standby_of(p: &Provisioner, holder: &str) {
    let needle = format!("held by {holder}");
    wait_for("a ready standby", Duration::from_secs(60), || {
        let answer = p.http_get("/readyz");
        let needle = needle.clone();
        async move {
            answer
                .filter(|(code, body)| {
                    *code == 200 && body.contains("role: standby") && body.contains(&needle)
                })
                .map(|_| ())
        }
    })
    .await;
}

async fn holder_of(client: &kube::Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "nfs3-provisioner")
        .get(lease)
        .await
        .ok()?
        .spec?
        .holder_identity
}

/// A rollout stops the leader with SIGTERM: it finishes, releases the Lease and exits
/// 0, and the standby takes over in under 3 s, where the 15 s lease would otherwise
/// have to expire first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_over_in_under_3_s() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("handover").await;
    let client = fx.client.clone();
    let _lease = the_lease(&client).await;
    let lease = LEASE_NAME.to_string();
    let mut a = fx.start("-a", &elect_env(&lease, "15", "replica-a"));
    leads(&a, "replica-a to lead").await;
    let b = fx.start("-b", &elect_env(&lease, "15", "replica-b"));
    ready_standby_of(&b, "replica-a").await;

    let ns = fx.namespace().await;
    let class = fx.class("c", delete_on(&export1())).await;
    for i in 0..5 {
        fx.claim(&ns, &format!("first-{i}"), &class, json!({}))
            .await;
    }
    all_bound(&client, &ns, 5, Duration::from_secs(60), &a).await;

    a.terminate();
    let sent = Instant::now();
    let took = wait_for("replica-b to lead", Duration::from_secs(30), || {
        let v = b.metric(LEADER);
        async move { (v == Some(1.0)).then(|| sent.elapsed()) }
    })
    .await;
    let status = wait_for("replica-a to exit", Duration::from_secs(30), || {
        let s = a.exit_status();
        async move { s }
    })
    .await;
    eprintln!("handover: replica-b led {took:?} after SIGTERM to replica-a (lease 15 s)");
    assert!(status.success(), "replica-a exits 0 on SIGTERM: {status}");
    assert!(
        a.log_tail(40).contains("released the Lease"),
        "{}",
        a.log_tail(40)
    );
    assert_eq!(
        holder_of(&client, &lease).await.as_deref(),
        Some("replica-b")
    );
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes only on a terminal, not in a log file"
    );
    assert!(
        took < Duration::from_secs(3),
        "the standby took {took:?} to take over"
    );

    for i in 0..5 {
        fx.claim(&ns, &format!("second-{i}"), &class, json!({}))
            .await;
    }
    all_bound(&client, &ns, 10, Duration::from_secs(60), &b).await;
    assert_eq!(volumes_of(&client, &ns).await.len(), 10);
    fx.reclaim_all(&ns, Duration::from_secs(60), &b).await;
}

/// A TCP relay to the API server that the test can cut: connections under way are
/// dropped, and new ones are accepted and then left silent, as a partitioned network
/// or a hung load balancer would.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
    silent: Arc<Mutex<Vec<TcpStream>>>,
    accept: AbortHandle,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let pipes = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let silent = Arc::new(Mutex::new(Vec::new()));
        let (c, p, s) = (cut.clone(), pipes.clone(), silent.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    s.lock().expect("relay lock").push(inbound);
                    continue;
                }
                let pipe = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                p.lock().expect("relay lock").push(pipe.abort_handle());
            }
        });
        Relay {
            port,
            cut,
            pipes,
            silent,
            accept: accept.abort_handle(),
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for p in self.pipes.lock().expect("relay lock").drain(..) {
            p.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.silent.lock().expect("relay lock").clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The ServiceAccount's kubeconfig, pointed at `port` on 127.0.0.1 (the serving
/// certificate is for that address, whatever the port).
fn kubeconfig_via(port: u16, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(&cluster().sa_kubeconfig).expect("read SA kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server line")
        .to_string();
    let rewritten = text.replace(&server, &format!("https://127.0.0.1:{port}"));
    let path = dir.join("kubeconfig-via-relay");
    std::fs::write(&path, rewritten).expect("write kubeconfig");
    path
}

fn port_of(server: &str) -> u16 {
    server
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("a port in the server URL")
}

/// A leader that cannot reach the API server stops acting (controllers stopped, the
/// leader gauge 0) within its renew deadline, before any standby may take the Lease;
/// once back, it stands by and the new leader keeps the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_takes_over() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("cutoff").await;
    let client = fx.client.clone();
    let text = std::fs::read_to_string(&cluster().sa_kubeconfig).expect("read SA kubeconfig");
    let api_port = port_of(
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("a server line"),
    );
    let relay = Relay::start(api_port).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let via = kubeconfig_via(relay.port, dir.path());
    let via = via.to_str().expect("utf-8 path");

    let _lease = the_lease(&client).await;
    let lease = LEASE_NAME.to_string();
    let env_a = elect_env(&lease, "6", "replica-a");
    let a = fx.start(
        "-a",
        &[env_a[0], env_a[1], env_a[2], env_a[3], ("KUBECONFIG", via)],
    );
    leads(&a, "replica-a to lead").await;
    let b = fx.start("-b", &elect_env(&lease, "6", "replica-b"));
    ready_standby_of(&b, "replica-a").await;
    let ns = fx.namespace().await;
    let class = fx.class("c", delete_on(&export1())).await;
    fx.claim(&ns, "before", &class, json!({})).await;
    all_bound(&client, &ns, 1, Duration::from_secs(60), &a).await;
    // Bound is the binder's doing: the provisioner counts its success just after the PV
    // is made, so wait for the count rather than read it at once.
    let a_provisioned = wait_for(
        "replica-a to count its volume",
        Duration::from_secs(30),
        || {
            let v = a.metric(PROVISIONED).filter(|v| *v >= 1.0);
            async move { v }
        },
    )
    .await;

    relay.cut();
    let cut = Instant::now();
    let (mut a_stopped, deadline) = (None, cut + Duration::from_secs(60));
    let b_led = loop {
        if a_stopped.is_none() && a.metric(LEADER) == Some(0.0) {
            a_stopped = Some(cut.elapsed());
        }
        if b.metric(LEADER) == Some(1.0) {
            break cut.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "replica-b did not take over; a: {}\nb: {}",
            a.log_tail(20),
            b.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "cut off: replica-a stopped acting {a_stopped:?} after the cut, replica-b led after {b_led:?} (lease 6 s, renew deadline 4 s)"
    );
    let a_stopped = a_stopped.unwrap_or_else(|| {
        panic!(
            "replica-a still acts while replica-b leads:\n{}",
            a.log_tail(20)
        )
    });
    assert!(a_stopped < b_led, "replica-a stopped first");
    assert!(
        a_stopped < Duration::from_secs(6),
        "replica-a stopped within its lease ({a_stopped:?})"
    );

    relay.heal();
    fx.claim(&ns, "after", &class, json!({})).await;
    all_bound(&client, &ns, 2, Duration::from_secs(60), &b).await;
    // Back in touch, replica-a reads the Lease and stands by.
    ready_standby_of(&a, "replica-b").await;
    assert_eq!(a.metric(LEADER), Some(0.0));
    assert_eq!(b.metric(LEADER), Some(1.0));
    assert_eq!(a.metric(PROVISIONED).unwrap_or(0.0), a_provisioned);
    assert_eq!(
        holder_of(&client, &lease).await.as_deref(),
        Some("replica-b")
    );
    assert_eq!(volumes_of(&client, &ns).await.len(), 2);
    fx.reclaim_all(&ns, Duration::from_secs(60), &b).await;
}

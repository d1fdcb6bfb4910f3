//! The real control plane (tests/e2e/cluster.sh) and the real provisioner binary run as
//! a local process with the rights of the ServiceAccount in deploy/.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use super::{lookup, parse_env, script};

pub struct ClusterEnv {
    pub e2e_dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub sa_kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

/// Starts the control plane once per test binary and writes the ServiceAccount's
/// kubeconfig (applying the RBAC of deploy/base).
pub fn cluster() -> &'static ClusterEnv {
    static ENV: OnceLock<ClusterEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        script("cluster.sh", &["up"]);
        let env = parse_env(&script("cluster.sh", &["env"]));
        let sa = script("sa-kubeconfig.sh", &[]);
        ClusterEnv {
            e2e_dir: lookup(&env, "E2E_DIR").into(),
            admin_kubeconfig: lookup(&env, "KUBECONFIG").into(),
            sa_kubeconfig: sa.trim().into(),
            kubectl: PathBuf::from(lookup(&env, "K8S_BIN")).join("kubectl"),
        }
    })
}

pub async fn admin() -> Client {
    let env = cluster();
    let kc = Kubeconfig::read_from(&env.admin_kubeconfig).expect("admin kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("admin kubeconfig is valid");
    Client::try_from(config).expect("client")
}

pub fn kubectl(args: &[&str]) -> String {
    let env = cluster();
    let out = Command::new(&env.kubectl)
        .args(args)
        .env("KUBECONFIG", &env.admin_kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET on 127.0.0.1:`port`, waiting at most `read_timeout` for the answer:
/// (status code, body), or None if nothing (valid) answers.
pub fn http_get(port: u16, path: &str, read_timeout: Duration) -> Option<(u16, String)> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The value of the metric line served on `port` whose text starts with `prefix`.
pub fn metric_at(port: u16, prefix: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics", Duration::from_secs(5))?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One provisioner process. Killed (SIGKILL) when dropped, so a failing test leaves
/// nothing running.
pub struct Provisioner {
    child: Option<Child>,
    pub name: String,
    pub http_port: u16,
    pub log: PathBuf,
    extra: Vec<(String, String)>,
}

impl Provisioner {
    /// Starts `nfs3-provisioner run` for `name`, with the ServiceAccount's kubeconfig.
    pub fn start(name: &str, label: &str, extra: &[(&str, &str)]) -> Self {
        let env = cluster();
        let mut p = Provisioner {
            child: None,
            name: name.to_string(),
            http_port: free_port(),
            log: env.e2e_dir.join("logs").join(format!("e2e-{label}.log")),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let env = cluster();
        std::fs::create_dir_all(self.log.parent().expect("log dir")).expect("log dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nfs3-provisioner"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &env.sa_kubeconfig)
            .env("PROVISIONER_NAME", &self.name)
            .env("POD_NAMESPACE", "nfs3-provisioner")
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .env("NFS_TIMEOUT_SECONDS", "3")
            .env("RUST_LOG", "info,nfs3_provisioner=debug")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start the provisioner"));
    }

    /// SIGKILL: no graceful shutdown, nothing flushed, as a node failure would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A line of /proc/PID/status in KiB (`VmRSS`, `VmHWM` the peak), if running.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM, as Kubernetes stops a pod: the process should finish and exit.
    pub fn terminate(&self) {
        if let Some(c) = self.child.as_ref() {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM {}: {status}", c.id());
        }
    }

    /// The exit status once the process has exited, None while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// GET on the health/metrics server: (status code, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path, Duration::from_secs(5))
    }

    /// The value of a metric line `name{labels} value` whose text starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        metric_at(self.http_port, prefix)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 200 ms until it gives `Some`, or panics after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_explained(what, limit, String::new, f).await
}

/// The same; on timeout the panic also shows what `diag` says (logs, states).
pub async fn wait_explained<T, F, Fut>(
    what: &str,
    limit: Duration,
    diag: impl Fn() -> String,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            diag()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn claims(client: &Client, ns: &str) -> Vec<PersistentVolumeClaim> {
    try_claims(client, ns).await.expect("list claims")
}

/// The claims of `ns`, or None while the API server does not answer.
pub async fn try_claims(client: &Client, ns: &str) -> Option<Vec<PersistentVolumeClaim>> {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .ok()
        .map(|l| l.items)
}

/// PVs whose claimRef is in `ns`.
pub async fn volumes_of(client: &Client, ns: &str) -> Vec<PersistentVolume> {
    try_volumes(client, ns).await.expect("list volumes")
}

/// The same, or None while the API server does not answer.
pub async fn try_volumes(client: &Client, ns: &str) -> Option<Vec<PersistentVolume>> {
    let all = Api::<PersistentVolume>::all(client.clone())
        .list(&ListParams::default())
        .await
        .ok()?;
    Some(
        all.items
            .into_iter()
            .filter(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.namespace.as_deref())
                    == Some(ns)
            })
            .collect(),
    )
}

/// `nfs3-provisioner audit --output json` for the provisioner `name`, with the
/// ServiceAccount's rights: its exit code and report.
pub fn run_audit(name: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_nfs3-provisioner"))
        .args(["audit", "--provisioner-name", name, "--output", "json"])
        .args(extra)
        .env("KUBECONFIG", &cluster().sa_kubeconfig)
        .output()
        .expect("run audit");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit prints JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

pub fn phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn pv_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The export path and directory a PV points at.
pub fn nfs_path(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.nfs.as_ref())
        .map(|n| n.path.clone())
        .unwrap_or_default()
}

/// Waits until every claim in `ns` is Bound; returns them.
pub async fn all_bound(
    client: &Client,
    ns: &str,
    count: usize,
    limit: Duration,
    p: &Provisioner,
) -> Vec<PersistentVolumeClaim> {
    let deadline = Instant::now() + limit;
    loop {
        let list = claims(client, ns).await;
        let bound = list.iter().filter(|c| phase(c) == "Bound").count();
        if bound == count && list.len() == count {
            return list;
        }
        if Instant::now() > deadline {
            let pending: Vec<String> = list
                .iter()
                .filter(|c| phase(c) != "Bound")
                .take(5)
                .map(|c| c.metadata.name.clone().unwrap_or_default())
                .collect();
            let mut events = String::new();
            for name in &pending {
                for e in events_for(client, ns, name).await {
                    events.push_str(&format!("  {name}: {e:?}\n"));
                }
            }
            panic!(
                "{bound}/{count} claims bound in {ns} after {limit:?}; pending e.g. {pending:?}\nevents:\n{events}\nprovisioner log:\n{}",
                p.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (type, reason, message) of the events about one claim.
pub async fn events_for(client: &Client, ns: &str, claim: &str) -> Vec<(String, String, String)> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={claim}"));
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits for an event on `claim` with `reason` whose message contains `needle`.
pub async fn wait_event(
    client: &Client,
    ns: &str,
    claim: &str,
    reason: &str,
    needle: &str,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let events = events_for(client, ns, claim).await;
        if let Some((_, _, msg)) = events
            .iter()
            .find(|(_, r, m)| r == reason && m.contains(needle))
        {
            return msg.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event containing {needle:?} on {ns}/{claim} within {limit:?}; events: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn delete_claims(client: &Client, ns: &str) {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete claims");
}

/// Waits until no PV refers to a claim in `ns`.
pub async fn volumes_gone(client: &Client, ns: &str, limit: Duration, p: &Provisioner) {
    let deadline = Instant::now() + limit;
    loop {
        let left = volumes_of(client, ns).await;
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let states: BTreeMap<String, String> = left
                .iter()
                .map(|pv| {
                    (
                        pv.metadata.name.clone().unwrap_or_default(),
                        pv_phase(pv).to_string(),
                    )
                })
                .collect();
            panic!(
                "{} volumes of {ns} still there after {limit:?}: {states:?}\nlog:\n{}",
                left.len(),
                p.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where a PV's directory is on this machine: exports are local directories.
pub fn on_disk(pv: &PersistentVolume) -> PathBuf {
    PathBuf::from(nfs_path(pv))
}

pub fn export1() -> String {
    super::nfs().export1.to_string_lossy().into_owned()
}

pub fn export2() -> String {
    super::nfs().export2.to_string_lossy().into_owned()
}

/// Class parameters for `share` on the test server, deleting released directories.
pub fn delete_on(share: &str) -> serde_json::Value {
    json!({"server": "127.0.0.1", "share": share, "onDelete": "delete"})
}

/// The PV in `pvs` bound to the claim named `claim`.
pub fn pv_of<'a>(pvs: &'a [PersistentVolume], claim: &str) -> &'a PersistentVolume {
    pvs.iter()
        .find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.name.as_deref())
                == Some(claim)
        })
        .unwrap_or_else(|| panic!("no PV for claim {claim}"))
}

pub async fn delete_claim(client: &Client, ns: &str, name: &str) {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete claim");
}

pub async fn pv_get(client: &Client, name: &str) -> Option<PersistentVolume> {
    Api::<PersistentVolume>::all(client.clone())
        .get_opt(name)
        .await
        .expect("get PV")
}

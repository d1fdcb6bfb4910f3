//! Provisioning benchmark: us against the incumbent (nfs-subdir-external-provisioner, see
//! tests/e2e/incumbent.sh) and against the limit of the control plane itself, on the real
//! local environment of the e2e tests (tests/e2e/cluster.sh, nfs.sh).
//!
//! `cargo bench --bench provision` (or `make bench`). For each N and each subject in turn:
//!   1. burst provision: N claims created at once, time until all are Bound, claims/s and
//!      claim-to-Bound latency (client-side create time to the Bound watch event);
//!   2. restart: SIGKILL and start again with the N volumes there: time to ready, API
//!      requests (writes and all) made from the start until 10 s after ready;
//!   3. burst reclaim: 100 small files written into each directory, then all claims
//!      deleted at once; time until every PV and every directory is gone;
//!   4. footprint: RSS (sampled peak, end of phase, VmHWM) and CPU seconds per phase.
//!
//! "limit" is the same N claims with pre-bound PVs created directly by the bench: what
//! the API server and kube-controller-manager allow without any provisioner.
//! API requests are counted by the API server: the bench gives each provisioner's
//! ServiceAccount two FlowSchemas of its own (writes, everything else) and reads
//! `apiserver_flowcontrol_dispatched_requests_total` per schema.
//!
//! Knobs (environment): BENCH_N (default "100,1000"), BENCH_SUBJECTS (default
//! "ours,incumbent,limit"), BENCH_FILES (files per directory before reclaim, 100),
//! BENCH_TIMEOUT (global limit in seconds, 7200), BENCH_PHASE_TIMEOUT (per phase, default
//! 300 + 1.5 s per claim), BENCH_KCM_QPS (restart kube-controller-manager with this
//! --kube-api-qps, burst 1.5x, for the run, and restore the default after), BENCH_OUT
//! (results directory, bench/results), BENCH_TAG (file name stem, "latest"),
//! BENCH_FOOTPRINT_N (after the runs, make this many pre-bound PVs and claims and
//! measure each provisioner started among them: RSS, time to ready, restart requests),
//! INCUMBENT_BIN (run this binary as the incumbent instead of the model that
//! tests/e2e/incumbent.sh builds), BENCH_OURS_BIN (instead of our release binary).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};

// The e2e tests' helpers: `export` lines of the scripts, free ports, plain HTTP GETs.
#[path = "../tests/common/mod.rs"]
mod common;
use common::cluster::{free_port, http_get};
use common::parse_env;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const OURS_NAME: &str = "bench.nfs3-provisioner.io/ours";
const INCUMBENT_NAME: &str = "bench.nfs3-provisioner.io/incumbent";
const BENCH_NS: &str = "nfs3p-bench"; // the incumbent's ServiceAccount and Lease
const OURS_NS: &str = "nfs3-provisioner"; // deploy/base's namespace, as in a real install
const OURS_SA: &str = "nfs3p-bench-ours";
const INCUMBENT_SA: &str = "nfs3p-bench-incumbent";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const MOUNT_ROOT: &str = "/persistentvolumes";
const MARKER: &str = ".nfs3p-bench";
const CREATE_CONCURRENCY: usize = 32;
const RESTART_WINDOW: Duration = Duration::from_secs(10);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

// ---------------------------------------------------------------- environment

struct Env {
    repo: PathBuf,
    e2e_dir: PathBuf,
    admin_kubeconfig: PathBuf,
    kubectl: PathBuf,
    nfs_server: String,
    export1: PathBuf,
    out: PathBuf,
}

fn script(repo: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Res<String> {
    let out = Command::new(repo.join("tests/e2e").join(name))
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run tests/e2e/{name}: {e}"))?;
    if !out.status.success() {
        return Err(format!("tests/e2e/{name} {} failed: {}", args.join(" "), out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Env {
    fn kubectl(&self, args: &[&str]) -> Res<String> {
        self.kubectl_in(args, None)
    }

    fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Res<String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(args)
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, yaml: &str) -> Res<()> {
        self.kubectl_in(&["apply", "-f", "-"], Some(yaml))
            .map(|_| ())
    }

    /// A kubeconfig that authenticates with `token`.
    fn token_kubeconfig(&self, file: &Path, token: &str, namespace: &str) -> Res<()> {
        let server = self.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])?;
        let ca = self.kubectl(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: bench\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: bench\n    namespace: {namespace}\ncurrent-context: e2e\n"
        );
        std::fs::write(file, text)?;
        Ok(())
    }
}

async fn admin_client(env: &Env) -> Res<Client> {
    let kc = Kubeconfig::read_from(&env.admin_kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn ensure_rsvg() -> bool {
    if Command::new("rsvg-convert")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    log("installing librsvg2-bin (rsvg-convert) for the PNG plot");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "librsvg2-bin",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() {
        return true;
    }
    let _ = Command::new("apt-get")
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .status();
    install()
}

// ---------------------------------------------------------------- processes

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Subject {
    Ours,
    Incumbent,
    Limit,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Ours => "ours",
            Subject::Incumbent => "incumbent",
            Subject::Limit => "limit",
        }
    }
    fn provisioner(self) -> &'static str {
        match self {
            Subject::Ours => OURS_NAME,
            Subject::Incumbent => INCUMBENT_NAME,
            Subject::Limit => "kubernetes.io/no-provisioner",
        }
    }
    fn flow_prefix(self) -> String {
        format!("nfs3p-bench-{}", self.name())
    }
}

struct Launch {
    subject: Subject,
    bin: PathBuf,
    envs: Vec<(String, String)>,
    http_port: u16,
    log: PathBuf,
}

/// A provisioner process; SIGKILLed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Launch {
    fn spawn(&self, label: &str) -> Res<Proc> {
        let log = self.log.with_extension(format!("{label}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&self.bin);
        if self.subject == Subject::Ours {
            cmd.arg("run");
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd.spawn()?;
        Ok(Proc { child, log })
    }

    fn ready(&self, proc: &mut Proc) -> bool {
        match self.subject {
            Subject::Ours => http_get(self.http_port, "/readyz", Duration::from_secs(2))
                .is_some_and(|(c, _)| c == 200),
            _ => std::fs::read_to_string(&proc.log)
                .is_ok_and(|t| t.contains("Started provisioner controller")),
        }
    }

    /// Starts the process and waits until it is ready: (process, seconds to ready).
    async fn start_ready(&self, label: &str, limit: Duration) -> Res<(Proc, f64)> {
        let t0 = Instant::now();
        let mut p = self.spawn(label)?;
        loop {
            if self.ready(&mut p) {
                return Ok((p, t0.elapsed().as_secs_f64()));
            }
            if !p.alive() {
                return Err(format!(
                    "{} exited at start; log {}:\n{}",
                    self.subject.name(),
                    p.log.display(),
                    tail(&p.log, 20)
                )
                .into());
            }
            if t0.elapsed() > limit {
                return Err(format!("{} not ready after {limit:?}", self.subject.name()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- footprint

#[derive(Clone, Copy, Debug, Default)]
struct ProcStat {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_s: f64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ProcStat {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        cpu_s: ticks / 100.0, // CLK_TCK is 100 on Linux
    })
}

/// Samples the watched process's RSS every 100 ms and keeps the peak.
#[derive(Default)]
struct Sampler {
    pid: AtomicU32,
    peak_kb: AtomicU64,
}

impl Sampler {
    fn watch(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
        self.reset();
    }
    fn reset(&self) {
        let now = proc_stat(self.pid.load(Ordering::SeqCst))
            .map(|s| s.rss_kb)
            .unwrap_or(0);
        self.peak_kb.store(now, Ordering::SeqCst);
    }
    fn tick(&self) {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0
            && let Some(s) = proc_stat(pid)
        {
            self.peak_kb.fetch_max(s.rss_kb, Ordering::SeqCst);
        }
    }
}

/// What one phase cost the provisioner process.
#[derive(Clone, Debug, Default)]
struct Footprint {
    cpu_s: f64,
    rss_end_mb: f64,
    rss_peak_mb: f64,
    hwm_mb: f64,
}

struct PhaseMeter {
    pid: u32,
    start: ProcStat,
}

impl PhaseMeter {
    fn begin(sampler: &Sampler, pid: u32) -> Self {
        sampler.watch(pid);
        PhaseMeter {
            pid,
            start: proc_stat(pid).unwrap_or_default(),
        }
    }
    fn end(&self, sampler: &Sampler) -> Footprint {
        sampler.tick();
        let now = proc_stat(self.pid).unwrap_or_default();
        Footprint {
            cpu_s: now.cpu_s - self.start.cpu_s,
            rss_end_mb: now.rss_kb as f64 / 1024.0,
            rss_peak_mb: sampler.peak_kb.load(Ordering::SeqCst) as f64 / 1024.0,
            hwm_mb: now.hwm_kb as f64 / 1024.0,
        }
    }
}

fn footprint_json(f: &Footprint) -> Value {
    json!({
        "cpu_s": round(f.cpu_s, 3),
        "rss_end_mb": round(f.rss_end_mb, 1),
        "rss_peak_mb": round(f.rss_peak_mb, 1),
        "vm_hwm_mb": round(f.hwm_mb, 1),
    })
}

// ---------------------------------------------------------------- API request counts

/// Requests the API server dispatched per FlowSchema of ours (cumulative).
fn flow_counts(env: &Env) -> Res<HashMap<String, f64>> {
    let text = env.kubectl(&["get", "--raw", "/metrics"])?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_flowcontrol_dispatched_requests_total{")
        else {
            continue;
        };
        let Some(fs) = rest
            .split("flow_schema=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        if !fs.starts_with("nfs3p-bench-") {
            continue;
        }
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(fs.to_string()).or_insert(0.0) += v;
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, Default)]
struct Requests {
    writes: f64,
    all: f64,
}

fn requests_between(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    s: Subject,
) -> Requests {
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let w = format!("{}-writes", s.flow_prefix());
    let r = format!("{}-reads", s.flow_prefix());
    let writes = get(after, &w) - get(before, &w);
    let reads = get(after, &r) - get(before, &r);
    Requests {
        writes,
        all: writes + reads,
    }
}

fn flow_schemas_yaml(s: Subject, sa: &str, sa_ns: &str) -> String {
    let p = s.flow_prefix();
    let subject = format!(
        "    - kind: ServiceAccount\n      serviceAccount: {{name: {sa}, namespace: {sa_ns}}}\n"
    );
    // Same priority level as the built-in `service-accounts` schema gives them: only the
    // schema's name changes, so each provisioner's requests are counted apart.
    format!(
        "apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {p}-writes}}
spec:
  matchingPrecedence: 190
  priorityLevelConfiguration: {{name: workload-low}}
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects:
{subject}    resourceRules:
    - verbs: [create, update, patch, delete, deletecollection]
      apiGroups: ['*']
      resources: ['*']
      clusterScope: true
      namespaces: ['*']
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {p}-reads}}
spec:
  matchingPrecedence: 191
  priorityLevelConfiguration: {{name: workload-low}}
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects:
{subject}    resourceRules:
    - verbs: ['*']
      apiGroups: ['*']
      resources: ['*']
      clusterScope: true
      namespaces: ['*']
    nonResourceRules:
    - verbs: ['*']
      nonResourceURLs: ['*']
"
    )
}

// ---------------------------------------------------------------- watches

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// What the bench saw happen to the claims of one namespace, each first time.
#[derive(Default, Clone)]
struct Track {
    /// Claim has volume.kubernetes.io/storage-provisioner: the binder handed it over.
    handed: Seen,
    /// A PV whose claimRef names the claim appeared.
    pv: Seen,
    /// Claim phase Bound.
    bound: Seen,
    started: Arc<AtomicU32>,
}

/// Watches the claims of `ns` and the PVs that name them.
fn watch_claims(client: &Client, ns: &str) -> Track {
    let t = Track::default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let tc = t.clone();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            match ev {
                Ok(watcher::Event::InitDone) => {
                    tc.started.fetch_add(1, Ordering::SeqCst);
                }
                Ok(watcher::Event::Apply(pvc) | watcher::Event::InitApply(pvc)) => {
                    let name = pvc.metadata.name.clone().unwrap_or_default();
                    let ann = pvc.metadata.annotations.as_ref();
                    if ann
                        .is_some_and(|a| a.contains_key("volume.kubernetes.io/storage-provisioner"))
                    {
                        tc.handed.lock().unwrap().entry(name.clone()).or_insert(now);
                    }
                    if pvc.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Bound") {
                        tc.bound.lock().unwrap().entry(name).or_insert(now);
                    }
                }
                Ok(_) => {}
                Err(e) => log(format!("claim watch: {e}")),
            }
        }
    });
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let (tv, ns) = (t.clone(), ns.to_string());
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            match ev {
                Ok(watcher::Event::InitDone) => {
                    tv.started.fetch_add(1, Ordering::SeqCst);
                }
                Ok(watcher::Event::Apply(pv) | watcher::Event::InitApply(pv)) => {
                    let cref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                    if let Some(c) = cref
                        && c.namespace.as_deref() == Some(ns.as_str())
                    {
                        let name = c.name.clone().unwrap_or_default();
                        tv.pv.lock().unwrap().entry(name).or_insert(now);
                    }
                }
                Ok(_) => {}
                Err(e) => log(format!("volume watch: {e}")),
            }
        }
    });
    t
}

/// p50 and p99 of `to - from` over the claims that have both, in seconds.
fn stage(from: &HashMap<String, Instant>, to: &HashMap<String, Instant>) -> Option<(f64, f64)> {
    let mut d: Vec<f64> = to
        .iter()
        .filter_map(|(k, t)| {
            from.get(k)
                .map(|f| t.saturating_duration_since(*f).as_secs_f64())
        })
        .collect();
    if d.is_empty() {
        return None;
    }
    d.sort_by(f64::total_cmp);
    Some((percentile(&d, 50.0), percentile(&d, 99.0)))
}

/// When each of `names` was seen deleted (PVs).
fn watch_pv_deleted(
    client: &Client,
    names: HashSet<String>,
) -> (Arc<Mutex<HashMap<String, Instant>>>, Arc<AtomicBool>) {
    let gone: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Arc::new(AtomicBool::new(false));
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let (g, s) = (gone.clone(), started.clone());
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            match ev {
                Ok(watcher::Event::Init) => seen.clear(),
                Ok(watcher::Event::InitApply(pv)) => {
                    seen.insert(pv.metadata.name.unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => {
                    let mut g = g.lock().unwrap();
                    for n in names.iter().filter(|n| !seen.contains(*n)) {
                        g.entry(n.clone()).or_insert(now);
                    }
                    s.store(true, Ordering::SeqCst);
                }
                Ok(watcher::Event::Delete(pv)) => {
                    let name = pv.metadata.name.unwrap_or_default();
                    if names.contains(&name) {
                        g.lock().unwrap().entry(name).or_insert(now);
                    }
                }
                Ok(_) => {}
                Err(e) => log(format!("volume watch: {e}")),
            }
        }
    });
    (gone, started)
}

async fn wait_flag(flag: &AtomicBool, limit: Duration) -> Res<()> {
    let t0 = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        if t0.elapsed() > limit {
            return Err("watch did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------- statistics

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// (seconds since t0, count) at each completion, for the plot.
fn timeline(t0: Instant, done: &[Instant]) -> Vec<(f64, usize)> {
    let mut ts: Vec<f64> = done
        .iter()
        .map(|t| t.saturating_duration_since(t0).as_secs_f64())
        .collect();
    ts.sort_by(f64::total_cmp);
    ts.into_iter()
        .enumerate()
        .map(|(i, t)| (t, i + 1))
        .collect()
}

// ---------------------------------------------------------------- objects

fn claim(ns: &str, name: &str, class: &str, volume: Option<&str>) -> Res<PersistentVolumeClaim> {
    let mut spec = json!({
        "storageClassName": class,
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "1Gi"}},
    });
    if let Some(v) = volume {
        spec["volumeName"] = json!(v);
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))?)
}

fn prebound_pv(
    name: &str,
    ns: &str,
    claim: &str,
    class: &str,
    server: &str,
) -> Res<PersistentVolume> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"nfs3p-bench": "limit"}},
        "spec": {
            "storageClassName": class,
            "accessModes": ["ReadWriteMany"],
            "capacity": {"storage": "1Gi"},
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": ns, "name": claim},
            "nfs": {"server": server, "path": format!("/bench-limit/{name}")},
        },
    }))?)
}

async fn create_namespace(client: &Client, name: &str) -> Res<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

async fn delete_namespace_and_wait(client: &Client, name: &str, limit: Duration) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if matches!(api.get_opt(name).await, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log(format!(
        "namespace {name} still there after {limit:?}; left to the namespace controller"
    ));
}

async fn create_class(client: &Client, s: Subject) -> Res<String> {
    let name = format!("nfs3p-bench-{}", s.name());
    let mut v = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": s.provisioner(),
        "reclaimPolicy": "Delete",
    });
    if s != Subject::Limit {
        // Both understand archiveOnDelete: "false" = delete the directory.
        v["parameters"] = json!({"archiveOnDelete": "false"});
    }
    let sc: StorageClass = serde_json::from_value(v)?;
    let api: Api<StorageClass> = Api::all(client.clone());
    let _ = api.delete(&name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &sc).await?;
    Ok(name)
}

/// Creates `n` claims (and for the limit their pre-bound PVs), `CREATE_CONCURRENCY` at a
/// time; returns when each one existed (the create call's answer).
async fn create_burst(
    client: &Client,
    ns: &str,
    class: &str,
    n: usize,
    limit_server: Option<&str>,
) -> Res<HashMap<String, Instant>> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let created: Vec<(String, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let (claims, pvs) = (claims.clone(), pvs.clone());
            async move {
                let name = format!("c-{i:05}");
                let pp = PostParams::default();
                match limit_server {
                    None => {
                        claims.create(&pp, &claim(ns, &name, class, None)?).await?;
                    }
                    Some(server) => {
                        let pv_name = format!("{ns}-{name}");
                        let pv = prebound_pv(&pv_name, ns, &name, class, server)?;
                        // Bound both ways: the PV's claimRef names the claim and the
                        // claim's volumeName the PV, the shortest path through the
                        // binder. PV first, so the binder never sees a claim whose
                        // volume is missing (it would wait for its periodic resync).
                        pvs.create(&pp, &pv).await?;
                        claims
                            .create(&pp, &claim(ns, &name, class, Some(&pv_name))?)
                            .await?;
                    }
                }
                Ok::<_, BoxError>((name, Instant::now()))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(created.into_iter().collect())
}

// ---------------------------------------------------------------- one run

#[derive(Debug, Default, Clone)]
struct Burst {
    n: usize,
    create_s: f64,
    all_done_s: f64,
    per_s: f64,
    lat: Vec<f64>,
    timeline: Vec<(f64, usize)>,
    done: usize,
}

impl Burst {
    fn json(&self) -> Value {
        let mut lat = self.lat.clone();
        lat.sort_by(f64::total_cmp);
        json!({
            "n": self.n,
            "completed": self.done,
            "create_s": round(self.create_s, 3),
            "all_done_s": round(self.all_done_s, 3),
            "per_s": round(self.per_s, 2),
            "latency_s": {
                "p50": round(percentile(&lat, 50.0), 3),
                "p95": round(percentile(&lat, 95.0), 3),
                "p99": round(percentile(&lat, 99.0), 3),
                "max": round(lat.last().copied().unwrap_or(f64::NAN), 3),
            },
        })
    }
    fn p(&self, q: f64) -> f64 {
        let mut lat = self.lat.clone();
        lat.sort_by(f64::total_cmp);
        percentile(&lat, q)
    }
}

#[derive(Debug, Default, Clone)]
struct RunResult {
    subject: Option<Subject>,
    /// A footprint-only run: N pre-bound PVs and claims made by the bench, the
    /// provisioner started among them (no provisioning, no reclaim).
    footprint_only: bool,
    n: usize,
    error: Option<String>,
    cold_start_s: Option<f64>,
    provision: Burst,
    provision_fp: Option<Footprint>,
    /// Where a claim's time to Bound goes: (stage, (p50, p99) seconds).
    stages: Vec<(&'static str, Option<(f64, f64)>)>,
    provision_req: Option<Requests>,
    idle_fp: Option<Footprint>,
    restart_ready_s: Option<f64>,
    restart_req: Option<Requests>,
    restart_fp: Option<Footprint>,
    reclaim: Option<Burst>,
    reclaim_dirs_s: Option<f64>,
    reclaim_fp: Option<Footprint>,
    reclaim_req: Option<Requests>,
}

impl RunResult {
    fn json(&self) -> Value {
        let req = |r: &Option<Requests>, per: usize| {
            r.map(|r| {
                json!({
                    "writes": r.writes,
                    "all": r.all,
                    "writes_per_claim": round(r.writes / per.max(1) as f64, 2),
                    "all_per_claim": round(r.all / per.max(1) as f64, 2),
                })
            })
        };
        json!({
            "subject": self.subject.map(|s| s.name()),
            "footprint_only": self.footprint_only,
            "n": self.n,
            "error": self.error,
            "cold_start_s": self.cold_start_s.map(|v| round(v, 3)),
            "provision": self.provision.json(),
            "provision_stages_s": self.stages.iter().map(|(name, v)| json!({
                "stage": name,
                "p50": v.map(|x| round(x.0, 3)),
                "p99": v.map(|x| round(x.1, 3)),
            })).collect::<Vec<_>>(),
            "provision_footprint": self.provision_fp.as_ref().map(footprint_json),
            "provision_requests": req(&self.provision_req, self.n),
            "idle_footprint": self.idle_fp.as_ref().map(footprint_json),
            "restart": {
                "ready_s": self.restart_ready_s.map(|v| round(v, 3)),
                "requests_until_ready_plus_10s": req(&self.restart_req, 1),
                "footprint": self.restart_fp.as_ref().map(footprint_json),
            },
            "reclaim": self.reclaim.as_ref().map(|r| {
                let mut v = r.json();
                v["dirs_gone_s"] = json!(self.reclaim_dirs_s.map(|d| round(d, 3)));
                v
            }),
            "reclaim_footprint": self.reclaim_fp.as_ref().map(footprint_json),
            "reclaim_requests": req(&self.reclaim_req, self.n),
            "provision_timeline": self.provision.timeline.iter().map(|(t, c)| json!([round(*t, 3), c])).collect::<Vec<_>>(),
        })
    }
}

struct Bench {
    env: Env,
    client: Client,
    sampler: Arc<Sampler>,
    ours: Option<Launch>,
    incumbent: Option<Launch>,
    files: usize,
    phase_timeout: Option<Duration>,
}

impl Bench {
    fn phase_limit(&self, n: usize) -> Duration {
        self.phase_timeout
            .unwrap_or(Duration::from_secs_f64(300.0 + 1.5 * n as f64))
    }

    async fn run(&self, s: Subject, n: usize, out: &mut RunResult) -> Res<()> {
        out.subject = Some(s);
        out.n = n;
        let ns = format!("nfs3p-bench-{}-n{n}", s.name());
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
        create_namespace(&self.client, &ns).await?;
        let class = create_class(&self.client, s).await?;
        let limit = self.phase_limit(n);
        let result = self.run_in(s, n, &ns, &class, limit, out).await;
        // Clean up whatever happened.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let _ = claims
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        if s == Subject::Limit {
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let _ = pvs
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels("nfs3p-bench=limit"),
                )
                .await;
        }
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
        let _ = Api::<StorageClass>::all(self.client.clone())
            .delete(&class, &DeleteParams::default())
            .await;
        result
    }

    /// N pre-bound PV+claim pairs (made like the limit's), then each provisioner started
    /// among them: RSS and CPU 30 s after ready, and a restart (time to ready, requests).
    async fn footprint(&self, n: usize, subjects: &[Subject]) -> Vec<RunResult> {
        let mut results = vec![];
        let ns = format!("nfs3p-bench-limit-fp{n}");
        let prep = async {
            delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(120)).await;
            create_namespace(&self.client, &ns).await?;
            let class = create_class(&self.client, Subject::Limit).await?;
            let track = watch_claims(&self.client, &ns);
            log(format!(
                "footprint: creating {n} pre-bound volumes and claims"
            ));
            let t0 = Instant::now();
            create_burst(
                &self.client,
                &ns,
                &class,
                n,
                Some(self.env.nfs_server.as_str()),
            )
            .await?;
            let limit = self.phase_limit(n);
            while track.bound.lock().unwrap().len() < n && t0.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            log(format!(
                "footprint: {}/{n} Bound after {:.0}s",
                track.bound.lock().unwrap().len(),
                t0.elapsed().as_secs_f64()
            ));
            Ok::<_, BoxError>(())
        };
        if let Err(e) = prep.await {
            log(format!("footprint set-up failed: {e}"));
        } else {
            for &s in subjects {
                let launch = match s {
                    Subject::Ours => self.ours.as_ref(),
                    Subject::Incumbent => self.incumbent.as_ref(),
                    Subject::Limit => None,
                };
                let Some(launch) = launch else { continue };
                let mut r = RunResult {
                    subject: Some(s),
                    n,
                    footprint_only: true,
                    ..Default::default()
                };
                let run = async {
                    let (p, ready) = launch
                        .start_ready(&format!("fp{n}-start"), Duration::from_secs(300))
                        .await?;
                    r.cold_start_s = Some(ready);
                    let meter = PhaseMeter {
                        pid: p.pid(),
                        start: ProcStat::default(),
                    };
                    self.sampler.watch(p.pid());
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    r.idle_fp = Some(meter.end(&self.sampler));
                    let before = flow_counts(&self.env)?;
                    drop(p);
                    let (p, ready) = launch
                        .start_ready(&format!("fp{n}-restart"), Duration::from_secs(300))
                        .await?;
                    self.sampler.watch(p.pid());
                    tokio::time::sleep(RESTART_WINDOW).await;
                    r.restart_ready_s = Some(ready);
                    r.restart_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
                    r.restart_fp = Some(
                        PhaseMeter {
                            pid: p.pid(),
                            start: ProcStat::default(),
                        }
                        .end(&self.sampler),
                    );
                    Ok::<_, BoxError>(())
                };
                if let Err(e) = run.await {
                    r.error = Some(e.to_string());
                }
                log(format!(
                    "footprint {} with {n} PVs: RSS {:.1} MiB, restart ready {:.2}s, {} writes",
                    s.name(),
                    r.idle_fp.as_ref().map(|f| f.rss_end_mb).unwrap_or(f64::NAN),
                    r.restart_ready_s.unwrap_or(f64::NAN),
                    r.restart_req.map(|q| q.writes).unwrap_or(f64::NAN)
                ));
                results.push(r);
            }
        }
        let _ = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let _ = Api::<PersistentVolume>::all(self.client.clone())
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("nfs3p-bench=limit"),
            )
            .await;
        delete_namespace_and_wait(&self.client, &ns, Duration::from_secs(300)).await;
        results
    }

    async fn run_in(
        &self,
        s: Subject,
        n: usize,
        ns: &str,
        class: &str,
        limit: Duration,
        out: &mut RunResult,
    ) -> Res<()> {
        let launch = match s {
            Subject::Ours => self.ours.as_ref(),
            Subject::Incumbent => self.incumbent.as_ref(),
            Subject::Limit => None,
        };
        let mut proc = None;
        if s == Subject::Incumbent {
            // A genuine cold start: no Lease left by the previous run's (killed) process,
            // which would make this start wait for it to expire like a restart does.
            let _ = self.env.kubectl(&[
                "delete",
                "--ignore-not-found",
                "-n",
                BENCH_NS,
                "lease",
                &INCUMBENT_NAME.replace('/', "-"),
            ]);
        }
        if let Some(l) = launch {
            let (p, secs) = l
                .start_ready(&format!("n{n}-start"), Duration::from_secs(120))
                .await?;
            log(format!(
                "{}: ready after {secs:.2}s (pid {})",
                s.name(),
                p.pid()
            ));
            out.cold_start_s = Some(secs);
            proc = Some(p);
            tokio::time::sleep(Duration::from_secs(2)).await; // let start-up work settle
        }

        // 1. Burst provision.
        let track = watch_claims(&self.client, ns);
        let bound = track.bound.clone();
        let t_w = Instant::now();
        while track.started.load(Ordering::SeqCst) < 2 {
            if t_w.elapsed() > Duration::from_secs(30) {
                return Err("watches did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let meter = proc
            .as_ref()
            .map(|p| PhaseMeter::begin(&self.sampler, p.pid()));
        let before = flow_counts(&self.env)?;
        log(format!("{}: creating {n} claims", s.name()));
        let t0 = Instant::now();
        let server = self.env.nfs_server.clone();
        let created = create_burst(
            &self.client,
            ns,
            class,
            n,
            (s == Subject::Limit).then_some(server.as_str()),
        )
        .await?;
        let create_s = t0.elapsed().as_secs_f64();
        log(format!(
            "{}: {n} claims created in {create_s:.2}s; waiting for Bound",
            s.name()
        ));
        let mut last_report = Instant::now();
        loop {
            let done = bound.lock().unwrap().len();
            if done >= n {
                break;
            }
            if t0.elapsed() > limit {
                out.error = Some(format!("only {done}/{n} claims Bound after {limit:?}"));
                break;
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                log(format!(
                    "{}: {done}/{n} Bound after {:.0}s",
                    s.name(),
                    t0.elapsed().as_secs_f64()
                ));
                last_report = Instant::now();
            }
            if let Some(p) = proc.as_mut()
                && !p.alive()
            {
                return Err(format!("{} died; log:\n{}", s.name(), tail(&p.log, 30)).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bound_at: HashMap<String, Instant> = bound.lock().unwrap().clone();
        let last = bound_at.values().max().copied().unwrap_or(t0);
        let all_done_s = last.saturating_duration_since(t0).as_secs_f64();
        out.provision = Burst {
            n,
            create_s,
            all_done_s,
            per_s: bound_at.len() as f64 / all_done_s.max(1e-9),
            lat: bound_at
                .iter()
                .filter_map(|(k, b)| {
                    created
                        .get(k)
                        .map(|c| b.saturating_duration_since(*c).as_secs_f64())
                })
                .collect(),
            timeline: timeline(t0, &bound_at.values().copied().collect::<Vec<_>>()),
            done: bound_at.len(),
        };
        {
            let handed = track.handed.lock().unwrap().clone();
            let pv = track.pv.lock().unwrap().clone();
            if s == Subject::Limit {
                out.stages
                    .push(("claim created → Bound (binder)", stage(&created, &bound_at)));
            } else {
                out.stages.push((
                    "claim created → handed to provisioner (binder)",
                    stage(&created, &handed),
                ));
                out.stages
                    .push(("handed → PV created (provisioner)", stage(&handed, &pv)));
                out.stages
                    .push(("PV created → claim Bound (binder)", stage(&pv, &bound_at)));
            }
        }
        log(format!(
            "{}: {}/{n} Bound in {all_done_s:.2}s ({:.1}/s), p50 {:.2}s p99 {:.2}s",
            s.name(),
            bound_at.len(),
            out.provision.per_s,
            out.provision.p(50.0),
            out.provision.p(99.0)
        ));
        if let Some(m) = &meter {
            out.provision_fp = Some(m.end(&self.sampler));
        }
        if out.error.is_some() || launch.is_none() {
            if s != Subject::Limit {
                out.provision_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
            }
            return Ok(());
        }
        let (launch, mut p) = (launch.expect("checked"), proc.take().expect("started"));

        // Idle with N volumes. Requests still under way (events queued behind a client
        // rate limit) count to the provisioning: its window ends after this.
        let meter = PhaseMeter::begin(&self.sampler, p.pid());
        tokio::time::sleep(IDLE_WINDOW).await;
        out.idle_fp = Some(meter.end(&self.sampler));
        out.provision_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));

        // 2. Restart with the N volumes there.
        let before = flow_counts(&self.env)?;
        p.kill9();
        drop(p);
        let (p, ready_s) = launch
            .start_ready(&format!("n{n}-restart"), Duration::from_secs(120))
            .await?;
        let meter = PhaseMeter::begin(&self.sampler, p.pid());
        // The restart's own start-up cost counts: measure CPU from the process's birth.
        let meter = PhaseMeter {
            pid: meter.pid,
            start: ProcStat::default(),
        };
        tokio::time::sleep(RESTART_WINDOW).await;
        out.restart_ready_s = Some(ready_s);
        out.restart_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
        out.restart_fp = Some(meter.end(&self.sampler));
        log(format!(
            "{}: restart ready after {ready_s:.2}s; {} writes, {} requests until ready+10s",
            s.name(),
            out.restart_req.map(|r| r.writes).unwrap_or_default(),
            out.restart_req.map(|r| r.all).unwrap_or_default()
        ));

        // 3. Burst reclaim.
        let pvs: Vec<PersistentVolume> = Api::<PersistentVolume>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.namespace.as_deref())
                    == Some(ns)
            })
            .collect();
        let dirs: Vec<PathBuf> = pvs
            .iter()
            .filter_map(|pv| {
                pv.spec
                    .as_ref()?
                    .nfs
                    .as_ref()
                    .map(|n| PathBuf::from(&n.path))
            })
            .collect();
        let files = self.files;
        let dirs_w = dirs.clone();
        log(format!(
            "{}: writing {files} files into each of {} directories",
            s.name(),
            dirs.len()
        ));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for d in &dirs_w {
                for i in 0..files {
                    std::fs::write(d.join(format!("f{i:03}")), b"nfs3p-bench small file\n")?;
                }
            }
            Ok(())
        })
        .await??;
        let names: HashSet<String> = pvs
            .iter()
            .filter_map(|pv| pv.metadata.name.clone())
            .collect();
        let (gone, watching) = watch_pv_deleted(&self.client, names.clone());
        wait_flag(&watching, Duration::from_secs(30)).await?;
        let meter = PhaseMeter::begin(&self.sampler, p.pid());
        let before = flow_counts(&self.env)?;
        let t0 = Instant::now();
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let mut dirs_left: Vec<PathBuf> = dirs.clone();
        let mut dirs_done: Option<f64> = None;
        let mut last_report = Instant::now();
        let mut p = p;
        loop {
            dirs_left.retain(|d| d.exists());
            if dirs_left.is_empty() && dirs_done.is_none() {
                dirs_done = Some(t0.elapsed().as_secs_f64());
            }
            let done = gone.lock().unwrap().len();
            if done >= names.len() && dirs_left.is_empty() {
                break;
            }
            if t0.elapsed() > limit {
                out.error = Some(format!(
                    "reclaim: {done}/{} volumes and {}/{} directories gone after {limit:?}",
                    names.len(),
                    dirs.len() - dirs_left.len(),
                    dirs.len()
                ));
                break;
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                log(format!(
                    "{}: reclaim {done}/{} volumes, {} directories left after {:.0}s",
                    s.name(),
                    names.len(),
                    dirs_left.len(),
                    t0.elapsed().as_secs_f64()
                ));
                last_report = Instant::now();
            }
            if !p.alive() {
                return Err(format!("{} died; log:\n{}", s.name(), tail(&p.log, 30)).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone_at: Vec<Instant> = gone.lock().unwrap().values().copied().collect();
        let last = gone_at.iter().max().copied().unwrap_or(t0);
        let all = last
            .saturating_duration_since(t0)
            .as_secs_f64()
            .max(dirs_done.unwrap_or(0.0));
        out.reclaim = Some(Burst {
            n: names.len(),
            create_s: 0.0,
            all_done_s: all,
            per_s: gone_at.len() as f64 / all.max(1e-9),
            lat: gone_at
                .iter()
                .map(|g| g.saturating_duration_since(t0).as_secs_f64())
                .collect(),
            timeline: timeline(t0, &gone_at),
            done: gone_at.len(),
        });
        out.reclaim_dirs_s = dirs_done;
        out.reclaim_fp = Some(meter.end(&self.sampler));
        out.reclaim_req = Some(requests_between(&before, &flow_counts(&self.env)?, s));
        log(format!(
            "{}: reclaimed {}/{} volumes in {all:.2}s (directories gone after {:.2}s)",
            s.name(),
            gone_at.len(),
            names.len(),
            dirs_done.unwrap_or(f64::NAN)
        ));
        Ok(())
    }
}

// ---------------------------------------------------------------- set-up and clean-up

/// What the bench put on the machine outside the cluster, to take away again.
#[derive(Default)]
struct HostState {
    made_sa_dir: bool,
    made_mount_root: bool,
    kcm_changed: bool,
}

fn setup_in_cluster_files(env: &Env, token: &str, host: &mut HostState) -> Res<()> {
    let dir = Path::new(SA_DIR);
    if dir.exists() && !dir.join(MARKER).exists() {
        return Err(format!("{SA_DIR} exists and is not the bench's: not touching it").into());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "made by benches/provision.rs\n")?;
    std::fs::write(dir.join("token"), token)?;
    std::fs::copy(env.e2e_dir.join("k8s/pki/ca.crt"), dir.join("ca.crt"))?;
    std::fs::write(dir.join("namespace"), BENCH_NS)?;
    host.made_sa_dir = true;
    let root = Path::new(MOUNT_ROOT);
    match std::fs::read_link(root) {
        Ok(t) if t == env.export1 => {}
        Ok(_) | Err(_) if root.exists() || root.symlink_metadata().is_ok() => {
            return Err(format!(
                "{MOUNT_ROOT} exists and is not a link to {}: not touching it",
                env.export1.display()
            )
            .into());
        }
        _ => std::os::unix::fs::symlink(&env.export1, root)?,
    }
    host.made_mount_root = true;
    Ok(())
}

fn cleanup_host(host: &HostState) {
    if host.made_sa_dir {
        let _ = std::fs::remove_dir_all(SA_DIR);
        // Remove /var/run/secrets/kubernetes.io if we left it empty.
        let _ = std::fs::remove_dir(Path::new(SA_DIR).parent().expect("parent"));
        let _ = std::fs::remove_dir(
            Path::new(SA_DIR)
                .parent()
                .and_then(Path::parent)
                .expect("parent"),
        );
    }
    if host.made_mount_root {
        let _ = std::fs::remove_file(MOUNT_ROOT);
    }
}

fn rbac_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {BENCH_NS}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {INCUMBENT_SA}, namespace: {BENCH_NS}}}
---
# The rights the incumbent's deploy/rbac.yaml gives it.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {INCUMBENT_SA}}}
rules:
- apiGroups: ['']
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: ['']
  resources: [persistentvolumes]
  verbs: [get, list, watch, create, delete]
- apiGroups: ['']
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, update]
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list, watch]
- apiGroups: ['']
  resources: [events]
  verbs: [create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {INCUMBENT_SA}}}
subjects: [{{kind: ServiceAccount, name: {INCUMBENT_SA}, namespace: {BENCH_NS}}}]
roleRef: {{kind: ClusterRole, name: {INCUMBENT_SA}, apiGroup: rbac.authorization.k8s.io}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {INCUMBENT_SA}-leader-election, namespace: {BENCH_NS}}}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
- apiGroups: ['']
  resources: [endpoints]
  verbs: [get, list, watch, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {INCUMBENT_SA}-leader-election, namespace: {BENCH_NS}}}
subjects: [{{kind: ServiceAccount, name: {INCUMBENT_SA}, namespace: {BENCH_NS}}}]
roleRef: {{kind: Role, name: {INCUMBENT_SA}-leader-election, apiGroup: rbac.authorization.k8s.io}}
---
# Ours: a ServiceAccount of the bench's own (so its requests can be told from the e2e
# tests', which use deploy/base's), bound to exactly deploy/base's roles.
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {OURS_SA}, namespace: {OURS_NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {OURS_SA}}}
subjects: [{{kind: ServiceAccount, name: {OURS_SA}, namespace: {OURS_NS}}}]
roleRef: {{kind: ClusterRole, name: nfs3-provisioner, apiGroup: rbac.authorization.k8s.io}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {OURS_SA}, namespace: {OURS_NS}}}
subjects: [{{kind: ServiceAccount, name: {OURS_SA}, namespace: {OURS_NS}}}]
roleRef: {{kind: Role, name: nfs3-provisioner-leader-election, apiGroup: rbac.authorization.k8s.io}}
"
    )
}

/// Removes what the bench created in the cluster (the namespace deploy/base owns stays).
async fn cleanup_cluster(env: &Env, client: &Client) {
    for ns_prefix in [
        "nfs3p-bench-ours-",
        "nfs3p-bench-incumbent-",
        "nfs3p-bench-limit-",
    ] {
        if let Ok(list) = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            for ns in list.items {
                let name = ns.metadata.name.unwrap_or_default();
                if name.starts_with(ns_prefix) {
                    let _ = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &name)
                        .delete_collection(&DeleteParams::default(), &ListParams::default())
                        .await;
                    let _ = Api::<Namespace>::all(client.clone())
                        .delete(&name, &DeleteParams::default())
                        .await;
                }
            }
        }
    }
    // Volumes left behind by an interrupted run: the provisioners are gone, so nothing
    // else will let go of them.
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if let Ok(list) = pvs.list(&ListParams::default()).await {
        for pv in list.items {
            let ns = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.namespace.clone())
                .unwrap_or_default();
            let name = pv.metadata.name.clone().unwrap_or_default();
            if ns.starts_with("nfs3p-bench-") {
                let _ = pvs.delete(&name, &DeleteParams::default()).await;
                let _ = pvs
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        }
    }
    for s in [Subject::Ours, Subject::Incumbent, Subject::Limit] {
        let _ = Api::<StorageClass>::all(client.clone())
            .delete(
                &format!("nfs3p-bench-{}", s.name()),
                &DeleteParams::default(),
            )
            .await;
    }
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "flowschema",
        "nfs3p-bench-ours-writes",
        "nfs3p-bench-ours-reads",
        "nfs3p-bench-incumbent-writes",
        "nfs3p-bench-incumbent-reads",
    ]);
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "clusterrolebinding",
        OURS_SA,
        INCUMBENT_SA,
    ]);
    let _ = env.kubectl(&["delete", "--ignore-not-found", "clusterrole", INCUMBENT_SA]);
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "-n",
        OURS_NS,
        "rolebinding,serviceaccount",
        OURS_SA,
    ]);
    let _ = env.kubectl(&[
        "delete",
        "--ignore-not-found",
        "--wait=false",
        "namespace",
        BENCH_NS,
    ]);
    // Directories an interrupted run left on the export.
    if let Ok(rd) = std::fs::read_dir(&env.export1) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("nfs3p-bench-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// kube-controller-manager's --kube-api-qps / --kube-api-burst as it runs now.
fn kcm_qps(env: &Env) -> (String, String) {
    let pid = std::fs::read_to_string(env.e2e_dir.join("k8s/kube-controller-manager.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let cmdline = pid
        .and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    let flag = |name: &str, default: &str| {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
            .unwrap_or_else(|| format!("{default} (default)"))
    };
    (flag("kube-api-qps", "20"), flag("kube-api-burst", "30"))
}

/// Restarts kube-controller-manager with `qps` (None: the defaults).
fn restart_kcm(env: &Env, qps: Option<u32>) -> Res<()> {
    let pidfile = env.e2e_dir.join("k8s/kube-controller-manager.pid");
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "kube-controller" {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let t0 = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && t0.elapsed() < Duration::from_secs(15)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let (q, b) = qps
        .map(|q| (q.to_string(), (q * 3 / 2).to_string()))
        .unwrap_or_default();
    let envs: Vec<(&str, &str)> = if qps.is_some() {
        vec![("KCM_API_QPS", q.as_str()), ("KCM_API_BURST", b.as_str())]
    } else {
        vec![]
    };
    script(&env.repo, "cluster.sh", &["up"], &envs).map(|_| ())
}

// ---------------------------------------------------------------- report

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}×", a / b)
        }
        _ => "–".into(),
    }
}

fn markdown(results: &[RunResult], meta: &Value) -> String {
    let mut md = String::new();
    md.push_str("# Provisioning benchmark\n\n");
    md.push_str(&format!(
        "- when: {}\n- machine: {} cores, load average at start {}\n- kube-controller-manager: --kube-api-qps {}, --kube-api-burst {}\n- incumbent: {}\n- files per directory before reclaim: {}\n\n",
        meta["started_utc"].as_str().unwrap_or(""),
        meta["cores"],
        meta["loadavg_start"].as_str().unwrap_or(""),
        meta["kcm_api_qps"].as_str().unwrap_or(""),
        meta["kcm_api_burst"].as_str().unwrap_or(""),
        meta["incumbent"].as_str().unwrap_or(""),
        meta["files_per_dir"],
    ));
    let mut ns: Vec<usize> = results.iter().map(|r| r.n).collect();
    ns.sort();
    ns.dedup();
    for n in ns {
        let get = |s: Subject| results.iter().find(|r| r.n == n && r.subject == Some(s));
        let (o, i, l) = (
            get(Subject::Ours),
            get(Subject::Incumbent),
            get(Subject::Limit),
        );
        md.push_str(&format!("## N = {n}\n\n| metric | ours | incumbent | limit | ours/incumbent | ours/limit |\n|---|---:|---:|---:|---:|---:|\n"));
        type F = fn(&RunResult) -> Option<f64>;
        let rows: Vec<(&str, F, usize)> = vec![
            ("claims Bound", |r| Some(r.provision.done as f64), 0),
            ("burst: all Bound (s)", |r| Some(r.provision.all_done_s), 2),
            ("burst: claims/s", |r| Some(r.provision.per_s), 2),
            ("claim→Bound p50 (s)", |r| Some(r.provision.p(50.0)), 2),
            ("claim→Bound p95 (s)", |r| Some(r.provision.p(95.0)), 2),
            ("claim→Bound p99 (s)", |r| Some(r.provision.p(99.0)), 2),
            (
                "provision: API writes/claim (to Bound+10s)",
                |r| r.provision_req.map(|q| q.writes / r.n as f64),
                2,
            ),
            (
                "provision: API requests/claim (to Bound+10s)",
                |r| r.provision_req.map(|q| q.all / r.n as f64),
                2,
            ),
            (
                "provision: CPU (s)",
                |r| r.provision_fp.as_ref().map(|f| f.cpu_s),
                2,
            ),
            (
                "provision: peak RSS (MiB)",
                |r| r.provision_fp.as_ref().map(|f| f.rss_peak_mb),
                1,
            ),
            (
                "idle RSS with N PVs, 10s after Bound (MiB)",
                |r| r.idle_fp.as_ref().map(|f| f.rss_end_mb),
                1,
            ),
            ("cold start to ready (s)", |r| r.cold_start_s, 2),
            ("restart to ready (s)", |r| r.restart_ready_s, 2),
            (
                "restart: API writes (to ready+10s)",
                |r| r.restart_req.map(|q| q.writes),
                0,
            ),
            (
                "restart: API requests (to ready+10s)",
                |r| r.restart_req.map(|q| q.all),
                0,
            ),
            (
                "restart: RSS at ready+10s (MiB)",
                |r| r.restart_fp.as_ref().map(|f| f.rss_end_mb),
                1,
            ),
            (
                "restart: CPU to ready+10s (s)",
                |r| r.restart_fp.as_ref().map(|f| f.cpu_s),
                2,
            ),
            (
                "reclaim: all PVs+dirs gone (s)",
                |r| r.reclaim.as_ref().map(|b| b.all_done_s),
                2,
            ),
            (
                "reclaim: volumes/s",
                |r| r.reclaim.as_ref().map(|b| b.per_s),
                2,
            ),
            (
                "reclaim: API writes/claim",
                |r| r.reclaim_req.map(|q| q.writes / r.n as f64),
                2,
            ),
            (
                "reclaim: API requests/claim",
                |r| r.reclaim_req.map(|q| q.all / r.n as f64),
                2,
            ),
            (
                "reclaim: CPU (s)",
                |r| r.reclaim_fp.as_ref().map(|f| f.cpu_s),
                2,
            ),
            (
                "reclaim: peak RSS (MiB)",
                |r| r.reclaim_fp.as_ref().map(|f| f.rss_peak_mb),
                1,
            ),
            (
                "VmHWM at end (MiB)",
                |r| {
                    r.reclaim_fp
                        .as_ref()
                        .or(r.provision_fp.as_ref())
                        .map(|f| f.hwm_mb)
                },
                1,
            ),
        ];
        for (label, f, d) in rows {
            let (vo, vi, vl) = (o.and_then(f), i.and_then(f), l.and_then(f));
            md.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} |\n",
                fmt(vo, d),
                fmt(vi, d),
                fmt(vl, d),
                ratio(vo, vi),
                ratio(vo, vl)
            ));
        }
        md.push_str("\nWhere a claim's time to Bound goes (p50 / p99 seconds, from the bench's watches):\n\n| subject | stage | p50 | p99 |\n|---|---|---:|---:|\n");
        for r in [o, i, l].into_iter().flatten() {
            for (name, v) in &r.stages {
                md.push_str(&format!(
                    "| {} | {name} | {} | {} |\n",
                    r.subject.map(|s| s.name()).unwrap_or(""),
                    fmt(v.map(|x| x.0), 2),
                    fmt(v.map(|x| x.1), 2)
                ));
            }
        }
        for r in [o, i, l].into_iter().flatten() {
            if let Some(e) = &r.error {
                md.push_str(&format!(
                    "\n**{} failed:** {e}\n",
                    r.subject.map(|s| s.name()).unwrap_or("")
                ));
            }
        }
        md.push('\n');
    }
    md
}

/// (subject, colour, timeline)
type PlotLine<'a> = (&'static str, &'static str, &'a Vec<(f64, usize)>);

/// An SVG line plot of claims Bound over time, one line per subject, for one N.
fn svg_plot(results: &[RunResult], n: usize) -> Option<String> {
    let lines: Vec<PlotLine> = results
        .iter()
        .filter(|r| r.n == n && !r.provision.timeline.is_empty())
        .map(|r| {
            let s = r.subject.expect("subject");
            let color = match s {
                Subject::Ours => "#1f77b4",
                Subject::Incumbent => "#d62728",
                Subject::Limit => "#7f7f7f",
            };
            (s.name(), color, &r.provision.timeline)
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    let (w, h, ml, mr, mt, mb) = (900.0, 500.0, 70.0, 20.0, 40.0, 50.0);
    let tmax = lines
        .iter()
        .flat_map(|(_, _, t)| t.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        * 1.03;
    let x = |t: f64| ml + (w - ml - mr) * t / tmax;
    let y = |c: f64| h - mb - (h - mt - mb) * c / n as f64;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='13'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{}' y='24' text-anchor='middle' font-size='16'>Claims Bound over time, burst of N = {n}</text>\n",
        w / 2.0
    );
    // Axes and ticks.
    svg.push_str(&format!(
        "<line x1='{ml}' y1='{}' x2='{}' y2='{}' stroke='black'/>\n<line x1='{ml}' y1='{mt}' x2='{ml}' y2='{}' stroke='black'/>\n",
        h - mb, w - mr, h - mb, h - mb
    ));
    let step = nice_step(tmax / 8.0);
    let mut t = 0.0;
    while t <= tmax {
        svg.push_str(&format!(
            "<line x1='{0}' y1='{1}' x2='{0}' y2='{2}' stroke='#ddd'/><text x='{0}' y='{3}' text-anchor='middle'>{4}</text>\n",
            x(t), mt, h - mb, h - mb + 18.0, t
        ));
        t += step;
    }
    for k in 0..=4 {
        let c = n as f64 * k as f64 / 4.0;
        svg.push_str(&format!(
            "<line x1='{ml}' y1='{0}' x2='{1}' y2='{0}' stroke='#ddd'/><text x='{2}' y='{3}' text-anchor='end'>{4}</text>\n",
            y(c), w - mr, ml - 6.0, y(c) + 4.0, c.round()
        ));
    }
    svg.push_str(&format!(
        "<text x='{}' y='{}' text-anchor='middle'>seconds since the burst started</text>\n<text x='18' y='{}' text-anchor='middle' transform='rotate(-90 18 {})'>claims Bound</text>\n",
        (ml + w - mr) / 2.0, h - 12.0, (mt + h - mb) / 2.0, (mt + h - mb) / 2.0
    ));
    for (i, (name, color, tl)) in lines.iter().enumerate() {
        let mut pts = format!("{},{} ", x(0.0), y(0.0));
        for (t, c) in tl.iter() {
            pts.push_str(&format!("{:.1},{:.1} ", x(*t), y(*c as f64)));
        }
        svg.push_str(&format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{pts}'/>\n<rect x='{}' y='{}' width='14' height='4' fill='{color}'/><text x='{}' y='{}'>{name}</text>\n",
            ml + 20.0,
            mt + 10.0 + 20.0 * i as f64,
            ml + 40.0,
            mt + 16.0 + 20.0 * i as f64
        ));
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-9).log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn write_outputs(env: &Env, tag: &str, all: &[RunResult], meta: &Value) -> Res<()> {
    std::fs::create_dir_all(&env.out)?;
    let results: Vec<RunResult> = all.iter().filter(|r| !r.footprint_only).cloned().collect();
    let fps: Vec<RunResult> = all.iter().filter(|r| r.footprint_only).cloned().collect();
    let results = &results[..];
    let targets = targets(results, &fps);
    let doc = json!({
        "meta": meta,
        "runs": all.iter().map(RunResult::json).collect::<Vec<_>>(),
        "targets": targets,
    });
    std::fs::write(
        env.out.join(format!("{tag}.json")),
        serde_json::to_string_pretty(&doc)?,
    )?;
    let mut md = markdown(results, meta);
    if !fps.is_empty() {
        md.push_str("## Footprint among pre-existing volumes\n\nN pre-bound PVs and claims made by the bench (not provisioned by either); the provisioner is started among them, measured 30 s after ready, then SIGKILLed and started again.\n\n| subject | PVs+claims | start to ready (s) | RSS 30 s after ready (MiB) | VmHWM (MiB) | CPU to then (s) | restart to ready (s) | restart: API writes / requests (to ready+10s) | RSS after restart (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &fps {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
                r.subject.map(|s| s.name()).unwrap_or(""),
                r.n,
                fmt(r.cold_start_s, 2),
                fmt(r.idle_fp.as_ref().map(|f| f.rss_end_mb), 1),
                fmt(r.idle_fp.as_ref().map(|f| f.hwm_mb), 1),
                fmt(r.idle_fp.as_ref().map(|f| f.cpu_s), 2),
                fmt(r.restart_ready_s, 2),
                fmt(r.restart_req.map(|q| q.writes), 0),
                fmt(r.restart_req.map(|q| q.all), 0),
                fmt(r.restart_fp.as_ref().map(|f| f.rss_end_mb), 1),
            ));
            if let Some(e) = &r.error {
                md.push_str(&format!(
                    "\n**{} failed:** {e}\n",
                    r.subject.map(|s| s.name()).unwrap_or("")
                ));
            }
        }
        md.push('\n');
    }
    md.push_str("## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    for t in targets.as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            t["measured"].as_str().unwrap_or(""),
            match t["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            }
        ));
    }
    let mut ns: Vec<usize> = results.iter().map(|r| r.n).collect();
    ns.sort();
    ns.dedup();
    let rsvg = ensure_rsvg();
    for n in ns {
        if let Some(svg) = svg_plot(results, n) {
            let svg_path = env.out.join(format!("{tag}-bound-n{n}.svg"));
            std::fs::write(&svg_path, svg)?;
            let png = svg_path.with_extension("png");
            if rsvg
                && Command::new("rsvg-convert")
                    .arg("-o")
                    .arg(&png)
                    .arg(&svg_path)
                    .status()
                    .is_ok_and(|s| s.success())
            {
                md.push_str(&format!(
                    "\n![claims Bound over time, N = {n}]({})\n",
                    png.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    std::fs::write(env.out.join(format!("{tag}.md")), &md)?;
    println!("{md}");
    Ok(())
}

fn targets(results: &[RunResult], fps: &[RunResult]) -> Value {
    let get = |s: Subject, n: usize| results.iter().find(|r| r.n == n && r.subject == Some(s));
    let mut out = vec![];
    let big = results.iter().map(|r| r.n).max().unwrap_or(0);
    if let (Some(o), Some(i), Some(l)) = (
        get(Subject::Ours, big),
        get(Subject::Incumbent, big),
        get(Subject::Limit, big),
    ) {
        let (ro, ri, rl) = (o.provision.per_s, i.provision.per_s, l.provision.per_s);
        out.push(json!({
            "target": format!("burst throughput at N={big} >= 10x incumbent"),
            "measured": format!("{ro:.2}/s vs {ri:.2}/s = {:.2}x", ro / ri),
            "met": ro >= 10.0 * ri,
        }));
        out.push(json!({
            "target": format!("burst throughput at N={big} >= half the limit"),
            "measured": format!("{ro:.2}/s vs {rl:.2}/s = {:.2}x", ro / rl),
            "met": ro >= 0.5 * rl,
        }));
    }
    if let Some(o) = get(Subject::Ours, 100) {
        let p99 = o.provision.p(99.0);
        out.push(json!({
            "target": "p99 claim-to-Bound < 2 s at N=100",
            "measured": format!("{p99:.2} s"),
            "met": p99 < 2.0,
        }));
    }
    let rss5000 = |s: Subject| {
        fps.iter()
            .chain(results.iter())
            .find(|r| r.n == 5000 && r.subject == Some(s))
            .and_then(|r| r.idle_fp.as_ref().map(|f| f.rss_end_mb))
    };
    out.push(match (rss5000(Subject::Ours), rss5000(Subject::Incumbent)) {
        (Some(a), Some(b)) => json!({
            "target": "RSS at 5000 PVs < half the incumbent's",
            "measured": format!("{a:.1} MiB vs {b:.1} MiB = {:.2}x", a / b),
            "met": a < b / 2.0,
        }),
        _ => json!({"target": "RSS at 5000 PVs < half the incumbent's", "measured": "not run with 5000 PVs", "met": null}),
    });
    let restart: Vec<String> = results
        .iter()
        .filter(|r| r.subject == Some(Subject::Ours))
        .filter_map(|r| r.restart_req.map(|q| format!("{} at N={}", q.writes, r.n)))
        .collect();
    if !restart.is_empty() {
        let zero = results
            .iter()
            .filter(|r| r.subject == Some(Subject::Ours))
            .filter_map(|r| r.restart_req)
            .all(|q| q.writes == 0.0);
        out.push(json!({"target": "zero API writes on restart (ours)", "measured": restart.join(", "), "met": zero}));
    }
    Value::Array(out)
}

// ---------------------------------------------------------------- main

fn main() -> std::process::ExitCode {
    // `cargo test --all-targets` runs bench targets too, without --bench: a
    // benchmark of several minutes is not a test, so it does nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "provision bench: skipped (run it with `make bench` or `cargo bench --bench provision`)"
        );
        return std::process::ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(real_main()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log(format!("error: {e}"));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Res<()> {
    // `cargo bench` passes --bench; nothing else is expected.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ns: Vec<usize> = env_or("BENCH_N", "100,1000")
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("BENCH_N: {e}"))?;
    let subjects: Vec<Subject> = env_or("BENCH_SUBJECTS", "ours,incumbent,limit")
        .split(',')
        .map(|s| match s.trim() {
            "ours" => Ok(Subject::Ours),
            "incumbent" => Ok(Subject::Incumbent),
            "limit" => Ok(Subject::Limit),
            other => Err(format!("BENCH_SUBJECTS: unknown {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    let global = Duration::from_secs(env_or("BENCH_TIMEOUT", "7200").parse()?);
    let files: usize = env_or("BENCH_FILES", "100").parse()?;
    let phase_timeout = std::env::var("BENCH_PHASE_TIMEOUT")
        .ok()
        .map(|s| s.parse().map(Duration::from_secs))
        .transpose()?;
    let kcm_target: Option<u32> = std::env::var("BENCH_KCM_QPS")
        .ok()
        .map(|s| s.parse())
        .transpose()?;
    let tag = env_or("BENCH_TAG", "latest");
    let footprint_n: Option<usize> = std::env::var("BENCH_FOOTPRINT_N")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|s| s.parse())
        .transpose()?;
    let out = repo.join(env_or("BENCH_OUT", "bench/results"));

    log("starting the environment (tests/e2e/cluster.sh up)");
    let mut host = HostState::default();
    script(&repo, "cluster.sh", &["up"], &[])?;
    let vars: HashMap<String, String> = parse_env(&script(&repo, "cluster.sh", &["env"], &[])?)
        .into_iter()
        .collect();
    let var = |k: &str| {
        vars.get(k)
            .cloned()
            .ok_or_else(|| format!("{k} missing from cluster.sh env"))
    };
    let env = Env {
        repo: repo.clone(),
        e2e_dir: var("E2E_DIR")?.into(),
        admin_kubeconfig: var("KUBECONFIG")?.into(),
        kubectl: PathBuf::from(var("K8S_BIN")?).join("kubectl"),
        nfs_server: var("NFS_SERVER")?,
        export1: var("NFS_EXPORT1")?.into(),
        out,
    };
    if let Some(q) = kcm_target {
        log(format!(
            "restarting kube-controller-manager with --kube-api-qps={q}"
        ));
        restart_kcm(&env, Some(q))?;
        host.kcm_changed = true;
    }
    let client = admin_client(&env).await?;
    let sampler = Arc::new(Sampler::default());
    {
        let s = sampler.clone();
        tokio::spawn(async move {
            loop {
                s.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    let results: Arc<Mutex<Vec<RunResult>>> = Arc::default();
    let (qps, burst) = kcm_qps(&env);
    let incumbent_kind = if std::env::var("INCUMBENT_BIN").is_ok() {
        format!(
            "binary from INCUMBENT_BIN ({})",
            env_or("INCUMBENT_BIN", "")
        )
    } else {
        "model of nfs-subdir-external-provisioner v4.0.2 built by tests/e2e/incumbent.sh (the real module is refused by the Go proxy here)".to_string()
    };
    let meta = json!({
        "started_utc": humantime_utc(SystemTime::now()),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "kcm_api_qps": qps,
        "kcm_api_burst": burst,
        "incumbent": incumbent_kind,
        "files_per_dir": files,
        "n": ns,
        "claim_create_concurrency": CREATE_CONCURRENCY,
    });

    let work = {
        let results = results.clone();
        let env = &env;
        let client = client.clone();
        let sampler = sampler.clone();
        let host = &mut host;
        async move {
            let bench =
                prepare(env, client, sampler, &subjects, files, phase_timeout, host).await?;
            for &n in &ns {
                for &s in &subjects {
                    if (s == Subject::Incumbent && bench.incumbent.is_none())
                        || (s == Subject::Ours && bench.ours.is_none())
                    {
                        continue;
                    }
                    log(format!("=== {} N={n}", s.name()));
                    let mut r = RunResult::default();
                    if let Err(e) = bench.run(s, n, &mut r).await {
                        log(format!("{} N={n} failed: {e}", s.name()));
                        r.error = Some(e.to_string());
                    }
                    results.lock().unwrap().push(r);
                }
            }
            if let Some(n) = footprint_n {
                let fp = bench.footprint(n, &subjects).await;
                results.lock().unwrap().extend(fp);
            }
            Ok::<_, BoxError>(())
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(global, work) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("global timeout of {global:?} reached").into()),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    if let Err(e) = &outcome {
        log(format!("stopping early: {e}"));
    }
    log("cleaning up");
    cleanup_cluster(&env, &client).await;
    cleanup_host(&host);
    if host.kcm_changed {
        log("restoring kube-controller-manager's default --kube-api-qps");
        if let Err(e) = restart_kcm(&env, None) {
            log(format!("could not restore kube-controller-manager: {e}"));
        }
    }
    let results = results.lock().unwrap().clone();
    write_outputs(&env, &tag, &results, &meta)?;
    log(format!("results in {}", env.out.display()));
    outcome
}

async fn prepare(
    env: &Env,
    client: Client,
    sampler: Arc<Sampler>,
    subjects: &[Subject],
    files: usize,
    phase_timeout: Option<Duration>,
    host: &mut HostState,
) -> Res<Bench> {
    // deploy/base's RBAC (sa-kubeconfig.sh applies it), then the bench's accounts.
    script(&env.repo, "sa-kubeconfig.sh", &[], &[])?;
    env.apply(&rbac_yaml())?;
    env.apply(&flow_schemas_yaml(Subject::Ours, OURS_SA, OURS_NS))?;
    env.apply(&flow_schemas_yaml(
        Subject::Incumbent,
        INCUMBENT_SA,
        BENCH_NS,
    ))?;
    let logs = env.e2e_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let export1 = env.export1.to_string_lossy().into_owned();

    let mut ours = None;
    if subjects.contains(&Subject::Ours) {
        // Built by cargo for this bench with the bench profile (= release) in whatever
        // target dir is in use.
        let bin = std::env::var("BENCH_OURS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_nfs3-provisioner")));
        let token = env.kubectl(&["create", "token", OURS_SA, "-n", OURS_NS, "--duration=24h"])?;
        let kc = env.e2e_dir.join("bench-ours.kubeconfig");
        env.token_kubeconfig(&kc, token.trim(), OURS_NS)?;
        let port = free_port();
        ours = Some(Launch {
            subject: Subject::Ours,
            bin,
            envs: vec![
                ("KUBECONFIG".into(), kc.to_string_lossy().into_owned()),
                ("PROVISIONER_NAME".into(), OURS_NAME.into()),
                ("POD_NAMESPACE".into(), OURS_NS.into()),
                ("HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
                ("NFS_SERVER".into(), env.nfs_server.clone()),
                ("NFS_PATH".into(), export1.clone()),
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            http_port: port,
            log: logs.join("bench-ours"),
        });
    }
    let mut incumbent = None;
    if subjects.contains(&Subject::Incumbent) {
        let bin = match std::env::var("INCUMBENT_BIN") {
            Ok(b) => PathBuf::from(b),
            Err(_) => PathBuf::from(
                script(&env.repo, "incumbent.sh", &[], &[])?
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim(),
            ),
        };
        let token = env.kubectl(&[
            "create",
            "token",
            INCUMBENT_SA,
            "-n",
            BENCH_NS,
            "--duration=24h",
        ])?;
        match setup_in_cluster_files(env, token.trim(), host) {
            Ok(()) => {
                incumbent = Some(Launch {
                    subject: Subject::Incumbent,
                    bin,
                    envs: vec![
                        // rest.InClusterConfig(): https://127.0.0.1:16443, which the API
                        // server's certificate names (IP SAN 127.0.0.1).
                        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
                        ("KUBERNETES_SERVICE_PORT".into(), "16443".into()),
                        ("PROVISIONER_NAME".into(), INCUMBENT_NAME.into()),
                        ("NFS_SERVER".into(), env.nfs_server.clone()),
                        ("NFS_PATH".into(), export1.clone()),
                        ("POD_NAMESPACE".into(), BENCH_NS.into()),
                    ],
                    http_port: 0,
                    log: logs.join("bench-incumbent"),
                });
            }
            Err(e) => log(format!("incumbent skipped: {e}")),
        }
    }
    Ok(Bench {
        env: Env {
            repo: env.repo.clone(),
            e2e_dir: env.e2e_dir.clone(),
            admin_kubeconfig: env.admin_kubeconfig.clone(),
            kubectl: env.kubectl.clone(),
            nfs_server: env.nfs_server.clone(),
            export1: env.export1.clone(),
            out: env.out.clone(),
        },
        client,
        sampler,
        ours,
        incumbent,
        files,
        phase_timeout,
    })
}

/// RFC 3339 UTC without a date crate.
fn humantime_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

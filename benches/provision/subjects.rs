//! The subjects benched and their processes: how each provisioner is configured and
//! started, when it counts as ready, and killing it (a `Proc` is SIGKILLed when dropped).

use crate::cluster::{HostState, rbac_yaml, setup_host_paths};
use crate::common::cluster::{free_port, http_get};
use crate::env::{Env, script};
use crate::phases::Bench;
use crate::prelude::*;
use crate::requests::flow_schemas_yaml;
use crate::sampling::Sampler;
use kube::Client;
use std::process::Child;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Subject {
    Ours,
    Incumbent,
    /// The API server's own limit: N PVs created, nothing bound, no provisioner.
    Ceiling,
    /// N claims with pre-bound PVs made by the bench: the binder's path, no provisioner.
    Limit,
}

impl Subject {
    pub(crate) const ALL: [Subject; 4] = [
        Subject::Ours,
        Subject::Incumbent,
        Subject::Ceiling,
        Subject::Limit,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Subject::Ours => "ours",
            Subject::Incumbent => "incumbent",
            Subject::Ceiling => "ceiling",
            Subject::Limit => "limit",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Subject> {
        Subject::ALL.into_iter().find(|x| x.name() == s)
    }
    pub(crate) fn provisioner(self) -> &'static str {
        match self {
            Subject::Ours => OURS_NAME,
            Subject::Incumbent => INCUMBENT_NAME,
            Subject::Ceiling | Subject::Limit => "kubernetes.io/no-provisioner",
        }
    }
    /// A provisioner process of its own (the others are the bench's API calls).
    pub(crate) fn is_process(self) -> bool {
        matches!(self, Subject::Ours | Subject::Incumbent)
    }
    pub(crate) fn flow_prefix(self) -> String {
        format!("nfs3p-bench-{}", self.name())
    }
}

pub(crate) struct Launch {
    pub(crate) subject: Subject,
    pub(crate) bin: PathBuf,
    pub(crate) envs: Vec<(String, String)>,
    pub(crate) http_port: u16,
    pub(crate) log: PathBuf,
}

/// A provisioner process; SIGKILLed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Launch {
    pub(crate) fn spawn(&self, label: &str) -> Res<Proc> {
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

    pub(crate) fn ready(&self, proc: &mut Proc) -> bool {
        match self.subject {
            Subject::Ours => http_get(self.http_port, "/readyz", Duration::from_secs(2))
                .is_some_and(|(c, _)| c == 200),
            _ => std::fs::read_to_string(&proc.log)
                .is_ok_and(|t| t.contains("Started provisioner controller")),
        }
    }

    /// Starts the process and waits until it is ready: (process, seconds to ready).
    pub(crate) async fn start_ready(&self, label: &str, limit: Duration) -> Res<(Proc, f64)> {
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

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) async fn prepare(
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
        let bin = match std::env::var("INCUMBENT_BIN")
            .ok()
            .filter(|b| !b.is_empty())
        {
            Some(b) => PathBuf::from(b),
            None => PathBuf::from(
                incumbent_meta(env)?
                    .get("path")
                    .cloned()
                    .unwrap_or_default(),
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
        // The incumbent reads KUBECONFIG (one path) when it is set; with the bench's
        // ServiceAccount token it has exactly the rights of its deploy/rbac.yaml.
        let kc = env.e2e_dir.join("bench-incumbent.kubeconfig");
        env.token_kubeconfig(&kc, token.trim(), BENCH_NS)?;
        match setup_host_paths(env, host) {
            Ok(()) => {
                incumbent = Some(Launch {
                    subject: Subject::Incumbent,
                    bin,
                    envs: vec![
                        ("KUBECONFIG".into(), kc.to_string_lossy().into_owned()),
                        ("PROVISIONER_NAME".into(), INCUMBENT_NAME.into()),
                        ("NFS_SERVER".into(), env.nfs_server.clone()),
                        ("NFS_PATH".into(), export1.clone()),
                        // Its Endpoints leader lock lives here.
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
        incumbent_cap: Duration::from_secs(480),
    })
}

/// `bench/incumbent.sh meta`: builds the incumbent if its cache has none, and says what it
/// is (tag, commit, library, Go version, path).
pub(crate) fn incumbent_meta(env: &Env) -> Res<HashMap<String, String>> {
    let out = Command::new(env.repo.join("bench/incumbent.sh"))
        .arg("meta")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bench/incumbent.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("bench/incumbent.sh meta failed: {}", out.status).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

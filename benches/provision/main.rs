//! Provisioning benchmark: us against the incumbent (the real nfs-subdir-external-provisioner
//! v4.0.2, built by bench/incumbent.sh) and against the limits of the control plane itself,
//! on the real local environment of the e2e tests (tests/e2e/cluster.sh, nfs.sh).
//!
//! `cargo bench --bench provision` (or `make bench`); what each phase does and every knob
//! are in benches/README.md. This file owns the entry point: the knobs, the order of the
//! runs, the global timeout and the clean-up. The modules:
//! - `env`: the local environment (cluster.sh env, kubectl, kube-controller-manager's QPS)
//! - `cluster`: RBAC, host paths and clean-up around the subjects
//! - `subjects`: the subjects, their processes and how they are started
//! - `objects`, `watch`: the API objects made and the watches that time them
//! - `sampling`, `requests`: process footprint, API requests per ServiceAccount
//! - `phases`, `big`: the phases of a run; big volumes
//! - `stats`, `results`, `report`, `plot`: figures, JSON, Markdown and plots

// The e2e tests' helpers: `export` lines of the scripts, free ports, plain HTTP GETs.
#[path = "../../tests/common/mod.rs"]
mod common;

mod big;
mod cluster;
mod env;
mod footprint;
mod objects;
mod phases;
mod plot;
mod report;
mod requests;
mod results;
mod sampling;
mod stats;
mod subjects;
mod watch;

/// What (nearly) every module uses.
mod prelude {
    pub(crate) use std::collections::{HashMap, HashSet};
    pub(crate) use std::path::{Path, PathBuf};
    pub(crate) use std::process::{Command, Stdio};
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    pub(crate) use std::sync::{Arc, Mutex};
    pub(crate) use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    pub(crate) use serde_json::{Value, json};

    pub(crate) use crate::{
        BENCH_NS, BoxError, CREATE_CONCURRENCY, IDLE_WINDOW, INCUMBENT_NAME, INCUMBENT_SA,
        MOUNT_ROOT, OURS_NAME, OURS_NS, OURS_SA, RESTART_WINDOW, Res, log,
    };
}

use prelude::*;

use crate::common::parse_env;
use big::{BigResult, Tree};
use cluster::{HostState, cleanup_cluster, cleanup_host};
use env::{Env, admin_client, kcm_qps, restart_kcm, script};
use phases::loadavg;
use report::write_outputs;
use results::RunResult;
use sampling::Sampler;
use subjects::{Subject, incumbent_meta, prepare};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Res<T> = Result<T, BoxError>;

pub(crate) const OURS_NAME: &str = "bench.nfs3-provisioner.io/ours";
pub(crate) const INCUMBENT_NAME: &str = "bench.nfs3-provisioner.io/incumbent";
pub(crate) const BENCH_NS: &str = "nfs3p-bench"; // the incumbent's ServiceAccount and Lease
pub(crate) const OURS_NS: &str = "nfs3-provisioner"; // deploy/base's namespace, as in a real install
pub(crate) const OURS_SA: &str = "nfs3p-bench-ours";
pub(crate) const INCUMBENT_SA: &str = "nfs3p-bench-incumbent";
pub(crate) const MOUNT_ROOT: &str = "/persistentvolumes";
pub(crate) const CREATE_CONCURRENCY: usize = 32;
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(10);
pub(crate) const IDLE_WINDOW: Duration = Duration::from_secs(10);

pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub(crate) fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

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

pub(crate) async fn real_main() -> Res<()> {
    // `cargo bench` passes --bench; nothing else is expected.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ns: Vec<usize> = list_knob("BENCH_N", "100,1000")
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("BENCH_N: {e}"))?;
    let subjects: Vec<Subject> = list_knob("BENCH_SUBJECTS", "ours,incumbent,ceiling")
        .iter()
        .map(|s| Subject::parse(s).ok_or_else(|| format!("BENCH_SUBJECTS: unknown {s:?}")))
        .collect::<Result<_, _>>()?;
    let trees: Vec<Tree> = list_knob("BENCH_BIG", "")
        .iter()
        .map(|s| match s.as_str() {
            "wide" => Ok(Tree::Wide {
                dirs: 1000,
                files: 100,
            }),
            "deep" => Ok(Tree::Deep { depth: 2000 }),
            other => Err(format!("BENCH_BIG: unknown {other:?} (wide, deep)")),
        })
        .collect::<Result<_, _>>()?;
    let incumbent_max_n: Option<usize> = std::env::var("BENCH_INCUMBENT_MAX_N")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|s| s.parse())
        .transpose()?;
    let incumbent_cap = Duration::from_secs(env_or("BENCH_INCUMBENT_CAP", "480").parse()?);
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
    let big: Arc<Mutex<Vec<BigResult>>> = Arc::default();
    let (qps, burst) = kcm_qps(&env);
    let incumbent = match std::env::var("INCUMBENT_BIN")
        .ok()
        .filter(|b| !b.is_empty())
    {
        Some(bin) => json!({"binary": bin, "from": "INCUMBENT_BIN", "go": go_version_of(&bin)}),
        None if subjects.contains(&Subject::Incumbent) => {
            let m = incumbent_meta(&env)?;
            json!({
                "name": "nfs-subdir-external-provisioner",
                "tag": m.get("tag"),
                "commit": m.get("commit"),
                "library": m.get("lib"),
                "go": m.get("go"),
                "binary": m.get("path"),
                "from": "bench/incumbent.sh (source in ../shared/incumbent)",
            })
        }
        None => Value::Null,
    };
    let mut meta = json!({
        "started_utc": humantime_utc(SystemTime::now()),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": loadavg(),
        "other_load_start": other_load(),
        "ours_commit": our_commit(&repo),
        "kcm_api_qps": qps,
        "kcm_api_burst": burst,
        "incumbent": incumbent,
        "incumbent_cap_s": incumbent_cap.as_secs(),
        "incumbent_max_n": incumbent_max_n,
        "files_per_dir": files,
        "n": ns,
        "subjects": subjects.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "footprint_n": footprint_n,
        "big_volumes": trees.iter().map(|t| t.label()).collect::<Vec<_>>(),
        "claim_create_concurrency": CREATE_CONCURRENCY,
        "note": std::env::var("BENCH_NOTE").ok(),
    });

    let work = {
        let results = results.clone();
        let env = &env;
        let client = client.clone();
        let sampler = sampler.clone();
        let big = big.clone();
        let host = &mut host;
        async move {
            let mut bench =
                prepare(env, client, sampler, &subjects, files, phase_timeout, host).await?;
            bench.incumbent_cap = incumbent_cap;
            for &n in &ns {
                for &s in &subjects {
                    if (s.is_process() && bench.launch(s).is_none())
                        || (s == Subject::Incumbent && incumbent_max_n.is_some_and(|m| n > m))
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
            if !trees.is_empty() {
                let b = bench.big_volumes(&trees, &subjects).await;
                big.lock().unwrap().extend(b);
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
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    if set("BENCH_FOOTPRINT_REUSE") || set("BENCH_KEEP") {
        log("cluster objects left for BENCH_FOOTPRINT_REUSE and cluster.sh down --purge");
    } else {
        cleanup_cluster(&env, &client).await;
    }
    cleanup_host(&host);
    if host.kcm_changed {
        log("restoring kube-controller-manager's default --kube-api-qps");
        if let Err(e) = restart_kcm(&env, None) {
            log(format!("could not restore kube-controller-manager: {e}"));
        }
    }
    let results = results.lock().unwrap().clone();
    let big = big.lock().unwrap().clone();
    meta["loadavg_end"] = json!(loadavg());
    // The header says which optional phases ran, not which were asked for.
    if !results.iter().any(|r| r.footprint_only) {
        meta["footprint_n"] = Value::Null;
    }
    if big.is_empty() {
        meta["big_volumes"] = json!([]);
    }
    write_outputs(&env, &tag, &results, &big, &meta)?;
    log(format!("results in {}", env.out.display()));
    outcome
}

/// A comma-separated knob: unset gives `default`, set but empty gives nothing (so
/// `BENCH_N= BENCH_FOOTPRINT_N=20000` runs the footprint phase alone).
fn list_knob(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Our commit, with `-dirty` when the tree has changes.
fn our_commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

/// `go version BIN`: the Go release a binary was built with.
fn go_version_of(bin: &str) -> Option<String> {
    let out = Command::new("go").arg("version").arg(bin).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last().map(str::to_string)
}

/// Other work on the machine at this moment: compilers and linkers running (the machine
/// is shared with builds; both subjects of one run see the same load).
fn other_load() -> Value {
    let mut counts: HashMap<String, usize> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
                continue;
            };
            let comm = comm.trim();
            if [
                "rustc", "cc1", "cc1plus", "ld", "go", "compile", "cargo", "link",
            ]
            .contains(&comm)
            {
                *counts.entry(comm.to_string()).or_default() += 1;
            }
        }
    }
    json!({"loadavg": loadavg(), "build_processes": counts})
}

/// RFC 3339 UTC without a date crate.
pub(crate) fn humantime_utc(t: SystemTime) -> String {
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

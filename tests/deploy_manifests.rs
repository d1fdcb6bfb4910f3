//! Everything the repository ships for a cluster, checked by the API server itself:
//! `kubectl apply --dry-run=server` of the kustomize base and each overlay, the Helm chart
//! rendered with its default values and with each `ci/*.yaml` values file, and the
//! StorageClass examples. The server runs defaulting, validation, immutability rules and
//! admission on every object without storing any of them.
//!
//! Needs the local control plane of `tests/e2e/cluster.sh` (started here if it is not
//! running) and Helm, built with `go install` at the version `deploy/check.sh` pins and
//! cached under `~/.cache/nfs3-provisioner/helm-<version>/bin`.
//!
//! Kinds the bare control plane does not serve (the chart's optional ServiceMonitor) are
//! left out of the dry run and named in the test output.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

mod common;
use common::parse_env;

/// A kubectl call against a local API server.
const KUBECTL_LIMIT: Duration = Duration::from_secs(120);
/// `cluster.sh up`: a cold build of the control plane from source takes minutes.
const CLUSTER_UP_LIMIT: Duration = Duration::from_secs(45 * 60);
/// `go install` of Helm, cold module and build caches.
const HELM_BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The namespace of deploy/base and of the chart's release here.
const NAMESPACE: &str = "nfs3-provisioner";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------ processes

struct Output {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Output {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {:?} (time limit)", self.took),
        };
        format!(
            "{status}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.stderr.trim_end(),
            self.stdout.trim_end()
        )
    }
}

/// Runs `cmd` with `stdin` fed to it, collecting its output, and kills it if it is still
/// running after `limit`. With `show_progress` its stderr goes straight to ours instead
/// (for long steps whose progress should be visible), and is not collected.
fn run(cmd: &mut Command, stdin: Option<&str>, limit: Duration, show_progress: bool) -> Output {
    let started = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(if show_progress {
        Stdio::inherit()
    } else {
        Stdio::piped()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Readers and the writer in threads: a child blocked on a full pipe would otherwise
    // never exit, and the time limit could not be told from a deadlock.
    let writer = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let text = text.to_string();
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < limit => thread::sleep(Duration::from_millis(50)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took: started.elapsed(),
    }
}

// ------------------------------------------------------------------ the cluster

struct Cluster {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    /// `group/version`s the API server serves.
    api_versions: BTreeSet<String>,
}

fn script(name: &str, args: &[&str], limit: Duration, show_progress: bool) -> String {
    let path = repo().join("tests/e2e").join(name);
    let out = run(Command::new(&path).args(args), None, limit, show_progress);
    assert!(
        out.ok(),
        "tests/e2e/{name} {} failed: {}",
        args.join(" "),
        out.describe()
    );
    out.stdout
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        // Idempotent: a no-op when the control plane is already up and healthy.
        script("cluster.sh", &["up"], CLUSTER_UP_LIMIT, true);
        let env = parse_env(&script("cluster.sh", &["env"], KUBECTL_LIMIT, false));
        let get = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| PathBuf::from(v))
                .unwrap_or_else(|| panic!("{key} missing from `tests/e2e/cluster.sh env`"))
        };
        let mut c = Cluster {
            kubectl: get("K8S_BIN").join("kubectl"),
            kubeconfig: get("KUBECONFIG"),
            api_versions: BTreeSet::new(),
        };
        let versions = c.kubectl(&["api-versions"], None);
        assert!(
            versions.ok(),
            "kubectl api-versions: {}",
            versions.describe()
        );
        c.api_versions = versions.stdout.lines().map(str::to_string).collect();
        // Namespaced objects cannot be dry-run into a namespace that does not exist, and
        // a dry run of the Namespace object does not create it. This is the namespace
        // tests/e2e/sa-kubeconfig.sh creates too, from the same file.
        let ns = c.kubectl(
            &[
                "apply",
                "-f",
                repo()
                    .join("deploy/base/namespace.yaml")
                    .to_str()
                    .expect("UTF-8 path"),
            ],
            None,
        );
        assert!(ns.ok(), "creating namespace {NAMESPACE}: {}", ns.describe());
        c
    })
}

impl Cluster {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run(
            Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .current_dir(repo()),
            stdin,
            KUBECTL_LIMIT,
            false,
        )
    }

    /// `kubectl apply --dry-run=server ARGS`; fails the test with kubectl's own error
    /// unless every one of the `expected` objects is accepted.
    fn dry_run(&self, what: &str, args: &[&str], stdin: Option<&str>, expected: usize) {
        let mut full = vec!["apply", "--dry-run=server"];
        full.extend_from_slice(args);
        let out = self.kubectl(&full, stdin);
        assert!(
            out.ok(),
            "{what}: kubectl {} was refused: {}",
            full.join(" "),
            out.describe()
        );
        let accepted = out
            .stdout
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted, expected,
            "{what}: the API server accepted {accepted} objects, the manifests have {expected}:\n{}",
            out.stdout
        );
        println!("ok: {what}: {accepted} objects accepted by the API server");
    }
}

// ------------------------------------------------------------------ manifests

/// The non-empty YAML documents of a multi-document stream.
fn documents(yaml: &str, what: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            serde_yaml::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Keeps the objects whose API the cluster serves; says which were left out.
fn served_only(c: &Cluster, docs: Vec<serde_yaml::Value>, what: &str) -> Vec<serde_yaml::Value> {
    docs.into_iter()
        .filter(|d| {
            let api = d["apiVersion"].as_str().unwrap_or_default();
            let served = c.api_versions.contains(api);
            if !served {
                println!(
                    "note: {what}: {} {} left out: {api} is not served by this control plane",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?"),
                );
            }
            served
        })
        .collect()
}

fn to_stream(docs: &[serde_yaml::Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("a parsed document serialises"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The Helm version deploy/check.sh pins: one place to change it.
fn pinned_helm_version() -> String {
    let check = std::fs::read_to_string(repo().join("deploy/check.sh"))
        .expect("deploy/check.sh is readable");
    check
        .lines()
        .find_map(|l| l.trim().strip_prefix("HELM_VERSION=${HELM_VERSION:-"))
        .and_then(|rest| rest.strip_suffix('}'))
        .map(str::to_string)
        .expect("deploy/check.sh sets HELM_VERSION=${HELM_VERSION:-vX.Y.Z}")
}

fn go() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("go"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let fallback = PathBuf::from("/usr/local/go/bin/go");
        fallback.is_file().then_some(fallback)
    })
}

/// Helm at the pinned version, built once with `go install` (deploy/check.sh's way)
/// into a cache outside the work tree.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let version = pinned_helm_version();
        let cache = std::env::var_os("NFS3P_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/nfs3-provisioner")
            });
        let bin = cache.join(format!("helm-{version}/bin"));
        let helm = bin.join("helm");
        if helm.is_file() {
            return helm;
        }
        let go = go().unwrap_or_else(|| {
            panic!("no Go toolchain (go on PATH or /usr/local/go/bin/go) to build helm {version}")
        });
        eprintln!(
            "deploy_manifests: building helm {version} into {}",
            bin.display()
        );
        let out = run(
            Command::new(go)
                .args(["install", &format!("helm.sh/helm/v3/cmd/helm@{version}")])
                .env("GOBIN", &bin)
                .env("CGO_ENABLED", "0")
                .env("GOFLAGS", ""),
            None,
            HELM_BUILD_LIMIT,
            true,
        );
        assert!(
            out.ok() && helm.is_file(),
            "go install helm {version}: {}",
            out.describe()
        );
        helm
    })
}

// ------------------------------------------------------------------ tests

/// `kubectl kustomize DIR` rendered and `kubectl apply -k DIR --dry-run=server`.
fn dry_run_kustomization(c: &Cluster, dir: &str) {
    let rendered = c.kubectl(&["kustomize", dir], None);
    assert!(
        rendered.ok(),
        "kubectl kustomize {dir}: {}",
        rendered.describe()
    );
    let count = documents(&rendered.stdout, dir).len();
    assert!(count > 0, "{dir} renders no objects");
    c.dry_run(dir, &["-k", dir], None, count);
}

#[test]
fn kustomize_base_is_accepted() {
    dry_run_kustomization(cluster(), "deploy/base");
}

#[test]
fn kustomize_overlays_are_accepted() {
    let c = cluster();
    let mut overlays: Vec<String> = std::fs::read_dir(repo().join("deploy/overlays"))
        .expect("deploy/overlays exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .map(|p| {
            format!(
                "deploy/overlays/{}",
                p.file_name().unwrap().to_string_lossy()
            )
        })
        .collect();
    overlays.sort();
    assert!(!overlays.is_empty(), "no overlays in deploy/overlays");
    for overlay in &overlays {
        dry_run_kustomization(c, overlay);
    }
}

#[test]
fn helm_chart_is_accepted_with_default_and_ci_values() {
    let c = cluster();
    let helm = helm();
    let chart = "deploy/helm/nfs3-provisioner";
    let mut values: Vec<Option<String>> = vec![None];
    let mut ci: Vec<String> = std::fs::read_dir(repo().join(chart).join("ci"))
        .map(|dir| {
            dir.map(|e| e.expect("readable directory entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .map(|p| format!("{chart}/ci/{}", p.file_name().unwrap().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    ci.sort();
    values.extend(ci.into_iter().map(Some));
    for v in &values {
        let what = format!(
            "helm template {chart} ({})",
            v.as_deref().unwrap_or("default values")
        );
        // A release name of its own: its objects are new names, so the dry run is never
        // an update of (and never trips on immutable fields of) objects already there.
        let mut args = vec!["template", "dry-run-check", chart, "--namespace", NAMESPACE];
        if let Some(v) = v {
            args.extend(["--values", v]);
        }
        let rendered = run(
            Command::new(helm).args(&args).current_dir(repo()),
            None,
            KUBECTL_LIMIT,
            false,
        );
        assert!(rendered.ok(), "{what}: {}", rendered.describe());
        let docs = served_only(c, documents(&rendered.stdout, &what), &what);
        assert!(!docs.is_empty(), "{what} renders no objects");
        c.dry_run(
            &what,
            &["--namespace", NAMESPACE, "-f", "-"],
            Some(&to_stream(&docs)),
            docs.len(),
        );
    }
}

#[test]
fn storageclass_examples_are_accepted() {
    let c = cluster();
    let mut count = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("storageclass-examples"))
        .expect("storageclass-examples exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable example");
        let docs = documents(&text, &f.display().to_string());
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"StorageClass"),
            "{}: no StorageClass",
            f.display()
        );
        count += docs.len();
    }
    assert!(!files.is_empty(), "no examples in storageclass-examples/");
    c.dry_run(
        "storageclass-examples/",
        &["-f", "storageclass-examples/"],
        None,
        count,
    );
}

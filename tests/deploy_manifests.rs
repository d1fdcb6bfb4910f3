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
//!
//! Beyond the dry runs: the RBAC of deploy/base and of the chart is exactly the table
//! below (and the API server's authorizer agrees for the base's ServiceAccount), the
//! chart's mounted-backend root PV cannot be bound by a tenant's claim (real objects,
//! the real binder, with a control PV that can), and the optional tenant NetworkPolicy
//! is accepted and leaves the provisioner's namespace alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

mod common;
use common::{parse_env, unique};

/// A kubectl call against a local API server.
const KUBECTL_LIMIT: Duration = Duration::from_secs(120);
/// `cluster.sh up`: a cold build of the control plane from source takes minutes.
const CLUSTER_UP_LIMIT: Duration = Duration::from_secs(45 * 60);
/// `go install` of Helm, cold module and build caches.
const HELM_BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The namespace of deploy/base and of the chart's release here.
const NAMESPACE: &str = "nfs3-provisioner";
/// Tenant namespaces: the chart's ci/networkpolicy-values.yaml names these two.
const TENANTS: [&str; 2] = ["nfs3p-tenant-a", "nfs3p-tenant-b"];
/// The binder acts on a new claim within seconds; this is for a loaded 2-core machine.
const BINDER_LIMIT: Duration = Duration::from_secs(90);
const CHART: &str = "deploy/helm/nfs3-provisioner";

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

    /// Runs kubectl and fails the test with its own error unless it succeeds.
    fn must(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(out.ok(), "kubectl {}: {}", args.join(" "), out.describe());
        out.stdout
    }

    /// Creates the namespace unless it is there (kept afterwards, like NAMESPACE).
    fn ensure_namespace(&self, name: &str) {
        let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
        self.must(&["apply", "-f", "-"], Some(&ns));
    }

    /// `.status.phase` of an object, empty when it has none or is missing.
    fn phase(&self, kind: &str, name: &str, ns: Option<&str>) -> String {
        let mut args = vec!["get", kind, name, "-o", "jsonpath={.status.phase}"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl(&args, None);
        if out.ok() {
            out.stdout.trim().to_string()
        } else {
            String::new()
        }
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

/// `helm template RELEASE CHART --namespace NAMESPACE ARGS...`, as the test runs it.
fn helm_template(release: &str, args: &[&str]) -> Output {
    let mut full = vec!["template", release, CHART, "--namespace", NAMESPACE];
    full.extend_from_slice(args);
    run(
        Command::new(helm()).args(&full).current_dir(repo()),
        None,
        KUBECTL_LIMIT,
        false,
    )
}

/// The chart's objects, or the test fails with Helm's own error.
fn helm_objects(release: &str, args: &[&str]) -> Vec<serde_yaml::Value> {
    let out = helm_template(release, args);
    let what = format!("helm template {release} {CHART} {}", args.join(" "));
    assert!(out.ok(), "{what}: {}", out.describe());
    documents(&out.stdout, &what)
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

/// Waits until `check` holds, polling; fails the test with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(250));
    }
}

// ------------------------------------------------------------------ tests

/// `kubectl kustomize DIR` rendered and `kubectl apply -k DIR --dry-run=server`.
fn dry_run_kustomization(c: &Cluster, dir: &str) {
    let docs = kustomize_objects(c, dir);
    assert!(!docs.is_empty(), "{dir} renders no objects");
    // A dry run of a Namespace object does not create it, and namespaced objects
    // cannot be dry-run into a namespace that does not exist.
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    for ns in namespaces {
        c.ensure_namespace(ns);
    }
    c.dry_run(dir, &["-k", dir], None, docs.len());
}

/// deploy/base and each overlay, rendered by kustomize.
fn kustomizations() -> Vec<String> {
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
    let mut all = vec!["deploy/base".to_string()];
    all.extend(overlays);
    all
}

/// `kubectl kustomize DIR`.
fn kustomize_objects(c: &Cluster, dir: &str) -> Vec<serde_yaml::Value> {
    documents(&c.must(&["kustomize", dir], None), dir)
}

#[test]
fn kustomize_base_is_accepted() {
    dry_run_kustomization(cluster(), "deploy/base");
}

#[test]
fn kustomize_overlays_are_accepted() {
    let c = cluster();
    for overlay in kustomizations().iter().skip(1) {
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
        // kubectl refuses an object whose namespace differs from --namespace: one dry
        // run per namespace (the optional NetworkPolicies go to tenant namespaces).
        let mut by_namespace: BTreeMap<String, Vec<serde_yaml::Value>> = BTreeMap::new();
        for d in docs {
            let ns = d["metadata"]["namespace"]
                .as_str()
                .unwrap_or(NAMESPACE)
                .to_string();
            by_namespace.entry(ns).or_default().push(d);
        }
        for (ns, docs) in &by_namespace {
            if ns != NAMESPACE {
                c.ensure_namespace(ns);
            }
            c.dry_run(
                &format!("{what}, namespace {ns}"),
                &["--namespace", ns, "-f", "-"],
                Some(&to_stream(docs)),
                docs.len(),
            );
        }
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

/// The chart's classes allow expansion unless told not to, since the provisioner does
/// expand; `false` is kept (Helm's `default` would turn it into the default).
#[test]
fn chart_classes_allow_expansion_unless_set_false() {
    let expansion = |args: &[&str]| -> Vec<(String, Option<bool>)> {
        let mut with_server = vec!["--set", "nfs.server=192.0.2.10"];
        with_server.extend_from_slice(args);
        of_kind(&helm_objects("expansion", &with_server), "StorageClass")
            .into_iter()
            .map(|c| {
                (
                    c["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    c["allowVolumeExpansion"].as_bool(),
                )
            })
            .collect()
    };
    assert_eq!(expansion(&[]), [("nfs3-client".to_string(), Some(true))]);
    assert_eq!(
        expansion(&["--set", "storageClass.allowVolumeExpansion=false"]),
        [("nfs3-client".to_string(), Some(false))]
    );
    let extra = [
        "--set",
        "extraStorageClasses[0].name=a",
        "--set",
        "extraStorageClasses[1].name=b",
        "--set",
        "extraStorageClasses[1].allowVolumeExpansion=false",
    ];
    assert_eq!(
        expansion(&extra),
        [
            ("nfs3-client".to_string(), Some(true)),
            ("a".to_string(), Some(true)),
            ("b".to_string(), Some(false)),
        ]
    );
}

// ------------------------------------------------------------------ RBAC

/// (Role or ClusterRole, API group, resource, resourceNames) -> verbs.
type Rules = BTreeMap<(String, String, String, Vec<String>), BTreeSet<String>>;

/// One rule: Role or ClusterRole, API group, resource, resourceNames, verbs.
type Row<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [&'a str]);

/// What the provisioner calls, and nothing else: the table of deploy/README.md, "RBAC".
fn expected_rules(lease: &str) -> Rules {
    let rows: [Row; 7] = [
        (
            "ClusterRole",
            "",
            "persistentvolumeclaims",
            &[],
            &["get", "list", "watch"],
        ),
        (
            "ClusterRole",
            "",
            "persistentvolumeclaims/status",
            &[],
            &["patch"],
        ),
        (
            "ClusterRole",
            "",
            "persistentvolumes",
            &[],
            &["create", "delete", "list", "patch", "watch"],
        ),
        (
            "ClusterRole",
            "storage.k8s.io",
            "storageclasses",
            &[],
            &["list", "watch"],
        ),
        (
            "ClusterRole",
            "events.k8s.io",
            "events",
            &[],
            &["create", "patch"],
        ),
        (
            "Role",
            "coordination.k8s.io",
            "leases",
            &[lease],
            &["get", "update"],
        ),
        ("Role", "coordination.k8s.io", "leases", &[], &["create"]),
    ];
    rows.into_iter()
        .map(|(kind, group, resource, names, verbs)| {
            (
                (
                    kind.to_string(),
                    group.to_string(),
                    resource.to_string(),
                    names.iter().map(|n| n.to_string()).collect(),
                ),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of every Role and ClusterRole among `docs`, one entry per group and resource.
fn rules_of(docs: &[serde_yaml::Value]) -> Rules {
    let mut rules = Rules::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        for rule in d["rules"].as_sequence().into_iter().flatten() {
            let mut names = strings(&rule["resourceNames"]);
            names.sort();
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    rules
                        .entry((kind.into(), group.clone(), resource, names.clone()))
                        .or_default()
                        .extend(strings(&rule["verbs"]));
                }
            }
        }
    }
    rules
}

/// The value of env variable `name` of the first container of the Deployment in `docs`.
fn deployment_env(docs: &[serde_yaml::Value], name: &str) -> Option<String> {
    let deployment = of_kind(docs, "Deployment").into_iter().next()?;
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

fn base_docs() -> Vec<serde_yaml::Value> {
    ["clusterrole", "role", "deployment"]
        .iter()
        .flat_map(|f| {
            let path = repo().join(format!("deploy/base/{f}.yaml"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            documents(&text, &path.display().to_string())
        })
        .collect()
}

/// The rules as written, base, overlays and chart: exactly the calls the code makes,
/// and the Lease the Role names is the one the Deployment uses.
#[test]
fn rbac_is_exactly_what_the_code_calls() {
    let base = base_docs();
    let lease = deployment_env(&base, "LEASE_NAME").expect("deploy/base sets LEASE_NAME");
    assert_eq!(rules_of(&base), expected_rules(&lease), "deploy/base RBAC");
    let c = cluster();
    for dir in kustomizations() {
        let docs = kustomize_objects(c, &dir);
        let lease = deployment_env(&docs, "LEASE_NAME")
            .unwrap_or_else(|| panic!("{dir}: the Deployment sets LEASE_NAME"));
        assert_eq!(rules_of(&docs), expected_rules(&lease), "{dir} RBAC");
    }

    let release = "rbac-check";
    let chart = helm_objects(release, &[]);
    let lease = deployment_env(&chart, "LEASE_NAME").expect("the chart sets LEASE_NAME");
    assert_eq!(lease, format!("{release}-nfs3-provisioner"));
    assert_eq!(rules_of(&chart), expected_rules(&lease), "chart RBAC");

    let named = helm_objects(release, &["--set", "leaderElection.leaseName=other"]);
    assert_eq!(
        deployment_env(&named, "LEASE_NAME").as_deref(),
        Some("other")
    );
    assert_eq!(
        rules_of(&named),
        expected_rules("other"),
        "chart RBAC, leaseName set"
    );
}

/// The API server's own authorizer, asked as deploy/base's ServiceAccount: each right
/// of the table is granted, and the rights the code does not use are not.
#[test]
fn base_service_account_gets_only_those_rights() {
    let c = cluster();
    // What tests/e2e/sa-kubeconfig.sh applies: the RBAC part of the base.
    for f in [
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
        "role",
        "rolebinding",
    ] {
        c.must(&["apply", "-f", &format!("deploy/base/{f}.yaml")], None);
    }
    let sa = format!("system:serviceaccount:{NAMESPACE}:nfs3-provisioner");
    let lease = deployment_env(&base_docs(), "LEASE_NAME").expect("LEASE_NAME");
    let lease_res = format!("leases.coordination.k8s.io/{lease}");
    let lease_res = lease_res.as_str();
    // `resource:sub` asks for a subresource (`resource/x` would name an object).
    let can = |verb: &str, resource: &str, ns: &str| -> bool {
        let (resource, sub) = match resource.split_once(':') {
            Some((r, s)) => (r, Some(s)),
            None => (resource, None),
        };
        let mut args = vec!["auth", "can-i", verb, resource, "--as", sa.as_str()];
        if let Some(s) = sub {
            args.extend(["--subresource", s]);
        }
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        let out = c.kubectl(&args, None);
        let answer = out.stdout.trim().to_string();
        assert!(
            answer == "yes" || answer == "no",
            "kubectl auth can-i {verb} {resource}: {}",
            out.describe()
        );
        answer == "yes"
    };
    let tenant = TENANTS[0];
    c.ensure_namespace(tenant);
    let granted: &[(&str, &str, &str)] = &[
        ("get", "persistentvolumeclaims", tenant),
        ("list", "persistentvolumeclaims", tenant),
        ("watch", "persistentvolumeclaims", tenant),
        ("patch", "persistentvolumeclaims:status", tenant),
        ("list", "persistentvolumes", ""),
        ("watch", "persistentvolumes", ""),
        ("create", "persistentvolumes", ""),
        ("patch", "persistentvolumes", ""),
        ("delete", "persistentvolumes", ""),
        ("list", "storageclasses.storage.k8s.io", ""),
        ("watch", "storageclasses.storage.k8s.io", ""),
        ("create", "events.events.k8s.io", tenant),
        ("patch", "events.events.k8s.io", tenant),
        // Events about PVs (cluster-scoped) go to "default".
        ("create", "events.events.k8s.io", "default"),
        ("get", lease_res, NAMESPACE),
        ("update", lease_res, NAMESPACE),
        ("create", "leases.coordination.k8s.io", NAMESPACE),
    ];
    let refused: &[(&str, &str, &str)] = &[
        ("update", "persistentvolumeclaims", tenant),
        ("patch", "persistentvolumeclaims", tenant),
        ("update", "persistentvolumeclaims:status", tenant),
        ("patch", "persistentvolumes:status", ""),
        ("create", "persistentvolumeclaims", tenant),
        ("delete", "persistentvolumeclaims", tenant),
        ("get", "persistentvolumes", ""),
        ("update", "persistentvolumes", ""),
        ("deletecollection", "persistentvolumes", ""),
        ("get", "storageclasses.storage.k8s.io", ""),
        ("create", "storageclasses.storage.k8s.io", ""),
        ("create", "events", tenant),
        ("update", "events.events.k8s.io", tenant),
        ("delete", "events.events.k8s.io", tenant),
        ("patch", lease_res, NAMESPACE),
        ("delete", lease_res, NAMESPACE),
        (
            "get",
            "leases.coordination.k8s.io/kube-controller-manager",
            NAMESPACE,
        ),
        (
            "patch",
            "leases.coordination.k8s.io/someone-else",
            NAMESPACE,
        ),
        ("list", "leases.coordination.k8s.io", NAMESPACE),
        ("watch", "leases.coordination.k8s.io", NAMESPACE),
        ("get", lease_res, "kube-system"),
        ("create", "leases.coordination.k8s.io", "kube-system"),
        ("get", "secrets", NAMESPACE),
        ("list", "pods", tenant),
    ];
    let mut wrong = Vec::new();
    for &(verb, resource, ns) in granted {
        if !can(verb, resource, ns) {
            wrong.push(format!("refused but needed: {verb} {resource} in {ns:?}"));
        }
    }
    for &(verb, resource, ns) in refused {
        if can(verb, resource, ns) {
            wrong.push(format!("granted but unused: {verb} {resource} in {ns:?}"));
        }
    }
    assert!(wrong.is_empty(), "{sa}:\n{}", wrong.join("\n"));
    println!(
        "ok: {sa}: {} rights granted, {} refused",
        granted.len(),
        refused.len()
    );
}

// ------------------------------------------------------------------ the chart's root PV

/// Deletes what a test created in the cluster, also when the test fails.
struct Cleanup<'a> {
    cluster: &'a Cluster,
    /// `kubectl delete` argument lists, run in reverse order.
    deletes: Vec<Vec<String>>,
}

impl Cleanup<'_> {
    fn delete_later(&mut self, kind: &str, name: &str, ns: Option<&str>) {
        let mut args = vec!["delete".to_string(), kind.into(), name.into()];
        if let Some(ns) = ns {
            args.extend(["-n".into(), ns.into()]);
        }
        args.extend(["--ignore-not-found".into(), "--wait=false".into()]);
        self.deletes.push(args);
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for args in self.deletes.iter().rev() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = self.cluster.kubectl(&args, None);
            if !out.ok() {
                eprintln!("cleanup: kubectl {}: {}", args.join(" "), out.describe());
            }
        }
    }
}

fn claim_for(volume: &str, access_mode: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&format!(
        "apiVersion: v1
kind: PersistentVolumeClaim
spec:
  accessModes: [{access_mode}]
  storageClassName: \"\"
  volumeName: {volume}
  resources:
    requests:
      storage: 10Mi
"
    ))
    .expect("claim YAML")
}

fn named(mut obj: serde_yaml::Value, name: &str, ns: Option<&str>) -> serde_yaml::Value {
    let meta = &mut obj["metadata"];
    if meta.is_null() {
        *meta = serde_yaml::Value::Mapping(Default::default());
    }
    meta["name"] = name.into();
    if let Some(ns) = ns {
        meta["namespace"] = ns.into();
    }
    obj
}

/// backend=mounted (ci/mounted-values.yaml) mounts the whole share through a static PV.
/// A tenant's claim that names that PV in volumeName must not get it: the PV is
/// pre-bound to the release's own claim. Real objects and the real binder of
/// kube-controller-manager; a control PV without the claimRef shows the same tenant
/// claim would otherwise be bound.
#[test]
fn mounted_root_volume_cannot_be_bound_by_a_tenant_claim() {
    let c = cluster();
    let release = unique("rootpv");
    let docs = helm_objects(
        &release,
        &["--values", &format!("{CHART}/ci/mounted-values.yaml")],
    );
    let pvs = of_kind(&docs, "PersistentVolume");
    let pvcs = of_kind(&docs, "PersistentVolumeClaim");
    assert_eq!((pvs.len(), pvcs.len()), (1, 1), "one root PV and its claim");
    let (pv, pvc) = (pvs[0].clone(), pvcs[0].clone());
    let pv_name = pv["metadata"]["name"]
        .as_str()
        .expect("PV name")
        .to_string();
    let pvc_name = pvc["metadata"]["name"]
        .as_str()
        .expect("PVC name")
        .to_string();
    assert_eq!(pvc["metadata"]["namespace"].as_str(), Some(NAMESPACE));
    assert_eq!(pvc["spec"]["volumeName"].as_str(), Some(pv_name.as_str()));
    let claim_ref = &pv["spec"]["claimRef"];
    assert_eq!(
        (claim_ref["namespace"].as_str(), claim_ref["name"].as_str()),
        (Some(NAMESPACE), Some(pvc_name.as_str())),
        "the root PV is pre-bound to the release's claim"
    );
    let mode = pv["spec"]["accessModes"][0]
        .as_str()
        .expect("access mode")
        .to_string();

    let tenant = TENANTS[0];
    c.ensure_namespace(tenant);
    let mut cleanup = Cleanup {
        cluster: c,
        deletes: Vec::new(),
    };
    // The control: the same PV without the claimRef, as the chart rendered it before.
    let control_name = format!("{pv_name}-control");
    let mut control = named(pv.clone(), &control_name, None);
    if let Some(spec) = control["spec"].as_mapping_mut() {
        spec.remove("claimRef");
    }
    cleanup.delete_later("pv", &pv_name, None);
    cleanup.delete_later("pv", &control_name, None);
    c.must(&["create", "-f", "-"], Some(&to_stream(&[pv, control])));

    // Names of this run only: a claim of an earlier run may still be terminating.
    let grab = &format!("{release}-grab");
    let grab_control = &format!("{release}-grab-control");
    cleanup.delete_later("pvc", grab, Some(tenant));
    cleanup.delete_later("pvc", grab_control, Some(tenant));
    let tenant_claims = [
        named(claim_for(&pv_name, &mode), grab, Some(tenant)),
        named(claim_for(&control_name, &mode), grab_control, Some(tenant)),
    ];
    c.must(&["create", "-f", "-"], Some(&to_stream(&tenant_claims)));

    wait_until(
        "the tenant claim binds the control PV (no claimRef)",
        BINDER_LIMIT,
        || c.phase("pvc", grab_control, Some(tenant)) == "Bound",
    );
    // The binder says why it does not bind the other claim: wait for that, then check
    // that nothing was bound.
    let selector = format!("involvedObject.name={grab},reason=FailedBinding");
    wait_until("FailedBinding on the tenant claim", BINDER_LIMIT, || {
        let out = c.kubectl(
            &[
                "get",
                "events",
                "-n",
                tenant,
                "--field-selector",
                &selector,
                "-o",
                "name",
            ],
            None,
        );
        out.ok() && !out.stdout.trim().is_empty()
    });
    assert_eq!(c.phase("pvc", grab, Some(tenant)), "Pending");
    assert_eq!(c.phase("pv", &pv_name, None), "Available");
    let bound_to = c.must(
        &[
            "get",
            "pv",
            &pv_name,
            "-o",
            "jsonpath={.spec.claimRef.namespace}/{.spec.claimRef.name}",
        ],
        None,
    );
    assert_eq!(bound_to.trim(), format!("{NAMESPACE}/{pvc_name}"));

    // The release's own claim still gets it.
    cleanup.delete_later("pvc", &pvc_name, Some(NAMESPACE));
    c.must(&["create", "-f", "-"], Some(&to_stream(&[pvc])));
    wait_until(
        "the release's claim binds the root PV",
        BINDER_LIMIT,
        || c.phase("pvc", &pvc_name, Some(NAMESPACE)) == "Bound",
    );
    assert_eq!(c.phase("pvc", grab, Some(tenant)), "Pending");
    println!("ok: {pv_name}: refused to {tenant}/{grab}, bound to {NAMESPACE}/{pvc_name}");
}

// ------------------------------------------------------------------ NetworkPolicy

/// The egress `except` lists of a NetworkPolicy.
fn excepted(policy: &serde_yaml::Value) -> BTreeSet<String> {
    policy["spec"]["egress"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["to"].as_sequence().cloned().unwrap_or_default())
        .flat_map(|peer| strings(&peer["ipBlock"]["except"]))
        .collect()
}

fn assert_tenant_policy(policy: &serde_yaml::Value, servers: &[&str], what: &str) {
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"].as_mapping().map(|m| m.len()),
        Some(0),
        "{what}: every pod of the namespace, no label a tenant could set to escape"
    );
    assert_eq!(strings(&spec["policyTypes"]), ["Egress"], "{what}");
    let want: BTreeSet<String> = servers.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        excepted(policy),
        want,
        "{what}: the NFS servers are the exceptions"
    );
}

/// deploy/optional/networkpolicy-nfs.yaml: accepted by the API server in a tenant
/// namespace, and it is what it claims to be.
#[test]
fn optional_network_policy_is_accepted_in_a_tenant_namespace() {
    let c = cluster();
    let path = repo().join("deploy/optional/networkpolicy-nfs.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/optional/networkpolicy-nfs.yaml");
    let docs = documents(&text, "deploy/optional/networkpolicy-nfs.yaml");
    assert_eq!(docs.len(), 1);
    assert_tenant_policy(&docs[0], &["192.0.2.10/32"], "deploy/optional");
    assert!(
        docs[0]["metadata"]["namespace"].is_null(),
        "applied with -n TENANT: it names no namespace"
    );
    let tenant = TENANTS[0];
    c.ensure_namespace(tenant);
    c.dry_run(
        "deploy/optional/networkpolicy-nfs.yaml",
        &["-n", tenant, "-f", "deploy/optional/networkpolicy-nfs.yaml"],
        None,
        1,
    );
}

/// The chart's networkPolicy: off by default; on, one policy per tenant namespace with
/// the classes' server addresses; it refuses the release namespace (that would cut the
/// provisioner off) and host names (NetworkPolicy matches addresses).
#[test]
fn chart_network_policy_is_opt_in_and_spares_the_provisioner() {
    let defaults = helm_objects("np-check", &[]);
    assert!(
        of_kind(&defaults, "NetworkPolicy").is_empty(),
        "off by default"
    );

    let values = format!("{CHART}/ci/networkpolicy-values.yaml");
    let docs = helm_objects("np-check", &["--values", &values]);
    let policies = of_kind(&docs, "NetworkPolicy");
    let namespaces: Vec<&str> = policies
        .iter()
        .filter_map(|p| p["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(namespaces, TENANTS, "one per tenant namespace");
    for p in &policies {
        assert_tenant_policy(p, &["192.0.2.10/32", "2001:db8::20/128"], "chart");
    }
    let cidrs = helm_objects(
        "np-check",
        &[
            "--values",
            &values,
            "--set",
            "networkPolicy.serverCIDRs={198.51.100.0/28}",
        ],
    );
    for p in of_kind(&cidrs, "NetworkPolicy") {
        assert_tenant_policy(p, &["198.51.100.0/28"], "chart, serverCIDRs");
    }

    let refused = |args: &[&str], why: &str| {
        let mut full = vec!["--values", values.as_str()];
        full.extend_from_slice(args);
        let out = helm_template("np-check", &full);
        assert!(
            !out.ok() && out.stderr.contains(why),
            "{args:?}: {}",
            out.describe()
        );
    };
    refused(
        &[
            "--set",
            &format!("networkPolicy.namespaces={{{},{NAMESPACE}}}", TENANTS[0]),
        ],
        "must not hold the release namespace",
    );
    refused(
        &["--set", "nfs.server=nfs.example.com"],
        "is not an IP address",
    );
    refused(
        &["--set", "networkPolicy.namespaces=null"],
        "needs networkPolicy.namespaces",
    );
}

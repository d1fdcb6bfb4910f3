//! The image as users run it: a container with a read-only root, uid 65532, no
//! capability and no new privileges, on the host network to reach the real control
//! plane (tests/e2e/cluster.sh) and the real NFS server (tests/e2e/nfs.sh) on loopback,
//! with the shipped ServiceAccount's token; `check` from the image; and the Compose
//! playground brought up and torn down with the compose tool of this machine.
//!
//! Every test needs a container engine (Docker or podman), root (the token file is
//! handed to uid 65532) and the images, so they are ignored by plain `cargo test`:
//! `make test-image` installs the engine, builds the images, then runs
//! `cargo test --test container -- --ignored`.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::fixture::Fixture;
use serde_json::json;

/// The engine and image names `image/image.sh env` reports, so the tests use the
/// engine and configuration `make image` used.
struct Engine {
    command: String,
    conf: Option<String>,
    image: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn image_script() -> Command {
    Command::new(repo().join("image/image.sh"))
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let out = image_script()
            .arg("env")
            .output()
            .expect("run image/image.sh env");
        assert!(
            out.status.success(),
            "image/image.sh env: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = common::parse_env(&String::from_utf8_lossy(&out.stdout));
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let e = Engine {
            command: get("CONTAINER_ENGINE"),
            conf: Some(get("CONTAINERS_CONF")).filter(|c| !c.is_empty()),
            image: get("IMAGE"),
        };
        let inspect = e.run(&["image", "inspect", &e.image]);
        assert!(
            inspect.status.success(),
            "no image {} in {}: build it with `make image`",
            e.image,
            e.command
        );
        e
    })
}

impl Engine {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.command);
        if let Some(conf) = &self.conf {
            c.env("CONTAINERS_CONF", conf);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.command))
    }

    /// Runs and asserts success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}{}",
            self.command,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The confinement the Deployment in deploy/base asks for, as `run` flags.
const CONFINED: [&str; 10] = [
    "--network",
    "host",
    "--read-only",
    "--user",
    "65532:65532",
    "--cap-drop",
    "all",
    "--security-opt",
    "no-new-privileges",
    "--rm",
];

/// A detached container, removed (killed) when dropped.
struct Container {
    name: String,
}

impl Container {
    fn start(args: &[&str]) -> Self {
        let name = common::unique("nfs3p-test");
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        engine().ok(&all);
        Container { name }
    }

    fn logs(&self) -> String {
        let out = engine().run(&["logs", "--tail", "40", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The container's main process, as the host sees it.
    fn pid(&self) -> u32 {
        let pid = engine().ok(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        pid.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid for {}: {pid:?}", self.name))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = engine().run(&["rm", "-f", &self.name]);
    }
}

/// The ServiceAccount's kubeconfig (tests/e2e/sa-kubeconfig.sh), copied to a file only
/// uid 65532 can read, as a Secret volume with `defaultMode: 0400` would be.
fn kubeconfig_for_65532(dir: &Path) -> PathBuf {
    let file = dir.join("kubeconfig");
    std::fs::copy(&cluster().sa_kubeconfig, &file).expect("copy the kubeconfig");
    std::os::unix::fs::chown(&file, Some(65532), Some(65532))
        .expect("chown the kubeconfig to 65532 (the tests run as root)");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    file
}

fn ready(port: u16) -> bool {
    matches!(
        http_get(port, "/readyz", Duration::from_secs(5)),
        Some((200, _))
    )
}

/// A `/proc/PID/status` field, whitespace-normalised.
fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Mount options of the process's root file system.
fn root_mount_options(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    text.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[4] == "/")
        .map(|f| f[5].to_string())
        .expect("a root mount")
}

#[test]
#[ignore = "needs a container engine, root and the images: make test-image"]
fn image_holds_a_static_binary_passwd_and_ca_bundle_only() {
    let e = engine();
    let config = e.ok(&["image", "inspect", "--format", "{{json .Config}}", &e.image]);
    let config: serde_json::Value = serde_json::from_str(&config).expect("image config");
    assert_eq!(config["User"], json!("65532:65532"), "{config}");
    assert_eq!(
        config["Entrypoint"],
        json!(["/nfs3-provisioner"]),
        "{config}"
    );
    assert_eq!(config["Cmd"], json!(["run"]), "{config}");

    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("image.tar");
    e.ok(&["save", "-o", archive.to_str().expect("utf-8"), &e.image]);
    let unpacked = dir.path().join("image");
    std::fs::create_dir(&unpacked).expect("mkdir");
    tar(&[
        "-xf",
        archive.to_str().expect("utf-8"),
        "-C",
        path(&unpacked),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(unpacked.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest parses");
    let layers: Vec<PathBuf> = manifest[0]["Layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l.as_str())
        .map(|l| unpacked.join(l))
        .collect();
    // Everything but directories, over all layers: what the image holds.
    let mut files = BTreeSet::new();
    for layer in &layers {
        for line in tar(&["-tvf", path(layer)]).lines() {
            let name = line.rsplit(' ').next().unwrap_or("");
            if !line.starts_with('d') {
                files.insert(name.trim_start_matches("./").to_string());
            }
        }
    }
    let expected: BTreeSet<String> = [
        "etc/group",
        "etc/passwd",
        "etc/ssl/certs/ca-certificates.crt",
        "nfs3-provisioner",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, expected, "the image holds exactly these files");

    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    for layer in &layers {
        tar(&["-xf", path(layer), "-C", path(&root)]);
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let bundle =
        std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).expect("CA bundle");
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 50,
        "a full CA bundle"
    );
    let binary = std::fs::read(root.join("nfs3-provisioner")).expect("binary");
    assert!(
        is_static_elf(&binary),
        "the binary names a program interpreter: not static"
    );
    let size = e.ok(&["image", "inspect", "--format", "{{.Size}}", &e.image]);
    eprintln!(
        "image {}: {:.1} MB",
        e.image,
        size.trim().parse::<f64>().unwrap_or(0.0) / 1e6
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn tar(args: &[&str]) -> String {
    let out = Command::new("tar").args(args).output().expect("run tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ELF64 little-endian executable without a PT_INTERP program header: nothing to
/// load it, so no libc or loader is needed in the image.
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        matches!(u32_at(at), Some(t) if t != PT_INTERP)
    })
}

#[test]
fn the_static_elf_check_tells_a_dynamic_binary_apart() {
    // Positive control for the image test: a binary of this machine's toolchain
    // (dynamically linked against glibc) is not static.
    let me = std::fs::read(std::env::current_exe().expect("current exe")).expect("read");
    assert!(!is_static_elf(&me));
    assert!(!is_static_elf(b"not an ELF file"));
    // A minimal ELF64 header with one program header (at 64, 56 bytes): PT_LOAD alone
    // is static, PT_INTERP is not.
    let elf = |p_type: u32| {
        let mut b = vec![0u8; 64 + 56];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&p_type.to_le_bytes());
        b
    };
    assert!(is_static_elf(&elf(1)));
    assert!(!is_static_elf(&elf(3)));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a container engine, root and the images: make test-image"]
async fn image_provisions_and_reclaims_confined_with_the_service_account_token() {
    let nfs = common::nfs();
    let fx = Fixture::new("image").await;
    let (client, name) = (fx.client.clone(), fx.provisioner.clone());
    let e = engine();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_for_65532(dir.path());
    let export1 = nfs.export1.to_string_lossy().into_owned();
    let export2 = nfs.export2.to_string_lossy().into_owned();
    let (mount, pname, http, server, share) = (
        format!("{}:/kubeconfig:ro", kubeconfig.display()),
        format!("PROVISIONER_NAME={name}"),
        format!("HTTP_ADDR=127.0.0.1:{port}"),
        format!("NFS_SERVER={}", nfs.server),
        format!("NFS_PATH={export1}"),
    );
    let mut args: Vec<&str> = CONFINED.to_vec();
    args.extend([
        "-v",
        &mount,
        "-e",
        "KUBECONFIG=/kubeconfig",
        "-e",
        &pname,
        "-e",
        "POD_NAMESPACE=nfs3-provisioner",
        "-e",
        &http,
        "-e",
        &server,
        "-e",
        &share,
        "-e",
        "NFS_TIMEOUT_SECONDS=3",
        "-e",
        "RUST_LOG=info,nfs3_provisioner=debug",
        &e.image,
        "run",
    ]);
    let started = Instant::now();
    let c = Container::start(&args);
    wait_explained(
        "/readyz 200 from the container",
        Duration::from_secs(60),
        || c.logs(),
        || async { ready(port).then_some(()) },
    )
    .await;
    eprintln!(
        "container start to /readyz 200: {} ms",
        started.elapsed().as_millis()
    );

    // The confinement, as the kernel sees the process.
    let pid = c.pid();
    assert_eq!(status_field(pid, "Uid"), "65532 65532 65532 65532");
    assert_eq!(status_field(pid, "Gid"), "65532 65532 65532 65532");
    for caps in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let opts = root_mount_options(pid);
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "root mounted {opts}, not read-only"
    );

    let ns = fx.namespace().await;
    let deleting = fx.class("delete", json!({"onDelete": "delete"})).await;
    let archiving = fx
        .class(
            "archive",
            json!({"server": nfs.server, "share": export2, "onDelete": "archive"}),
        )
        .await;
    for (claim, class) in [
        ("one", &deleting),
        ("two", &deleting),
        ("three", &archiving),
    ] {
        fx.claim(&ns, claim, class, json!({})).await;
    }
    let volumes = wait_explained(
        "3 claims bound",
        Duration::from_secs(90),
        || c.logs(),
        || async {
            let list = claims(&client, &ns).await;
            let bound = list.iter().filter(|c| phase(c) == "Bound").count() == 3;
            let pvs = volumes_of(&client, &ns).await;
            (bound && pvs.len() == 3).then_some(pvs)
        },
    )
    .await;
    let mut archived = Vec::new();
    let mut deleted = Vec::new();
    for pv in &volumes {
        let dir = on_disk(pv);
        assert!(dir.is_dir(), "{} made no directory {dir:?}", c.name);
        if dir.starts_with(&export2) {
            let base = dir.file_name().expect("name").to_string_lossy();
            archived.push(dir.with_file_name(format!("archived-{base}")));
        } else {
            assert!(dir.starts_with(&export1), "{dir:?} on the default share");
            deleted.push(dir);
        }
    }
    assert_eq!((deleted.len(), archived.len()), (2, 1));
    assert_eq!(
        metric_at(port, "nfs3_provisioner_provision_total{result=\"success\"}"),
        Some(3.0)
    );

    delete_claims(&client, &ns).await;
    wait_explained(
        "the volumes reclaimed",
        Duration::from_secs(90),
        || c.logs(),
        || async { volumes_of(&client, &ns).await.is_empty().then_some(()) },
    )
    .await;
    for d in &deleted {
        assert!(!d.exists(), "{d:?} was not deleted");
    }
    for a in &archived {
        assert!(a.is_dir(), "no archive {a:?}");
    }
    for (action, n) in [("delete", 2.0), ("archive", 1.0)] {
        let line =
            format!("nfs3_provisioner_delete_total{{result=\"success\",action=\"{action}\"}}");
        assert_eq!(metric_at(port, &line), Some(n), "{line}");
    }
    assert!(ready(port), "still ready after the work");
}

#[test]
#[ignore = "needs a container engine, root and the images: make test-image"]
fn check_from_the_image_passes_on_ganesha_and_explains_a_wrong_share() {
    let nfs = common::nfs();
    let e = engine();
    let export2 = nfs.export2.to_string_lossy().into_owned();
    let run_check = |share: &str| {
        let mut args = vec!["run"];
        args.extend_from_slice(&CONFINED);
        args.extend([
            e.image.as_str(),
            "check",
            "--server",
            &nfs.server,
            "--share",
            share,
        ]);
        let out = e.run(&args);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = run_check(&export2);
    assert_eq!(code, Some(0), "{text}");
    for step in [
        "mount and FSSTAT",
        "chmod and chown",
        "remove it",
        "all checks passed",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
    let (code, text) = run_check("/no/such/export");
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("no such export"), "{text}");
}

/// The StorageClass of compose/storageclass.yaml, which users apply: the test uses its
/// server, share and policies, with its own name, provisioner name and ports.
fn shipped_compose_class() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("compose/storageclass.yaml"))
        .expect("compose/storageclass.yaml");
    let class = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_json::Value =
                serde::Deserialize::deserialize(doc).expect("compose/storageclass.yaml parses");
            v
        })
        .find(|v| v["kind"] == "StorageClass")
        .expect("a StorageClass in compose/storageclass.yaml");
    assert_eq!(class["parameters"]["port"], json!("2049"), "{class}");
    assert_eq!(class["parameters"]["mountPort"], json!("20048"), "{class}");
    class
}

/// `image/image.sh compose ...`: the compose tool of this machine on docker-compose.yml.
fn compose(project: &str, vars: &[(&str, String)], args: &[&str]) -> Output {
    let mut c = image_script();
    c.arg("compose").arg("-p").arg(project).args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run image/image.sh compose")
}

/// `compose down -v` when dropped, so a failing test leaves nothing running.
struct Project {
    name: String,
    vars: Vec<(&'static str, String)>,
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = compose(&self.name, &self.vars, &["down", "-v"]);
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a container engine, root and the images: make test-image"]
async fn compose_serves_the_local_cluster_and_comes_down() {
    let fx = Fixture::new("compose").await;
    let (client, name) = (fx.client.clone(), fx.provisioner.clone());
    let e = engine();
    let dir = tempfile::tempdir().expect("tempdir");
    // Owned by 65532 and 0400: the compose provisioner (root without
    // CAP_DAC_OVERRIDE, with CAP_DAC_READ_SEARCH) reads it as it would a user's file.
    let kubeconfig = kubeconfig_for_65532(dir.path());
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let (nfs_port, mount_port, http_port) = (ports[0], ports[1], ports[2]);
    let project = Project {
        name: common::unique("nfs3p-compose"),
        vars: vec![
            ("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()),
            ("NFS3P_IMAGE", e.image.clone()),
            ("NFS3P_NFS_PORT", nfs_port.to_string()),
            ("NFS3P_MOUNT_PORT", mount_port.to_string()),
            ("NFS3P_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("NFS3P_PROVISIONER_NAME", name.clone()),
        ],
    };
    let logs = || {
        let out = compose(&project.name, &project.vars, &["logs"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    let started = Instant::now();
    let up = compose(&project.name, &project.vars, &["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    wait_explained(
        "the compose provisioner ready and the NFS ports open",
        Duration::from_secs(120),
        logs,
        || async {
            (ready(http_port) && port_open(nfs_port) && port_open(mount_port)).then_some(())
        },
    )
    .await;
    eprintln!("compose up to ready: {} ms", started.elapsed().as_millis());

    let ns = fx.namespace().await;
    let shipped = shipped_compose_class();
    let class = fx
        .class_with(
            "compose",
            json!({
                "server": shipped["parameters"]["server"],
                "share": shipped["parameters"]["share"],
                "onDelete": shipped["parameters"]["onDelete"],
                "port": nfs_port.to_string(),
                "mountPort": mount_port.to_string(),
            }),
            json!({"reclaimPolicy": shipped["reclaimPolicy"]}),
        )
        .await;
    fx.claim(&ns, "data", &class, json!({})).await;
    let pv = wait_explained(
        "the claim bound by the compose provisioner",
        Duration::from_secs(120),
        logs,
        || async {
            let bound = claims(&client, &ns)
                .await
                .iter()
                .any(|c| phase(c) == "Bound");
            let pvs = volumes_of(&client, &ns).await;
            if bound { pvs.into_iter().next() } else { None }
        },
    )
    .await;
    // The export is the compose project's named volume; its directory on this
    // machine shows what the NFS server made.
    let volume = format!("{}_nfs-export", project.name);
    let mountpoint = e.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]);
    let sub = nfs_path(&pv);
    let sub = sub
        .strip_prefix("/export/")
        .unwrap_or_else(|| panic!("PV path {sub} is not under /export"));
    let on_disk = Path::new(mountpoint.trim()).join(sub);
    assert!(on_disk.is_dir(), "no directory {on_disk:?}");
    assert_eq!(
        metric_at(
            http_port,
            "nfs3_provisioner_provision_total{result=\"success\"}"
        ),
        Some(1.0)
    );

    delete_claims(&client, &ns).await;
    wait_explained(
        "the volume reclaimed",
        Duration::from_secs(90),
        logs,
        || async { volumes_of(&client, &ns).await.is_empty().then_some(()) },
    )
    .await;
    assert!(!on_disk.exists(), "{on_disk:?} was not deleted");

    let down = compose(&project.name, &project.vars, &["down", "-v"]);
    assert!(
        down.status.success(),
        "compose down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        !ready(http_port),
        "the provisioner still answers after down"
    );
    assert!(
        !port_open(nfs_port),
        "the NFS port is still open after down"
    );
    let left = e.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !left.lines().any(|n| n.contains(&project.name)),
        "containers left after down: {left}"
    );
    assert!(
        !e.run(&["volume", "inspect", &volume]).status.success(),
        "volume {volume} left after down -v"
    );
}

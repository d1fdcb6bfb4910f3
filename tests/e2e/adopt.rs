//! Adoption, end to end with the real incumbent: nfs-subdir-external-provisioner v4.0.2
//! (built by bench/incumbent.sh from ../shared/incumbent, or `INCUMBENT_BIN`) provisions
//! claims of four classes (archiveOnDelete "false", the default, onDelete retain, onDelete
//! delete) and is stopped; ours starts with `--adopt-provisioned-by` its name, the claims
//! are deleted, and each directory must end as the incumbent would have left it, the PVs
//! gone. Two hand-made PVs in the incumbent's name whose paths leave the adopted export
//! (another export; `..`) stay, with their data, and get an event. `audit` with the same
//! flags counts the adopted volumes and reports a missing directory.
//!
//! The incumbent works under the hard-coded `/persistentvolumes`: here a link to export1,
//! made (and removed) only if nothing is there, as the benchmark does.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use super::*;

const MOUNT_ROOT: &str = "/persistentvolumes";
/// Building the incumbent cold takes about 2.5 min on 2 cores; a loaded machine, more.
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
const FILE: &str = "data.txt";

/// The incumbent's binary, located (or built) once per test binary: two scenarios
/// building into the same cache at once would write the same file. Off the runtime's
/// threads, and before any lock is taken: a cold build takes minutes.
async fn incumbent() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(|| BIN.get_or_init(incumbent_binary).clone())
        .await
        .expect("locate or build the incumbent")
}

/// `INCUMBENT_BIN`, or what bench/incumbent.sh builds once and caches.
fn incumbent_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("INCUMBENT_BIN") {
        return PathBuf::from(bin);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/incumbent.sh");
    let mut child = Command::new(&script)
        .arg("path")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run bench/incumbent.sh");
    let deadline = Instant::now() + BUILD_LIMIT;
    loop {
        match child.try_wait().expect("wait for bench/incumbent.sh") {
            Some(status) => {
                assert!(status.success(), "bench/incumbent.sh failed: {status}");
                break;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("bench/incumbent.sh did not finish within {BUILD_LIMIT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("script output"), &mut out)
        .expect("read the script's output");
    PathBuf::from(out.trim())
}

/// `/persistentvolumes` pointing at export1 for as long as the test runs.
struct MountRoot {
    made: bool,
}

impl MountRoot {
    fn link_to(export: &Path) -> Self {
        let root = Path::new(MOUNT_ROOT);
        match std::fs::read_link(root) {
            Ok(t) if t == export => return MountRoot { made: false },
            _ if root.symlink_metadata().is_ok() => {
                panic!(
                    "{MOUNT_ROOT} exists and is not a link to {}: not touching it",
                    export.display()
                )
            }
            _ => {}
        }
        std::os::unix::fs::symlink(export, root).expect("link /persistentvolumes (needs root)");
        MountRoot { made: true }
    }
}

impl Drop for MountRoot {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_file(MOUNT_ROOT);
        }
    }
}

/// The incumbent process, killed when dropped.
struct Incumbent(Child);

impl Incumbent {
    fn start(bin: &Path, name: &str, export: &str, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("incumbent log");
        let child = Command::new(bin)
            .env_clear()
            .env("KUBECONFIG", &cluster().admin_kubeconfig)
            .env("NFS_SERVER", "127.0.0.1")
            .env("NFS_PATH", export)
            .env("PROVISIONER_NAME", name)
            .env("ENABLE_LEADER_ELECTION", "false")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the incumbent");
        Incumbent(child)
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Incumbent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PV in the incumbent's name, made by hand, whose claim is gone (so it goes Released).
async fn foreign_released_pv(fx: &Fixture, name: &str, path: &str, class: &str) {
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": fx.labels(),
            "annotations": {"pv.kubernetes.io/provisioned-by": fx.provisioner},
        },
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": class,
            "nfs": {"server": "127.0.0.1", "path": path},
            "claimRef": {
                "namespace": "default",
                "name": format!("{name}-gone"),
                "uid": "00000000-0000-0000-0000-00000000dead",
            },
        },
    }))
    .expect("PV");
    Api::<PersistentVolume>::all(fx.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("create PV");
}

fn write_file(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(FILE), b"kept").expect("write");
}

fn holds_file(dir: &Path) -> bool {
    std::fs::read(dir.join(FILE)).is_ok_and(|b| b == b"kept")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incumbents_volumes_are_reclaimed_as_its_classes_say() {
    takeover(false).await;
}

/// The same with ours under the incumbent's own name, adopting it: the old classes serve
/// new claims here, old PVs are adopted, new ones reclaimed from their record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_incumbents_own_name_old_volumes_are_adopted_and_new_ones_ours() {
    takeover(true).await;
}

/// One scenario at a time: both need `/persistentvolumes`, which the first to end would
/// take away from the other.
static MOUNT_ROOT_USER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn takeover(keep_name: bool) {
    let bin = incumbent().await;
    let _shared = EXCLUSIVE.read().await;
    let _root_user = MOUNT_ROOT_USER.lock().await;
    let fx = Fixture::new(if keep_name { "adopt-both" } else { "adopt" }).await;
    let client = fx.client.clone();
    let ns = fx.namespace().await;
    let export = export1();
    let export_path = PathBuf::from(&export);
    let _root = MountRoot::link_to(&export_path);

    // (claim, class suffix, parameters, what the incumbent does on release)
    let cases = [
        ("nodelete", json!({"archiveOnDelete": "false"}), "delete"),
        ("default", json!({}), "archive"),
        ("retain", json!({"onDelete": "retain"}), "retain"),
        ("delete", json!({"onDelete": "delete"}), "delete"),
        // Its directory is removed by hand before the release: nothing to do, PV goes.
        ("missing", json!({"onDelete": "delete"}), "missing"),
    ];
    let mut classes = BTreeMap::new();
    for (claim, params, _) in &cases {
        let class = fx
            .class_with(claim, params.clone(), json!({"reclaimPolicy": "Delete"}))
            .await;
        fx.claim(&ns, claim, &class, json!({})).await;
        classes.insert(*claim, class);
    }

    let logs = cluster().e2e_dir.join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut incumbent = Incumbent::start(
        &bin,
        &fx.provisioner,
        &export,
        &logs.join(format!("e2e-{}-incumbent.log", fx.label)),
    );
    let mut dirs = BTreeMap::new();
    for (claim, _, _) in &cases {
        let pv = fx.bound_pv(&ns, claim, Duration::from_secs(180)).await;
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        // What the incumbent writes: its name, the default directory, no finalizer.
        assert_eq!(
            pv.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("pv.kubernetes.io/provisioned-by")),
            Some(&fx.provisioner)
        );
        let finalizers = pv.metadata.finalizers.clone().unwrap_or_default();
        assert!(
            finalizers
                .iter()
                .all(|f| f == "kubernetes.io/pv-protection"),
            "{finalizers:?}"
        );
        let dir = export_path.join(format!("{ns}-{claim}-{pv_name}"));
        assert_eq!(nfs_path(&pv), dir.to_string_lossy(), "{claim}");
        assert!(dir.is_dir(), "{dir:?}");
        write_file(&dir);
        dirs.insert(*claim, (pv_name, dir));
    }
    incumbent.stop();
    let (_, missing_dir) = &dirs["missing"];
    std::fs::remove_dir_all(missing_dir).expect("remove a directory by hand");

    // Positive controls: in the incumbent's name, Released, of a deleting class, but
    // pointing outside the adopted export.
    let outside_name = format!("{ns}-outside");
    let outside_dir = PathBuf::from(export2()).join(&outside_name);
    let dotdot_name = format!("{ns}-dotdot");
    let dotdot_dir = PathBuf::from(export2()).join(&dotdot_name);
    for (name, dir, path) in [
        (
            &outside_name,
            &outside_dir,
            outside_dir.to_string_lossy().into_owned(),
        ),
        (
            &dotdot_name,
            &dotdot_dir,
            format!("{export}/../export2/{dotdot_name}"),
        ),
    ] {
        fx.remove_later(dir);
        write_file(dir);
        foreign_released_pv(&fx, name, &path, &classes["delete"]).await;
    }
    // `..` must name the very directory the control protects.
    assert!(holds_file(
        &export_path.join("../export2").join(&dotdot_name)
    ));

    // Ours, under a name of its own or the incumbent's, adopting the incumbent's.
    let ours = if keep_name {
        fx.provisioner.clone()
    } else {
        format!("ours-{}", fx.provisioner)
    };
    // As in a migration, the old classes' share (they name none) is the default.
    let adopt_flags = [
        ("ADOPT_PROVISIONED_BY", fx.provisioner.as_str()),
        ("ADOPT_NFS_SERVER", "127.0.0.1"),
        ("ADOPT_NFS_PATH", export.as_str()),
        ("NFS_SERVER", "127.0.0.1"),
        ("NFS_PATH", export.as_str()),
    ];
    let audit_flags = [
        "--adopt-provisioned-by",
        &fx.provisioner,
        "--adopt-nfs-server",
        "127.0.0.1",
        "--adopt-nfs-path",
        &export,
    ];

    // audit: the adopted volumes count as ours; the removed directory is missing and the
    // controls cannot be placed on the share.
    let (code, plain) = run_audit(&ours, &[]);
    if keep_name {
        // Without adoption the old PVs are ours by name but carry no record.
        assert_eq!(code, Some(2), "{plain:#}");
        assert_eq!(
            plain["unreadable"].as_array().map(Vec::len),
            Some(cases.len() + 2),
            "{plain:#}"
        );
    } else {
        assert_eq!(
            plain["shares"],
            json!([]),
            "nothing of ours without adoption"
        );
    }
    let (code, report) = run_audit(&ours, &audit_flags);
    // PVs that cannot be placed are errors, as our PVs with unreadable annotations.
    assert_eq!(code, Some(2), "{report:#}");
    let share = report["shares"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["share"] == json!(export)))
        .unwrap_or_else(|| panic!("export1 audited: {report:#}"));
    assert_eq!(share["volumes"], json!(cases.len()), "{share:#}");
    let missing: Vec<&str> = share["missing"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["pv"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(missing, [dirs["missing"].0.as_str()], "{share:#}");
    let mut unplaced: Vec<&str> = report["unreadable"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["pv"].as_str()).collect())
        .unwrap_or_default();
    unplaced.sort();
    assert_eq!(unplaced, [dotdot_name.as_str(), outside_name.as_str()]);
    let orphans = share["orphans"].to_string();
    for (_, dir) in dirs.values() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(!orphans.contains(&name.unwrap_or_default()), "{orphans}");
    }

    let p = Provisioner::start(&ours, &format!("{}-ours", fx.label), &adopt_flags);
    // Under the old name, an old class now provisions here, with our record.
    let new_dir = if keep_name {
        fx.claim(&ns, "new", &classes["delete"], json!({})).await;
        let pv = fx.bound_pv(&ns, "new", Duration::from_secs(180)).await;
        let ann = pv.metadata.annotations.clone().unwrap_or_default();
        assert!(ann.contains_key("nfs3-provisioner.io/directory"), "{ann:?}");
        let dir = on_disk(&pv);
        write_file(&dir);
        delete_claim(&client, &ns, "new").await;
        Some((pv.metadata.name.unwrap_or_default(), dir))
    } else {
        None
    };
    for (claim, _, _) in &cases {
        delete_claim(&client, &ns, claim).await;
    }
    if let Some((pv, dir)) = &new_dir {
        fx.pv_gone(pv, Duration::from_secs(60)).await;
        assert!(!dir.exists(), "ours, reclaimed from its record: {dir:?}");
    }
    for (claim, _, _) in &cases {
        let (pv, _) = &dirs[claim];
        wait_explained(
            &format!("adopted PV {pv} ({claim}) to be reclaimed and deleted"),
            Duration::from_secs(90),
            || p.log_tail(30),
            || async { pv_get(&client, pv).await.is_none().then_some(()) },
        )
        .await;
    }
    for (claim, _, outcome) in &cases {
        let (pv, dir) = &dirs[claim];
        let archived = dir.with_file_name(format!(
            "archived-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        match *outcome {
            "delete" | "missing" => {
                assert!(!dir.exists() && !archived.exists(), "{claim}: {dir:?}")
            }
            "archive" => {
                assert!(!dir.exists(), "{claim}: {dir:?}");
                assert!(holds_file(&archived), "{claim}: {archived:?} ({pv})");
            }
            "retain" => {
                assert!(holds_file(dir), "{claim}: {dir:?}");
                assert!(!archived.exists(), "{claim}");
            }
            other => unreachable!("{other}"),
        }
    }

    // The controls: still there, Released, data intact, and an event says why.
    for (name, dir, needle) in [
        (&outside_name, &outside_dir, "not inside the adopted export"),
        (
            &dotdot_name,
            &dotdot_dir,
            "not a plain path inside the export",
        ),
    ] {
        wait_event(
            &client,
            "default",
            name,
            "VolumeFailedDelete",
            needle,
            Duration::from_secs(30),
        )
        .await;
        let pv = pv_get(&client, name).await.expect("control PV stays");
        assert_eq!(pv_phase(&pv), "Released", "{name}");
        assert!(holds_file(dir), "{name}: {dir:?}");
    }
    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
    assert!(
        log.contains(&outside_name) && log.contains("not inside the adopted export"),
        "a log line for the refusal: {}",
        p.log_tail(30)
    );
}

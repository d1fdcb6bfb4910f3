//! Classes over several exports (`shares`) and refusing when full (`minFreeBytes`,
//! `minFreePercent`), against the real control plane and nfs-ganesha.
//!
//! export1 and export2 are directories of one local filesystem, so FSSTAT reports the
//! same free space for both; there, placement by room is shown with a per-export floor
//! that makes one export "full" for real. export4 and export5 are small tmpfs
//! filesystems of their own (64 and 128 MiB, mounted by `nfs.sh`), where FSSTAT alone
//! decides, before and after one of them is filled from the server's side.
//! Unreachable exports are a port where nothing listens, or the TCP proxy in front of
//! ganesha refusing.

use std::time::UNIX_EPOCH;

use nfs3_provisioner::plan::ownership::stamp;

use super::*;

// Only refusing connections is used here.
#[allow(dead_code)]
#[path = "../common/proxy.rs"]
mod proxy;

const NFS_PORT: u16 = 12049;
const MOUNT_PORT: u16 = 12048;
/// Larger than any export here: an export with this floor has no room.
const NEVER: &str = "minFreeBytes=1Ei";

fn entry(export: &str, options: &str) -> String {
    format!("127.0.0.1:{export} {options}")
}

fn shares(entries: &[String]) -> serde_json::Value {
    json!({"shares": entries.join(", "), "onDelete": "delete"})
}

/// Entries directly below `export` whose name holds `needle`.
fn on_export(export: &str, needle: &str) -> Vec<String> {
    std::fs::read_dir(export)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

fn share_of(pv: &PersistentVolume) -> String {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("nfs3-provisioner.io/share"))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_over_two_exports_places_by_room_and_passes_over_an_unreachable_one() {
    let _shared = EXCLUSIVE.read().await;
    let (e1, e2) = (export1(), export2());
    let fx = Fixture::new("place").await;
    let ns = fx.namespace().await;
    let client = fx.client.clone();
    // Listed first, but with no room: the volume goes to export2.
    let to_e2 = fx
        .class("e2", shares(&[entry(&e1, NEVER), entry(&e2, "")]))
        .await;
    let to_e1 = fx
        .class("e1", shares(&[entry(&e1, ""), entry(&e2, NEVER)]))
        .await;
    let dead = free_port().to_string();
    let skip = fx
        .class(
            "skip",
            shares(&[
                entry(&e1, &format!("port={dead} mountPort={dead}")),
                entry(&e2, ""),
            ]),
        )
        .await;
    // export2 has no room in this class, but an earlier attempt for this claim made its
    // directory there: that directory is used, and none is made on export1.
    let resumed = fx.claim(&ns, "resumed", &to_e1, json!({})).await;
    let uid = resumed.metadata.uid.clone().expect("claim uid");
    let dir = format!("{ns}-resumed-pvc-{uid}");
    let made = Path::new(&e2).join(&dir);
    std::fs::create_dir(&made).expect("the directory an earlier attempt made");
    let (secs, nanos) = stamp(&uid);
    std::fs::File::open(&made)
        .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::new(secs.into(), nanos)))
        .expect("stamp it as the provisioner does");

    // Started after the claim exists, so its first attempt sees the stamped directory.
    let p = fx.start("", &[]);
    fx.claim(&ns, "roomy", &to_e2, json!({})).await;
    fx.claim(&ns, "first", &to_e1, json!({})).await;
    fx.claim(&ns, "skipped", &skip, json!({})).await;
    all_bound(&client, &ns, 4, Duration::from_secs(60), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    for (claim, export) in [
        ("roomy", &e2),
        ("first", &e1),
        ("skipped", &e2),
        ("resumed", &e2),
    ] {
        let pv = pv_of(&pvs, claim);
        assert_eq!(&share_of(pv), export, "{claim}: recorded share");
        assert!(
            nfs_path(pv).starts_with(&format!("{export}/")),
            "{claim}: {}",
            nfs_path(pv)
        );
        assert!(on_disk(pv).is_dir(), "{claim}: directory on disk");
    }
    assert_eq!(on_disk(pv_of(&pvs, "resumed")), made);
    let needle = format!("{ns}-resumed-");
    assert!(
        on_export(&e1, &needle).is_empty(),
        "no second directory on export1: {:?}",
        on_export(&e1, &needle)
    );
    let msg = wait_event(
        &client,
        &ns,
        "skipped",
        "ExportUnreachable",
        &format!("export 127.0.0.1:{e1} of StorageClass {skip} does not answer"),
        Duration::from_secs(30),
    )
    .await;
    assert!(msg.contains("another export"), "{msg}");

    // Audit takes each volume's export from its PV: both exports, nothing missing.
    let (_, report) = run_audit(&fx.provisioner, &[]);
    for (export, volumes) in [(&e1, 1), (&e2, 3)] {
        let share = report["shares"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["share"] == json!(export)))
            .unwrap_or_else(|| panic!("{export} is audited: {report:#}"));
        assert_eq!(share["volumes"], json!(volumes), "{share:#}");
        assert_eq!(share["missing"], json!([]), "{share:#}");
    }

    // Reclaim finds each directory where its PV says.
    fx.reclaim_all(&ns, Duration::from_secs(60), &p).await;
    for export in [&e1, &e2] {
        assert!(
            on_export(export, &ns).is_empty(),
            "{export} keeps nothing of {ns}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_unreachable_class_refuses_creates_nothing_and_retries() {
    let _shared = EXCLUSIVE.read().await;
    let (e1, e2) = (export1(), export2());
    let nfs = proxy::Proxy::start(([127, 0, 0, 1], NFS_PORT).into()).await;
    nfs.refuse(true);
    let (fx, p, ns, both_full) = scene(
        "full",
        shares(&[entry(&e1, NEVER), entry(&e2, "minFreePercent=99")]),
        json!({}),
    )
    .await;
    let client = fx.client.clone();
    let single = fx
        .class(
            "single",
            json!({"server": "127.0.0.1", "share": e1, "minFreePercent": "99"}),
        )
        .await;
    let roomy = fx
        .class("roomy", shares(&[entry(&e1, ""), entry(&e2, "")]))
        .await;
    let through = format!("port={} mountPort={MOUNT_PORT}", nfs.port());
    let down = fx
        .class(
            "down",
            shares(&[entry(&e1, &through), entry(&e2, &through)]),
        )
        .await;
    fx.claim(&ns, "both-full", &both_full, json!({})).await;
    fx.claim(&ns, "single", &single, json!({})).await;
    fx.claim_with(
        &ns,
        "too-big",
        &roomy,
        json!({}),
        json!({"resources": {"requests": {"storage": "100Ti"}}}),
    )
    .await;
    fx.claim(&ns, "down", &down, json!({})).await;

    let msg = wait_event(
        &client,
        &ns,
        "both-full",
        "ProvisioningFailed",
        "no export of this class has room for the requested 1.0 GiB",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        msg.contains(&format!("127.0.0.1:{e1} has "))
            && msg.contains("would fall below minFreeBytes")
            && msg.contains(&format!("127.0.0.1:{e2} has "))
            && msg.contains("would fall below minFreePercent (99%)")
            && msg.contains("% used"),
        "says how full each export is: {msg}"
    );
    wait_event(
        &client,
        &ns,
        "single",
        "ProvisioningFailed",
        "would fall below minFreePercent (99%)",
        Duration::from_secs(30),
    )
    .await;
    wait_event(
        &client,
        &ns,
        "too-big",
        "ProvisioningFailed",
        "has room for the requested 100.0 TiB",
        Duration::from_secs(30),
    )
    .await;
    wait_event(
        &client,
        &ns,
        "down",
        "ProvisioningFailed",
        "no export of this class is reachable",
        Duration::from_secs(30),
    )
    .await;
    // Retried with backoff: a second attempt is refused again (the provisioner counts
    // each attempt), and nothing was made on either export.
    let errors = "nfs3_provisioner_provision_total{result=\"error\"}";
    wait_for("refusals retried", Duration::from_secs(30), || {
        let n = p.metric(errors).unwrap_or(0.0);
        async move { (n >= 8.0).then_some(()) }
    })
    .await;
    assert!(volumes_of(&client, &ns).await.is_empty(), "no PV");
    for export in [&e1, &e2] {
        assert!(on_export(export, &ns).is_empty(), "nothing on {export}");
    }
    for c in claims(&client, &ns).await {
        assert_eq!(phase(&c), "Pending");
    }

    // The server answers again: the claim is retried and bound, on the first listed.
    nfs.refuse(false);
    let pv = fx.bound_pv(&ns, "down", Duration::from_secs(60)).await;
    assert_eq!(share_of(&pv), e1);
    assert!(on_disk(&pv).is_dir());
    assert!(nfs.accepted() > 0, "the traffic went through the proxy");
}

/// Removes the file that fills an export, also when the test fails.
struct Filler(std::path::PathBuf);

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// export4 and export5 (64 and 128 MiB), when they are filesystems of their own: only
/// there does FSSTAT differ between exports. Elsewhere (nfs.sh could not mount them) the
/// caller does not run; the floors tests above still show placement by room.
/// Held while a test uses them: the tests fill them, and each reads their free space.
async fn small_exports() -> Option<(String, String, tokio::sync::MutexGuard<'static, ()>)> {
    static SMALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let held = SMALL.lock().await;
    let env = common::nfs();
    let (e1, e4, e5) = (&env.export1, &env.export4, &env.export5);
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).unwrap_or(0);
    if dev(e4) == dev(e1) || dev(e5) == dev(e1) || dev(e4) == dev(e5) {
        eprintln!("export4 and export5 are not filesystems of their own here: not run");
        return None;
    }
    Some((
        e4.to_string_lossy().into_owned(),
        e5.to_string_lossy().into_owned(),
        held,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_volume_goes_to_the_export_with_the_most_free_space() {
    let _shared = EXCLUSIVE.read().await;
    let Some((s4, s5, _small)) = small_exports().await else {
        return;
    };
    let fx = Fixture::new("room").await;
    let ns = fx.namespace().await;
    let client = fx.client.clone();
    // Neither entry has a floor: only FSSTAT decides. export4 has 64 MiB, export5 128.
    let class = fx
        .class("room", shares(&[entry(&s4, ""), entry(&s5, "")]))
        .await;
    let small = json!({"resources": {"requests": {"storage": "1Mi"}}});
    let p = fx.start("", &[]);
    fx.claim_with(&ns, "first", &class, json!({}), small.clone())
        .await;
    all_bound(&client, &ns, 1, Duration::from_secs(60), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    assert_eq!(
        share_of(pv_of(&pvs, "first")),
        s5,
        "the larger export first"
    );

    // 100 MiB written on the server's side: export5 now has less room than export4.
    let filler = Filler(Path::new(&s5).join(format!("{ns}-filler")));
    std::fs::write(&filler.0, vec![7u8; 100 << 20]).expect("fill export5");
    fx.claim_with(&ns, "second", &class, json!({}), small).await;
    all_bound(&client, &ns, 2, Duration::from_secs(60), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    let second = pv_of(&pvs, "second");
    assert_eq!(share_of(second), s4, "then the one with more room left");
    assert!(on_disk(second).is_dir(), "directory on export4");
    assert!(
        on_export(&s5, &format!("{ns}-second")).is_empty(),
        "nothing of it on export5"
    );
    drop(filler);
    fx.reclaim_all(&ns, Duration::from_secs(60), &p).await;
    for export in [&s4, &s5] {
        assert!(
            on_export(export, &ns).is_empty(),
            "{export} keeps nothing of {ns}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_goes_to_its_sources_export_whatever_the_free_space() {
    let _shared = EXCLUSIVE.read().await;
    let Some((s4, s5, _small)) = small_exports().await else {
        return;
    };
    let fx = Fixture::new("clone-room").await;
    let ns = fx.namespace().await;
    let client = fx.client.clone();
    let class = fx
        .class("clone-room", shares(&[entry(&s4, ""), entry(&s5, "")]))
        .await;
    let small = json!({"resources": {"requests": {"storage": "1Mi"}}});
    let p = fx.start("", &[]);
    fx.claim_with(&ns, "source", &class, json!({}), small.clone())
        .await;
    all_bound(&client, &ns, 1, Duration::from_secs(60), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    let source = pv_of(&pvs, "source");
    assert_eq!(share_of(source), s5, "the source on the larger export");
    std::fs::write(on_disk(source).join("data"), b"cloned").expect("source content");

    // export5 now has less room than export4; the clone still goes to export5.
    let filler = Filler(Path::new(&s5).join(format!("{ns}-filler")));
    std::fs::write(&filler.0, vec![7u8; 100 << 20]).expect("fill export5");
    let mut spec = small;
    spec["dataSource"] = json!({"kind": "PersistentVolumeClaim", "name": "source"});
    fx.claim_with(&ns, "copy", &class, json!({}), spec).await;
    all_bound(&client, &ns, 2, Duration::from_secs(90), &p).await;
    let pvs = volumes_of(&client, &ns).await;
    let copy = pv_of(&pvs, "copy");
    assert_eq!(share_of(copy), s5, "the clone beside its source");
    assert_eq!(
        std::fs::read(on_disk(copy).join("data")).expect("copied content"),
        b"cloned"
    );
    assert!(
        on_export(&s4, &ns).is_empty(),
        "nothing on export4: {:?}",
        on_export(&s4, &ns)
    );
    drop(filler);
    fx.reclaim_all(&ns, Duration::from_secs(60), &p).await;
}

//! Usage accounting end to end: files put into a volume show in the volume's metrics
//! within a scan interval or two; passing the class's
//! `usageWarnPercent` of the claim's size gives one `OverCapacity` warning (not one per
//! scan), coming back under says so; the share's FSSTAT shows; a deleted volume's
//! series go.

//!
//! Files are written on the server's disk, in a directory no client has listed, and
//! moved into the volume with an NFS RENAME: nfs-ganesha caches directory listings
//! and does not see what is written behind its back into a directory it has cached
//! (a pod writing through its mount goes through the server, so it does not meet
//! this).

use nfs3_provisioner::backend::nfs3::{Nfs3Options, Nfs3Share};
use nfs3_provisioner::backend::{Share, Target};
use nfs3_provisioner::path::RelPath;

use super::*;

/// Puts a directory `name` holding one file of `size` bytes into `volume` (relative to
/// export1): made on disk under `stage`, then renamed in over NFS.
async fn put(nfs: &Nfs3Share, stage: &str, volume: &str, name: &str, size: usize) {
    let staged = Path::new(&export1()).join(stage).join(name);
    std::fs::create_dir_all(&staged).expect("stage");
    std::fs::write(staged.join("data"), vec![7u8; size]).expect("write");
    let from = RelPath::parse(&format!("{stage}/{name}")).expect("path");
    let to = RelPath::parse(&format!("{volume}/{name}")).expect("path");
    nfs.rename(&from, &to)
        .await
        .expect("rename into the volume");
}

/// Short, so the test waits seconds; the default is ten minutes.
const INTERVAL: Duration = Duration::from_secs(2);
/// A scan is due within one interval; the rest is slack for a loaded machine.
const FOLLOW: Duration = Duration::from_secs(20);

fn series(name: &str, ns: &str, claim: &str, pv: &str) -> String {
    format!("{name}{{namespace=\"{ns}\",claim=\"{claim}\",persistentvolume=\"{pv}\"}}")
}

async fn metric_until(
    p: &Provisioner,
    what: &str,
    series: &str,
    ok: impl Fn(Option<f64>) -> bool,
) -> Option<f64> {
    let started = Instant::now();
    let got = wait_explained(
        what,
        FOLLOW,
        || p.log_tail(20),
        || async {
            let v = p.metric(&format!("{series} "));
            ok(v).then_some(v)
        },
    )
    .await;
    eprintln!("{what}: {got:?} after {:?}", started.elapsed());
    got
}

/// How many times an `OverCapacity` warning was published on `claim`: the events'
/// objects, and the repeats the recorder folds into one of them (its series count,
/// which only events.k8s.io shows).
async fn over_capacity_events(client: &kube::Client, ns: &str, claim: &str) -> i32 {
    use k8s_openapi::api::events::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.reason.as_deref() == Some("OverCapacity"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(claim))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_follows_writes_and_warns_once_per_crossing() {
    let _shared = EXCLUSIVE.read().await;
    let fx = Fixture::new("usage").await;
    let p = fx.start(
        "",
        &[
            ("USAGE_SCAN_INTERVAL", "2s"),
            ("USAGE_SCAN_CALLS_PER_SECOND", "100"),
        ],
    );
    let ns = fx.namespace().await;
    let mut params = delete_on(&export1());
    params["usageWarnPercent"] = json!("50");
    let class = fx.class("c", params).await;
    let client = fx.client.clone();
    fx.claim_with(
        &ns,
        "data",
        &class,
        json!({}),
        json!({"resources": {"requests": {"storage": "1Mi"}}}),
    )
    .await;
    let pv = fx.bound_pv(&ns, "data", Duration::from_secs(30)).await;
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let volume = on_disk(&pv)
        .strip_prefix(export1())
        .expect("on export1")
        .to_string_lossy()
        .into_owned();
    let stage = format!("{}-stage", fx.token);
    fx.remove_later(Path::new(&export1()).join(&stage));
    let nfs = Nfs3Share::new(
        Target {
            server: "127.0.0.1".into(),
            share: export1(),
            port: None,
            mount_port: None,
        },
        Nfs3Options::default(),
    );
    let used = series("nfs3_provisioner_volume_used_bytes", &ns, "data", &pv_name);
    let files = series("nfs3_provisioner_volume_files", &ns, "data", &pv_name);
    let over = series(
        "nfs3_provisioner_volume_over_capacity",
        &ns,
        "data",
        &pv_name,
    );
    let scanned = series(
        "nfs3_provisioner_volume_last_scan_timestamp_seconds",
        &ns,
        "data",
        &pv_name,
    );

    metric_until(&p, "the empty volume counted", &files, |v| v == Some(0.0)).await;
    let share = format!(
        "nfs3_provisioner_share_total_bytes{{server=\"127.0.0.1\",share=\"{}\"}}",
        export1()
    );
    assert!(
        p.metric(&format!("{share} ")) > Some(0.0),
        "FSSTAT of the share"
    );

    // 300 KiB: under half of 1 MiB, no warning.
    put(&nfs, &stage, &volume, "a", 300 << 10).await;
    metric_until(&p, "300 KiB counted", &used, |v| {
        v >= Some(f64::from(300 << 10))
    })
    .await;
    assert_eq!(p.metric(&format!("{files} ")), Some(1.0));
    assert_eq!(p.metric(&format!("{over} ")), Some(0.0));
    assert_eq!(over_capacity_events(&client, &ns, "data").await, 0);

    // 700 KiB in all: past 50 %.
    put(&nfs, &stage, &volume, "b", 400 << 10).await;
    metric_until(&p, "over capacity", &over, |v| v == Some(1.0)).await;
    let note = wait_event(
        &client,
        &ns,
        "data",
        "OverCapacity",
        &pv_name,
        Duration::from_secs(10),
    )
    .await;
    assert!(note.contains("cannot enforce"), "{note}");
    assert_eq!(p.metric(&format!("{files} ")), Some(2.0));

    // Three more scans find it still over: still one warning.
    let seen = p.metric(&format!("{scanned} ")).unwrap_or(0.0);
    metric_until(&p, "three more scans", &scanned, |v| {
        v >= Some(seen + 3.0 * INTERVAL.as_secs_f64())
    })
    .await;
    assert_eq!(over_capacity_events(&client, &ns, "data").await, 1);

    // Back under, then over again: one more warning, for the new crossing.
    let b = RelPath::parse(&format!("{volume}/b")).expect("path");
    nfs.remove_tree(&b).await.expect("remove b");
    wait_event(&client, &ns, "data", "BackUnderCapacity", &pv_name, FOLLOW).await;
    assert_eq!(p.metric(&format!("{over} ")), Some(0.0));
    put(&nfs, &stage, &volume, "c", 600 << 10).await;
    wait_explained(
        "a second OverCapacity warning",
        FOLLOW,
        || p.log_tail(20),
        || async { (over_capacity_events(&client, &ns, "data").await == 2).then_some(()) },
    )
    .await;

    // `audit --usage` counts the same: a (300 KiB) and c (600 KiB).
    let (code, report) = run_audit(&fx.provisioner, &["--usage"]);
    let row = report["shares"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["usage"].as_array().into_iter().flatten())
        .find(|u| u["pv"] == json!(pv_name))
        .unwrap_or_else(|| panic!("audit --usage lists {pv_name}: {report:#}"))
        .clone();
    // 1 is fine: others' directories on the shared export are orphans to this name.
    assert!(matches!(code, Some(0 | 1)), "{report:#}");
    assert_eq!(row["files"], json!(2), "{row:#}");
    assert_eq!(row["dirs"], json!(2), "{row:#}");
    assert_eq!(row["capacity_bytes"], json!(1 << 20), "{row:#}");
    assert!(row["used_bytes"].as_u64() >= Some(900 << 10), "{row:#}");

    // The volume goes: so do its series.
    fx.reclaim_all(&ns, Duration::from_secs(30), &p).await;
    metric_until(&p, "the series gone", &used, |v| v.is_none()).await;
    assert_eq!(p.metric(&format!("{scanned} ")), None);
}

//! Chaos: a burst of 200 claims provisioned and then deleted while kube-apiserver is
//! killed (SIGKILL) and nfs-ganesha stopped, each at seeded random points, under two
//! replicas with leader election. At the end every claim was Bound to exactly one PV,
//! every reclaim was done, and `audit` finds nothing missing and no orphan.
//!
//! The seed is printed; `CHAOS_SEED=N` repeats a run. The scenario stops the shared
//! servers, so it runs alone (`EXCLUSIVE`), and a guard starts both again whatever
//! happens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::StreamExt;
use kube::api::ListParams;

use super::*;

const CLAIMS: usize = 200;

/// splitmix64: enough randomness for a schedule, and the same one for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

#[derive(Clone, Copy, Debug)]
enum Part {
    ApiServer,
    Nfs,
}

/// One fault: after `after` (from the previous one), take `part` down for `down`.
#[derive(Clone, Copy, Debug)]
struct Fault {
    after: Duration,
    part: Part,
    down: Duration,
}

/// Both parts, in a seeded order, at seeded points of the first seconds of a phase.
fn schedule(rng: &mut Rng) -> Vec<Fault> {
    let mut parts = [Part::ApiServer, Part::Nfs];
    if rng.next() % 2 == 1 {
        parts.swap(0, 1);
    }
    parts
        .into_iter()
        .map(|part| Fault {
            after: rng.millis(300, 6000),
            part,
            down: rng.millis(500, 3000),
        })
        .collect()
}

fn take_down(part: Part) {
    match part {
        Part::ApiServer => common::script("cluster.sh", &["kill-apiserver"]),
        Part::Nfs => common::script("nfs.sh", &["stop-server"]),
    };
}

fn bring_up(part: Part) {
    match part {
        Part::ApiServer => common::script("cluster.sh", &["start-apiserver"]),
        Part::Nfs => common::script("nfs.sh", &["start-server"]),
    };
}

/// Runs fault schedules on a thread of its own (the scripts block). Dropping it, also
/// when the test fails, stops the schedule and brings both parts up again.
struct Chaos {
    stop: Arc<AtomicBool>,
    /// Held while a part is down, so the guard never races a fault half done.
    acting: Arc<Mutex<()>>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Chaos {
    fn new() -> Chaos {
        Chaos {
            stop: Arc::new(AtomicBool::new(false)),
            acting: Arc::new(Mutex::new(())),
            thread: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn run(&mut self, phase: &'static str, faults: Vec<Fault>) {
        self.wait();
        let (stop, acting, log) = (self.stop.clone(), self.acting.clone(), self.log.clone());
        self.thread = Some(std::thread::spawn(move || {
            let started = Instant::now();
            for f in faults {
                let until = Instant::now() + f.after;
                while Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _held = acting.lock().unwrap_or_else(|p| p.into_inner());
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let at = started.elapsed();
                take_down(f.part);
                std::thread::sleep(f.down);
                bring_up(f.part);
                let line = format!(
                    "{phase}: {:?} down at {at:.1?} for {:?}, back after {:.1?}",
                    f.part,
                    f.down,
                    started.elapsed() - at
                );
                eprintln!("chaos: {line}");
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        }));
    }

    /// Waits for the schedule under way to end.
    fn wait(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _held = self.acting.lock().unwrap_or_else(|p| p.into_inner());
        // Whatever state the schedule left, both parts run again for the others.
        bring_up(Part::ApiServer);
        bring_up(Part::Nfs);
        drop(_held);
        self.wait();
    }
}

/// Retries `f` through outages until it succeeds or `limit` passes.
async fn retry<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{what}: still failing after {limit:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ok_if_exists<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// `audit` of our PVs: (missing, orphans under `ns/`) on export1.
fn audit(name: &str, ns: &str) -> (Vec<String>, Vec<String>) {
    let (_, report) = run_audit(name, &["--server", "127.0.0.1", "--share", &export1()]);
    let share = report["shares"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["share"] == json!(export1())))
        .unwrap_or_else(|| panic!("export1 is audited: {report:#}"))
        .clone();
    let strings = |key: &str, field: &str| -> Vec<String> {
        share[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m[field].as_str().map(str::to_string))
            .collect()
    };
    let prefix = format!("{ns}/");
    let orphans = strings("orphans", "path")
        .into_iter()
        .filter(|p| p.starts_with(&prefix) || p == ns)
        .collect();
    (strings("missing", "pv"), orphans)
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_200_claims_through_api_server_and_nfs_restarts() {
    let _alone = EXCLUSIVE.write().await;
    common::nfs();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261130u64);
    eprintln!("chaos: seed {seed} (CHAOS_SEED repeats it)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let fx = Fixture::new("chaos").await;
    let (client, name) = (fx.client.clone(), fx.provisioner.clone());
    let _lease = the_lease(&client).await;
    let lease = LEASE_NAME.to_string();
    let elect = |pod| {
        [
            ("LEADER_ELECT", "true"),
            ("LEASE_NAME", lease.as_str()),
            ("LEASE_DURATION_SECONDS", "6"),
            ("POD_NAME", pod),
        ]
    };
    let a = fx.start("-a", &elect("chaos-a"));
    let b = fx.start("-b", &elect("chaos-b"));
    let ns = fx.namespace().await;
    let pattern = "${.PVC.namespace}/${.PVC.name}";
    let class_delete = fx.class("delete", json!({"server": "127.0.0.1", "share": export1(), "onDelete": "delete", "pathPattern": pattern})).await;
    let class_archive = fx.class("archive", json!({"server": "127.0.0.1", "share": export1(), "onDelete": "archive", "pathPattern": pattern})).await;
    let names: Vec<(String, String)> = (0..CLAIMS)
        .map(|i| {
            if i % 2 == 0 {
                (format!("d{i:03}"), class_delete.clone())
            } else {
                (format!("a{i:03}"), class_archive.clone())
            }
        })
        .collect();

    let mut chaos = Chaos::new();
    chaos.run("provision", schedule(&mut rng));
    let claims_api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    futures::stream::iter(names.clone())
        .for_each_concurrent(16, |(claim, class)| {
            let api = claims_api.clone();
            let pvc = fx.claim_object(&ns, &claim, &class, json!({}), json!({}));
            async move {
                retry(
                    &format!("create {claim}"),
                    Duration::from_secs(90),
                    || async { ok_if_exists(api.create(&PostParams::default(), &pvc).await) },
                )
                .await;
            }
        })
        .await;
    eprintln!(
        "chaos: {CLAIMS} claims created after {:?}",
        started.elapsed()
    );
    chaos.wait();

    let bound = wait_for("every claim Bound", Duration::from_secs(150), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let list = try_claims(&client, &ns).await?;
            let n = list.iter().filter(|c| phase(c) == "Bound").count();
            (list.len() == CLAIMS && n == CLAIMS).then_some(list)
        }
    })
    .await;
    eprintln!("chaos: all {CLAIMS} Bound after {:?}", started.elapsed());
    let pvs = wait_for("the PVs", Duration::from_secs(30), || {
        try_volumes(&client, &ns)
    })
    .await;
    assert_eq!(pvs.len(), CLAIMS, "exactly one PV per claim, no duplicate");
    let by_uid: BTreeMap<String, &PersistentVolume> = pvs
        .iter()
        .filter_map(|pv| Some((pv.spec.as_ref()?.claim_ref.as_ref()?.uid.clone()?, pv)))
        .collect();
    assert_eq!(by_uid.len(), CLAIMS, "no two PVs for one claim");
    for c in &bound {
        let uid = c.metadata.uid.clone().unwrap_or_default();
        let volume = c.spec.as_ref().and_then(|s| s.volume_name.clone());
        assert_eq!(volume, Some(format!("pvc-{uid}")), "{:?}", c.metadata.name);
        assert!(
            by_uid.contains_key(&uid),
            "the PV of {:?} points back",
            c.metadata.name
        );
    }
    let on_share = entries(&common::nfs().export1.join(&ns));
    let expected: BTreeSet<String> = names.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(on_share, expected, "one directory per claim, none orphaned");
    let (missing, orphans) = audit(&name, &ns);
    assert!(
        missing.is_empty() && orphans.is_empty(),
        "audit: missing {missing:?}, orphans {orphans:?}"
    );

    chaos.run("reclaim", schedule(&mut rng));
    let (dp, lp) = (DeleteParams::default(), ListParams::default());
    retry("delete the claims", Duration::from_secs(90), || {
        claims_api.delete_collection(&dp, &lp)
    })
    .await;
    tokio::task::block_in_place(|| chaos.wait());
    wait_for("every PV reclaimed", Duration::from_secs(150), || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { try_volumes(&client, &ns).await?.is_empty().then_some(()) }
    })
    .await;
    eprintln!("chaos: all reclaimed after {:?}", started.elapsed());
    let left = entries(&common::nfs().export1.join(&ns));
    let archives: BTreeSet<String> = left
        .iter()
        .filter_map(|e| e.strip_prefix("archived-"))
        .filter_map(|e| e.split_once("-pvc-").map(|(claim, _)| claim.to_string()))
        .collect();
    let archived_claims: BTreeSet<String> = names
        .iter()
        .filter(|(n, _)| n.starts_with('a'))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        left.len(),
        CLAIMS / 2,
        "only the archives are left: {left:?}"
    );
    assert_eq!(archives, archived_claims, "one archive per archived claim");
    let (missing, orphans) = audit(&name, &ns);
    assert!(
        missing.is_empty() && orphans.is_empty(),
        "audit: missing {missing:?}, orphans {orphans:?}"
    );
    let faults = chaos.log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(faults.len(), 4, "every fault happened: {faults:?}");
    drop(chaos);
    eprintln!(
        "chaos: done in {:?}; faults: {faults:#?}",
        started.elapsed()
    );
    assert!(
        a.metric("nfs3_provisioner_leader").is_some()
            && b.metric("nfs3_provisioner_leader").is_some()
    );
}

//! Watches that time what happens to the bench's objects: claims handed over, PVs
//! created, claims Bound, PVs deleted; each first time, as the bench's client sees it.

use crate::prelude::*;
use crate::stats::percentile;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::runtime::watcher;
use kube::{Api, Client};

pub(crate) type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// What the bench saw happen to the claims of one namespace, each first time.
#[derive(Default, Clone)]
pub(crate) struct Track {
    /// Claim has volume.kubernetes.io/storage-provisioner: the binder handed it over.
    pub(crate) handed: Seen,
    /// A PV whose claimRef names the claim appeared.
    pub(crate) pv: Seen,
    /// Claim phase Bound.
    pub(crate) bound: Seen,
    pub(crate) started: Arc<AtomicU32>,
}

/// Watches the claims of `ns` and the PVs that name them.
pub(crate) fn watch_claims(client: &Client, ns: &str) -> Track {
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
pub(crate) fn stage(
    from: &HashMap<String, Instant>,
    to: &HashMap<String, Instant>,
) -> Option<(f64, f64)> {
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
pub(crate) fn watch_pv_deleted(
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

pub(crate) async fn wait_flag(flag: &AtomicBool, limit: Duration) -> Res<()> {
    let t0 = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        if t0.elapsed() > limit {
            return Err("watch did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

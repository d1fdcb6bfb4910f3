//! The usage scan: every `interval`, each bound volume we provisioned is counted
//! (`Share::usage`), one after another per share and shares side by side, and each
//! share's space read (FSSTAT). Results become metrics; a volume that passes its
//! warning size (its capacity, or the class's `usageWarnPercent` of it) gets one
//! `OverCapacity` warning on its claim per crossing. Nothing is enforced: NFSv3 cannot.
//!
//! The scan never delays provisioning or reclaim: it reaches the shares through a
//! [`Shares`] of its own (its own connections, one per share) and spends at most
//! `calls_per_second` NFS calls a second on each share ([`Pace`]). It runs only while
//! the controllers do, so only on the replica holding the Lease.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use tracing::{debug, info, warn};

use super::Context;
use crate::backend::{BackendConfig, Pace, Share, Shares, Target, Usage};
use crate::metrics;
use crate::params;
use crate::plan::usage::{Crossing, DEFAULT_WARN_PERCENT, Scanned, crossing, threshold, to_scan};
use crate::units::human_size;

/// How the scan runs; `None` in the context when it is off.
#[derive(Clone, Debug)]
pub struct UsageScan {
    pub interval: Duration,
    /// NFS calls a second per share; 0 for no limit.
    pub calls_per_second: u32,
    /// The backend the scan builds its own connections with.
    pub backend: BackendConfig,
    /// Shares whose space is reported even while no volume of ours is on them (the
    /// default share).
    pub shares: Vec<Target>,
}

impl UsageScan {
    /// The scan's own backend: one connection per share is all a sequential walk uses.
    pub fn own_backend(backend: &BackendConfig) -> BackendConfig {
        match backend {
            BackendConfig::Nfs3(opts) => {
                let mut opts = opts.clone();
                opts.max_connections = 1;
                BackendConfig::Nfs3(opts)
            }
            other => other.clone(),
        }
    }
}

/// Aborts the scan when the controllers stop (the Lease lost, or shutdown).
pub(super) struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn start(ctx: Arc<Context>) -> Option<Running> {
    let scan = ctx.usage_scan.clone()?;
    Some(Running(tokio::spawn(run(ctx, scan))))
}

/// Over or not at the last scan, per PV name, and the labels its series carry. Dropped
/// when the scan stops (the Lease lost, shutdown), it takes the volumes' series with
/// it: a replica that no longer scans shows no stale usage.
#[derive(Default)]
struct Seen(Mutex<HashMap<String, (Scanned, bool)>>);

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Scanned, bool)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        for (v, _) in self.lock().values() {
            metrics::forget_volume(&v.namespace, &v.claim, &v.pv);
        }
    }
}

async fn run(ctx: Arc<Context>, scan: UsageScan) {
    let shares = Shares::new(scan.backend.clone());
    let mut paces: HashMap<Target, Pace> = HashMap::new();
    let seen = Seen::default();
    // Not `wait_until_ready`: the store wakes only one waiter (see `cache::synced`).
    if super::cache::synced(&ctx.volumes).await.is_err() {
        return;
    }
    info!(interval = ?scan.interval, calls_per_second = scan.calls_per_second, "usage scans on");
    loop {
        let started = Instant::now();
        let volumes: Vec<Scanned> = ctx
            .volumes
            .state()
            .iter()
            .filter_map(|v| to_scan(&v.to_volume(), &ctx.provisioner))
            .collect();
        forget_gone(&seen, &volumes);
        let mut by_share: HashMap<Target, Vec<Scanned>> = scan
            .shares
            .iter()
            .map(|t| (t.clone(), Vec::new()))
            .collect();
        for v in volumes {
            by_share.entry(v.recorded.target()).or_default().push(v);
        }
        let rounds = by_share.into_iter().map(|(target, vols)| {
            let pace = paces
                .entry(target.clone())
                .or_insert_with(|| Pace::per_second(scan.calls_per_second))
                .clone();
            scan_share(&ctx, &shares, pace, target, vols, &seen)
        });
        let counted: usize = futures::future::join_all(rounds).await.into_iter().sum();
        debug!(volumes = counted, took = ?started.elapsed(), "usage scan done");
        tokio::time::sleep_until((started + scan.interval).into()).await;
    }
}

/// Drops the series and memory of volumes no longer ours, bound, or there at all.
fn forget_gone(seen: &Seen, volumes: &[Scanned]) {
    let now: HashSet<&str> = volumes.iter().map(|v| v.pv.as_str()).collect();
    let mut seen = seen.lock();
    seen.retain(|pv, (v, _)| {
        let keep = now.contains(pv.as_str());
        if !keep {
            metrics::forget_volume(&v.namespace, &v.claim, &v.pv);
        }
        keep
    });
}

/// One share: its space, then its volumes one after another. Returns how many were
/// counted.
async fn scan_share(
    ctx: &Context,
    shares: &Shares,
    pace: Pace,
    target: Target,
    volumes: Vec<Scanned>,
    seen: &Seen,
) -> usize {
    let share = match shares.get(&target) {
        Ok(s) => s,
        Err(e) => {
            warn!(share = %target, error = %e, "usage scan: share not usable");
            return 0;
        }
    };
    pace.call().await;
    match share.space().await {
        Ok(s) => metrics::share_space(
            &target.server,
            &target.share,
            s.total_bytes,
            s.free_bytes,
            s.avail_bytes,
        ),
        Err(e) => warn!(share = %target, error = %e, "usage scan: FSSTAT failed"),
    }
    let mut counted = 0;
    for v in volumes {
        match share.usage(&v.recorded.directory, &pace).await {
            Ok(Some(u)) => {
                counted += 1;
                judge(ctx, v, &u, seen).await;
            }
            // Removed since the cache saw it bound: its PV goes too, and its series then.
            Ok(None) => debug!(pv = v.pv, "usage scan: directory gone"),
            Err(e) => warn!(pv = v.pv, share = %target, error = %e, "usage scan failed"),
        }
    }
    counted
}

/// Records what a scan found, and warns on the claim when it just went over.
async fn judge(ctx: &Context, v: Scanned, u: &Usage, seen: &Seen) {
    let percent = warn_percent(ctx, &v);
    let limit = v.capacity.map(|c| threshold(c, percent));
    let was = seen.lock().get(&v.pv).map(|(_, over)| *over);
    let (over, change) = match limit {
        Some(limit) => crossing(was, u.bytes, limit),
        None => (false, Crossing::Same),
    };
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::volume_usage(&metrics::VolumeUsage {
        namespace: &v.namespace,
        claim: &v.claim,
        pv: &v.pv,
        bytes: u.bytes,
        files: u.files,
        unreadable: u.unreadable,
        over,
        at_seconds: at,
    });
    debug!(
        pv = v.pv,
        bytes = u.bytes,
        files = u.files,
        unreadable = u.unreadable,
        calls = u.calls,
        warn_at = ?limit,
        "volume counted"
    );
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(v.claim.clone()),
            namespace: Some(v.namespace.clone()),
            uid: Some(v.claim_uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        },
        ..Default::default()
    };
    let capacity = v.capacity.unwrap_or(0);
    let used = human_size(u.bytes);
    match change {
        Crossing::WentOver => {
            info!(
                pv = v.pv,
                used = u.bytes,
                capacity,
                percent,
                "volume over its warning size"
            );
            let note = format!(
                "volume {} uses {used} of its {} ({}% of capacity warns); NFSv3 cannot enforce the size: writes go on until the share is full",
                v.pv,
                human_size(capacity),
                percent
            );
            ctx.publish(&claim, EventType::Warning, "OverCapacity", note)
                .await;
        }
        Crossing::CameBack => {
            let note = format!(
                "volume {} uses {used}, back under {}% of its {}",
                v.pv,
                percent,
                human_size(capacity)
            );
            ctx.publish(&claim, EventType::Normal, "BackUnderCapacity", note)
                .await;
        }
        Crossing::Same => {}
    }
    seen.lock().insert(v.pv.clone(), (v, over));
}

/// The class's `usageWarnPercent` as the class is now; the default when the class is
/// gone or does not say.
fn warn_percent(ctx: &Context, v: &Scanned) -> u32 {
    let Some(name) = v.class.as_deref() else {
        return DEFAULT_WARN_PERCENT;
    };
    ctx.classes
        .state()
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .and_then(|c| c.parameters.as_ref())
        .and_then(|p| params::usage_warn_percent(p).ok().flatten())
        .unwrap_or(DEFAULT_WARN_PERCENT)
}
